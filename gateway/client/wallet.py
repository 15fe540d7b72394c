"""A small file wallet for paying Farebox gateways.

The file (walletfile.py: JSON, mode 0600, replaced atomically, changed
under a lock) holds an identity key, the coins it can spend, payments in
flight (records.py), the access tokens bought and the payments taken.

Keys: the identity key signs nothing; it is the BRC-29 sender key, and every
receiving/change key is derived from it (BRC-42 with itself as counterparty,
invoice `1-farebox wallet-<index>`), so backing up the identity key backs up
every address the wallet ever used. Imported coins may carry their own WIF.

A payment's life: `prepare_payment` selects and reserves coins and signs,
and records the payment as pending with what it is for (`Purpose`);
`settle` (the gateway took it) drops the spent coins and records the change;
`release` (refused) frees the coins again; `set_aside` (refused because of a
coin: its proof unknown to the gateway, spent elsewhere) frees the others
and keeps the culprits out of every later payment, with the reason. A
payment whose outcome is unknown stays pending, and `pending_for` hands the
same payment back to be sent again for the same purpose: the wallet never
builds a second payment for something a first may have bought.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bsv import (
    P2PKH,
    MerklePath,
    PrivateKey,
    PublicKey,
    Script,
    Transaction,
    TransactionInput,
    TransactionOutput,
)

from gateway.bsv.derivation import payee_key_for_sender
from gateway.client.beef import atomic_beef, beef_of, transaction_from_beef, unproven
from gateway.client.coins import DEFAULT_FEE_RATE, Coin, fee_for, select
from gateway.client.errors import InsufficientFunds, WalletBusy, WalletError
from gateway.client.records import Balance, Paid, PendingPayment, PreparedPayment, Purpose
from gateway.client.tokens import StoredToken
from gateway.client.walletfile import State, default_path, locked, read, write

KEY_INVOICE = "1-farebox wallet-{index}"  # BRC-43: security level 1, protocol "farebox wallet"
LABELLED = "payouts:"  # the origin of transactions signed by sign_outputs (no gateway's)


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    """A transaction the wallet signed and reserved coins for: `beef` is its
    Atomic BEEF (BRC-95, unconfirmed ancestry included), `fee` in satoshis,
    `inputs` the outpoints it spends, `change` the wallet's change coin (the
    last output) or None."""

    txid: str
    beef: bytes
    fee: int
    inputs: tuple[tuple[str, int], ...]
    change: Coin | None


class Wallet:
    def __init__(self, path: Path, state: State, *, fee_rate: float = DEFAULT_FEE_RATE) -> None:
        if fee_rate < 0:
            raise ValueError("fee_rate must not be negative")
        self.path = path
        self.fee_rate = fee_rate  # sat/kB; the fee is never below 1 satoshi
        self._state = state
        try:
            self.identity = PrivateKey(bytes.fromhex(state.identity))
        except ValueError:
            raise WalletError(f"{path}: the identity key is not 32 bytes of hex") from None
        self._keys: dict[int, PrivateKey] = {}

    # ----- the file ---------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path | str | None = None,
        *,
        force: bool = False,
        fee_rate: float = DEFAULT_FEE_RATE,
    ) -> Wallet:
        """A new wallet with a fresh identity key; an existing file is kept as a backup with `force`."""
        path = Path(path).expanduser() if path is not None else default_path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with locked(path):
            if path.exists():
                if not force:
                    raise WalletError(f"{path} already exists (--force keeps it as a backup)")
                # Never destroy keys: an overwritten wallet could hold coins.
                os.replace(path, path.with_name(f"{path.name}.{int(time.time())}.bak"))
            state = State(identity=PrivateKey().hex())
            write(path, state)
        return cls(path, state, fee_rate=fee_rate)

    @classmethod
    def open(cls, path: Path | str | None = None, *, fee_rate: float = DEFAULT_FEE_RATE) -> Wallet:
        path = Path(path).expanduser() if path is not None else default_path()
        with locked(path, create=False):
            state = read(path)
        return cls(path, state, fee_rate=fee_rate)

    def reload(self) -> None:
        with locked(self.path, create=False):
            self._state = read(self.path)

    @contextlib.contextmanager
    def _update(self) -> Iterator[State]:
        """Read-modify-write under the lock; nothing is written if the block raises."""
        with locked(self.path, create=False):
            state = read(self.path)
            yield state
            write(self.path, state)
            self._state = state

    # ----- keys -------------------------------------------------------------------

    @property
    def identity_key(self) -> str:
        return self.identity.public_key().hex()

    def key(self, index: int) -> PrivateKey:
        key = self._keys.get(index)
        if key is None:
            invoice = KEY_INVOICE.format(index=index)
            key = self._keys[index] = self.identity.derive_child(
                self.identity.public_key(), invoice
            )
        return key

    def issued_keys(self) -> range:
        """Indexes of every key handed out so far (receiving and change)."""
        return range(self._state.next_key)

    def new_key(self) -> tuple[int, PrivateKey]:
        """A key never handed out before (the index is recorded first)."""
        with self._update() as state:
            index = state.next_key
            state.next_key += 1
        return index, self.key(index)

    def _spender(self, coin: Coin) -> PrivateKey:
        if coin.wif is not None:
            return PrivateKey(coin.wif)
        assert coin.key_index is not None
        return self.key(coin.key_index)

    # ----- coins ------------------------------------------------------------------

    @property
    def chain(self) -> str | None:
        return self._state.chain

    def set_chain(self, url: str) -> None:
        with self._update() as state:
            state.chain = url

    def coins(self) -> list[Coin]:
        return list(self._state.coins)

    def pending(self) -> list[PendingPayment]:
        """Payments whose outcome the wallet does not know, oldest first."""
        return sorted(self._state.pending.values(), key=lambda p: p.since)

    def pending_for(self, purpose: Purpose) -> PreparedPayment | None:
        """The unsettled payment made for `purpose` (the same gateway, the same
        thing), to be sent again as it is; None if there is none."""
        self.reload()  # another process may have settled it since
        for pending in self.pending():
            if pending.payment is not None and _same(pending.purpose, purpose):
                return pending.payment
        return None

    def history(self) -> list[Paid]:
        """Payments gateways took, oldest first (the last HISTORY of them)."""
        return list(self._state.history)

    def balance(self) -> Balance:
        free = [c for c in self._state.coins if c.spendable]
        held = [c for c in self._state.coins if c.reserved_by is not None]
        aside = [c for c in self._state.coins if c.reserved_by is None and c.set_aside]
        return Balance(
            sum(c.satoshis for c in free),
            len(free),
            sum(c.satoshis for c in held),
            len(held),
            sum(c.satoshis for c in aside),
            len(aside),
        )

    def receive(self, beef: bytes, txid: str, vout: int, key_index: int) -> Coin:
        """Record an output paid to wallet key `key_index`, proven by `beef`."""
        return self._receive(beef, txid, vout, self.key(key_index), key_index=key_index)

    def receive_key(self, beef: bytes, txid: str, vout: int, key: PrivateKey) -> Coin:
        """Record an output paid to `key` (one derived for this wallet by a sender,
        BRC-29), proven by `beef`; the key is kept with the coin. WalletError
        if the output does not pay it."""
        return self._receive(beef, txid, vout, key, wif=key.wif())

    def _receive(
        self,
        beef: bytes,
        txid: str,
        vout: int,
        key: PrivateKey,
        *,
        key_index: int | None = None,
        wif: str | None = None,
    ) -> Coin:
        tx = transaction_from_beef(beef, txid)
        if not 0 <= vout < len(tx.outputs):
            raise WalletError(f"{txid} has no output {vout}")
        output = tx.outputs[vout]
        expected = P2PKH().lock(key.address())
        if output.locking_script.serialize() != expected.serialize():
            whose = f"wallet key {key_index}" if key_index is not None else "the key derived for it"
            raise WalletError(f"{txid}:{vout} does not pay {whose}")
        coin = Coin(
            txid=txid,
            vout=vout,
            satoshis=output.satoshis,
            script=expected.hex(),
            beef=beef_of(tx).hex(),  # only what proves it, in our framing
            key_index=key_index,
            wif=wif,
        )
        with self._update() as state:
            if all(c.outpoint != coin.outpoint for c in state.coins):
                state.coins.append(coin)
        return coin

    def ours(self, beef: bytes, txid: str) -> list[tuple[int, int, bytes]]:
        """The outputs of `txid` (in `beef`) that pay a key this wallet handed out:
        (vout, key index, locking script) each."""
        tx = transaction_from_beef(beef, txid)
        keys = {P2PKH().lock(self.key(i).address()).hex(): i for i in self.issued_keys()}
        return [
            (vout, keys[out.locking_script.hex()], out.locking_script.serialize())
            for vout, out in enumerate(tx.outputs)
            if out.locking_script.hex() in keys
        ]

    def has_coin(self, txid: str, vout: int) -> bool:
        return any(c.outpoint == (txid, vout) for c in self._state.coins)

    # ----- paying -----------------------------------------------------------------

    def prepare_payment(
        self,
        server: PublicKey | str,
        satoshis: int,
        *,
        prefix: str | None = None,
        time_ms: str | None = None,
        purpose: Purpose | None = None,
    ) -> PreparedPayment:
        """Sign a BRC-29 payment of `satoshis` to `server` and reserve its coins;
        it is pending (for `purpose`, if given) until settled or released.

        Output 0 pays the key derived for (server, identity, prefix, suffix);
        output 1, if any, is change to a fresh wallet key. InsufficientFunds
        if the spendable coins cannot pay it and its fee.
        """
        with self._update() as state:
            return self._prepare(state, server, satoshis, prefix, time_ms, purpose)

    def payment_for(
        self, purpose: Purpose, satoshis: int, *, since: float | None = None
    ) -> tuple[PreparedPayment, bool] | None:
        """The payment to send for `purpose`, decided under the wallet's lock so
        that two processes never both build one: the unsettled payment made
        for it earlier (and True: it is a resend), else a new payment of
        `satoshis` to `purpose.server` (and False). None when a payment for
        `purpose` was taken at or after `since` (Unix seconds): another
        process bought it meanwhile, and its grant is in the wallet now.
        InsufficientFunds as prepare_payment.
        """
        with self._update() as state:
            for pending in sorted(state.pending.values(), key=lambda p: p.since):
                if pending.payment is not None and _same(pending.purpose, purpose):
                    return pending.payment, True
            if since is not None and any(
                p.time >= since and (p.origin, p.what) == (purpose.origin, purpose.what)
                for p in state.history
            ):
                return None
            return self._prepare(state, purpose.server, satoshis, None, None, purpose), False

    def _prepare(
        self,
        state: State,
        server: PublicKey | str,
        satoshis: int,
        prefix: str | None,
        time_ms: str | None,
        purpose: Purpose | None,
    ) -> PreparedPayment:
        server_key = PublicKey(server) if isinstance(server, str) else server
        prefix = prefix or base64.b64encode(os.urandom(16)).decode()
        time_ms = time_ms or str(int(time.time() * 1000))
        suffix = base64.b64encode(time_ms.encode()).decode()
        payee = payee_key_for_sender(server_key, self.identity, prefix, suffix)
        signed = self._sign(state, [(P2PKH().lock(payee.address()).serialize(), satoshis)])
        prepared = PreparedPayment(
            txid=signed.txid,
            beef=signed.beef,
            vout=0,
            satoshis=satoshis,
            fee=signed.fee,
            sender=self.identity_key,
            prefix=prefix,
            time_ms=time_ms,
            inputs=signed.inputs,
            change=signed.change,
        )
        state.pending[signed.txid] = PendingPayment(
            signed.txid, signed.change, prepared, purpose, time.time()
        )
        return prepared

    def sign_outputs(
        self,
        outputs: Sequence[tuple[bytes, int]],
        *,
        label: str,
        spend_first: Iterable[tuple[str, int]] = (),
    ) -> SignedTransaction:
        """Sign a transaction paying each (locking script, satoshis) of `outputs`
        in order (vout 0, 1, ...), change last, and reserve its coins: it is
        pending under `label` (no gateway's payment) until `settle` (or
        `seen_on_chain`) spends them or `release` frees them. The coins at
        `spend_first` are spent whatever else is chosen (WalletError if any
        is not free as the file stands). Used by the payout engine (a treasury
        paying many people at once). InsufficientFunds as prepare_payment;
        ValueError for an output under 1 satoshi.
        """
        first = set(spend_first)
        with self._update() as state:
            held = first - {c.outpoint for c in state.coins if c.spendable}
            if held:
                # A retry that cannot spend the refused batch's coins could stand
                # beside it: never signed on a stale view of the wallet.
                raise WalletError(
                    f"coins a payout retry must spend are not free: {sorted(held)[:3]}"
                )
            signed = self._sign(state, outputs, first)
            purpose = Purpose(LABELLED, label, "")
            state.pending[signed.txid] = PendingPayment(
                signed.txid, signed.change, None, purpose, time.time()
            )
            return signed

    def labelled(self, label: str) -> list[str]:
        """Txids of transactions signed by `sign_outputs` under `label` and still
        pending (neither settled nor released)."""
        self.reload()
        return [
            p.txid
            for p in self.pending()
            if p.payment is None
            and p.purpose is not None
            and p.purpose.origin == LABELLED
            and p.purpose.what == label
        ]

    @contextlib.contextmanager
    def paying_out(self) -> Iterator[None]:
        """Hold this wallet for paying out, alone: one `farebox payouts send` or
        gateway payout round at a time per treasury, so that which ids it has
        paid and which coins a retry must spend are decided by one process.
        WalletBusy if another holds it."""
        lock = self.path.with_name(self.path.name + ".payouts.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WalletBusy(
                    f"{self.path} is in use: another process is paying out from it (a "
                    "`farebox payouts send`, or a gateway's payouts); one at a time"
                ) from None
            self.reload()  # what the other one did is seen from here on
            yield
        finally:
            os.close(fd)

    def payout_ledgers(self) -> list[str]:
        """The payout ledgers this wallet paid from as a treasury, oldest first."""
        self.reload()
        return list(self._state.payout_ledgers)

    def forget_ledger(self, path: str) -> bool:
        """Stop remembering the ledger at `path`; False if it was not remembered."""
        with self._update() as state:
            if path not in state.payout_ledgers:
                return False
            state.payout_ledgers.remove(path)
            return True

    def remember_ledger(self, path: str) -> None:
        """Record that payouts are paid from the ledger at `path` (absolute)."""
        with self._update() as state:
            if path not in state.payout_ledgers:
                state.payout_ledgers.append(path)

    def _sign(
        self,
        state: State,
        outputs: Sequence[tuple[bytes, int]],
        spend_first: Iterable[tuple[str, int]] = (),
    ) -> SignedTransaction:
        """Select coins for `outputs`, add change to a fresh key, sign, and mark
        the coins reserved by the new txid (in `state`; the caller writes it)."""
        if not outputs or any(satoshis < 1 for _, satoshis in outputs):
            raise ValueError("every output pays at least 1 satoshi")
        amount = sum(satoshis for _, satoshis in outputs)
        try:
            chosen = select(
                state.coins, amount, self.fee_rate, outputs=len(outputs), first=spend_first
            )
        except InsufficientFunds as short:
            raise _with_set_aside(short, state.coins) from None
        tx_outputs = [TransactionOutput(Script(script), satoshis) for script, satoshis in outputs]
        change_index = None
        if chosen.change:
            change_index = state.next_key
            state.next_key += 1
            change_lock = P2PKH().lock(self.key(change_index).address())
            tx_outputs.append(TransactionOutput(change_lock, chosen.change))
        inputs = [
            TransactionInput(
                source_transaction=transaction_from_beef(bytes.fromhex(c.beef), c.txid),
                source_output_index=c.vout,
                unlocking_script_template=P2PKH().unlock(self._spender(c)),
            )
            for c in chosen.coins
        ]
        tx = Transaction(inputs, tx_outputs)
        tx.sign()
        # The size budget is an upper bound; this only guards a wrong estimate.
        assert chosen.fee >= fee_for(len(tx.serialize()), self.fee_rate)
        txid = tx.txid()
        change = None
        if chosen.change:
            change = Coin(
                txid=txid,
                vout=len(outputs),
                satoshis=chosen.change,
                script=tx_outputs[-1].locking_script.hex(),
                beef=beef_of(tx).hex(),  # carries the unconfirmed ancestry along
                key_index=change_index,
            )
        spent = {c.outpoint for c in chosen.coins}
        state.coins = [c.reserved(txid) if c.outpoint in spent else c for c in state.coins]
        return SignedTransaction(txid, atomic_beef(tx), chosen.fee, tuple(sorted(spent)), change)

    def settle(self, txid: str) -> None:
        """The payment `txid` was taken: its coins are spent, its change is ours."""
        with self._update() as state:
            pending = state.pending.pop(txid, None)
            if pending is None:
                return
            if not pending.on_chain:
                _spend(state, pending)
            if pending.purpose is not None and pending.payment is not None:
                paid = pending.payment
                state.history.append(
                    Paid(
                        txid,
                        pending.purpose.origin,
                        pending.purpose.what,
                        paid.satoshis,
                        paid.fee,
                        time.time(),
                    )
                )

    def seen_on_chain(self, txid: str) -> None:
        """The network has the payment `txid`: its coins are spent, its change is
        ours; it stays pending for its purpose until the gateway answers it."""
        with self._update() as state:
            pending = state.pending.get(txid)
            if pending is None or pending.on_chain:
                return
            _spend(state, pending)
            if pending.purpose is None or pending.payment is None:
                del state.pending[txid]  # nothing to ask the gateway for
            else:
                state.pending[txid] = replace(pending, on_chain=True)

    def adopt(self, beef: bytes, txid: str, inputs: Iterable[tuple[str, int]]) -> None:
        """The transaction `txid` (in `beef`), which spends `inputs`, is on the
        network after all (a payout batch recorded refused): those coins are
        spent, whatever the wallet thought of them, and its outputs paying
        this wallet's keys are coins."""
        gone = set(inputs)
        with self._update() as state:
            state.pending.pop(txid, None)
            state.coins = [
                replace(c, set_aside=None) if c.txid == txid else c  # its change is real
                for c in state.coins
                if c.outpoint not in gone
            ]
        for vout, index, _ in self.ours(beef, txid):
            if not self.has_coin(txid, vout):
                self.receive(beef, txid, vout, index)

    def release(self, txid: str) -> None:
        """The payment `txid` was refused: its coins may be spent again."""
        self.set_aside(txid, (), "")

    def set_aside(self, txid: str, culprits: Iterable[tuple[str, int]], reason: str) -> None:
        """The payment `txid` was refused because of the coins at `culprits`
        (outpoints): those are kept out of later payments with `reason`, the
        rest of its coins may be spent again."""
        bad = set(culprits)
        with self._update() as state:
            state.pending.pop(txid, None)
            state.coins = [
                replace(c, reserved_by=None, set_aside=reason if c.outpoint in bad else None)
                if c.reserved_by == txid
                else c
                for c in state.coins
            ]

    def restore(self, outpoints: Iterable[tuple[str, int]]) -> int:
        """Offer the coins set aside at `outpoints` for payments again; returns
        how many were restored."""
        wanted = set(outpoints)
        restored = 0
        with self._update() as state:
            coins = []
            for c in state.coins:
                if c.set_aside is not None and c.outpoint in wanted:
                    c = replace(c, set_aside=None)
                    restored += 1
                coins.append(c)
            state.coins = coins
        return restored

    def set_aside_coins(self, outpoints: Iterable[tuple[str, int]], reason: str) -> int:
        """Keep the spendable coins at `outpoints` out of payments, with `reason`;
        returns how many were set aside."""
        bad = set(outpoints)
        changed = 0
        with self._update() as state:
            coins = []
            for c in state.coins:
                if c.spendable and c.outpoint in bad:
                    c = replace(c, set_aside=reason)
                    changed += 1
                coins.append(c)
            state.coins = coins
        return changed

    def proven_by(self, height: int, merkle_root: str) -> set[tuple[str, int]]:
        """Outpoints of coins whose proofs rest on the block at `height` with
        `merkle_root` (hex, as a chain tracker names it)."""
        found = set()
        for coin in self._state.coins:
            tx = transaction_from_beef(bytes.fromhex(coin.beef), coin.txid)
            for proven in _proven(tx):
                path = proven.merkle_path
                if path.block_height == height and path.compute_root(proven.txid()) == merkle_root:
                    found.add(coin.outpoint)
        return found

    # ----- proofs -----------------------------------------------------------------

    def unproven_txids(self) -> list[str]:
        """Transactions behind spendable coins that the coins' BEEF cannot prove yet.

        Each coin's own transaction comes first: once it is mined, its
        ancestors no longer matter.
        """
        found: dict[str, None] = {}
        for coin in self._state.coins:
            if coin.reserved_by is None:
                tx = transaction_from_beef(bytes.fromhex(coin.beef), coin.txid)
                found.update(dict.fromkeys(t.txid() for t in unproven(tx)))
        return list(found)

    def add_proofs(self, paths: dict[str, MerklePath]) -> int:
        """Attach merkle paths to stored transactions; BEEFs shrink to what still needs proving.

        Returns the number of coins whose BEEF changed.
        """
        changed = 0
        with self._update() as state:
            coins = []
            for coin in state.coins:
                tx = transaction_from_beef(bytes.fromhex(coin.beef), coin.txid)
                hit = False
                for t in unproven(tx):
                    path = paths.get(t.txid())
                    if path is not None:
                        t.merkle_path = path
                        hit = True
                if hit:
                    coin = replace(coin, beef=beef_of(tx).hex())
                    changed += 1
                coins.append(coin)
            state.coins = coins
        return changed

    # ----- tokens -----------------------------------------------------------------

    def all_tokens(self) -> list[StoredToken]:
        """Every token kept, for every gateway (expired ones included until the next write)."""
        return list(self._state.tokens)

    def tokens(self, origin: str) -> list[StoredToken]:
        now = time.time()
        return [t for t in self._state.tokens if t.origin == origin and t.usable(now)]

    def remember_token(self, token: StoredToken) -> None:
        """Keep `token`; of several tokens for one tab only the one lasting longest stays."""
        with self._update() as state:
            kept = [t for t in state.tokens if t.token != token.token]
            if token.tab:
                same = [t for t in kept if t.origin == token.origin and t.tab == token.tab]
                if any(t.expires > token.expires for t in same):
                    return  # a later top-up's token is there already: it outlasts this one
                kept = [t for t in kept if t not in same]
            state.tokens = [*kept, token]

    def forget_token(self, token: str) -> None:
        with self._update() as state:
            state.tokens = [t for t in state.tokens if t.token != token]


def _same(found: Purpose | None, wanted: Purpose) -> bool:
    return found is not None and (found.origin, found.what) == (wanted.origin, wanted.what)


def _spend(state: State, pending: PendingPayment) -> None:
    """Drop the coins `pending` spends and keep its change."""
    state.coins = [c for c in state.coins if c.reserved_by != pending.txid]
    if pending.change is not None and all(
        c.outpoint != pending.change.outpoint for c in state.coins
    ):
        state.coins.append(pending.change)


def _proven(tx: Transaction) -> Iterator[Transaction]:
    """The transactions in `tx`'s ancestry (itself included) that carry a merkle path."""
    seen: set[str] = set()
    stack = [tx]
    while stack:
        t = stack.pop()
        if t.txid() in seen:
            continue
        seen.add(t.txid())
        if t.merkle_path is not None:
            yield t
            continue
        stack.extend(i.source_transaction for i in t.inputs if i.source_transaction is not None)


def _with_set_aside(short: InsufficientFunds, coins: list[Coin]) -> InsufficientFunds:
    """`short`, telling of the coins set aside and why, if any are."""
    aside = [c for c in coins if c.reserved_by is None and c.set_aside]
    if not aside:
        return short
    reasons = sorted({c.set_aside or "" for c in aside})
    why = "; ".join(reasons[:2]) + ("; ..." if len(reasons) > 2 else "")
    return InsufficientFunds(
        short.needed, short.available, set_aside=sum(c.satoshis for c in aside), why=why
    )
