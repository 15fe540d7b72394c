"""A small file wallet for paying Farebox gateways.

The file (JSON, mode 0600, replaced atomically) holds an identity key, the
coins it can spend, payments in flight and the access tokens bought. Every
change happens under an exclusive lock on a companion `.lock` file and
starts from the file's current content, so two `farebox pay` processes never
pick the same coin.

Keys: the identity key signs nothing; it is the BRC-29 sender key, and every
receiving/change key is derived from it (BRC-42 with itself as counterparty,
invoice `1-farebox wallet-<index>`), so backing up the identity key backs up
every address the wallet ever used. Imported coins may carry their own WIF.

A payment's life: `prepare_payment` selects and reserves coins and signs;
`settle` (the gateway took it) drops the spent coins and records the change;
`release` (refused) frees the coins again.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bsv import (
    P2PKH,
    MerklePath,
    PrivateKey,
    PublicKey,
    Transaction,
    TransactionInput,
    TransactionOutput,
)

from gateway.bsv.derivation import payee_key_for_sender
from gateway.client.beef import atomic_beef, beef_of, transaction_from_beef, unproven
from gateway.client.coins import DEFAULT_FEE_RATE, Coin, fee_for, select
from gateway.client.errors import WalletError, WalletNotFound
from gateway.client.tokens import StoredToken

ENV_WALLET = "FAREBOX_WALLET"
DEFAULT_PATH = "~/.farebox/wallet.json"
KEY_INVOICE = "1-farebox wallet-{index}"  # BRC-43: security level 1, protocol "farebox wallet"
FORMAT = 1


def default_path() -> Path:
    return Path(os.environ.get(ENV_WALLET) or DEFAULT_PATH).expanduser()


@dataclass(frozen=True, slots=True)
class Balance:
    satoshis: int  # spendable now
    coins: int
    pending_satoshis: int  # reserved by payments whose outcome is not known yet
    pending_coins: int


@dataclass(frozen=True, slots=True)
class PreparedPayment:
    """A signed payment, its coins reserved, not yet taken by anyone."""

    txid: str
    beef: bytes  # Atomic BEEF: the transaction and its ancestry
    vout: int  # the output that pays
    satoshis: int  # what the payee gets
    fee: int
    sender: str  # identity public key, hex: x-bsv-sender
    prefix: str  # derivation prefix: x-bsv-nonce
    time_ms: str  # x-bsv-time; the derivation suffix is its base64
    inputs: tuple[tuple[str, int], ...]
    change: Coin | None

    @property
    def suffix(self) -> str:
        return base64.b64encode(self.time_ms.encode()).decode()


@dataclass(slots=True)
class _State:
    identity: str
    next_key: int = 0
    chain: str | None = None  # ARC/devnet base URL the coins came from, for fresh proofs
    coins: list[Coin] = field(default_factory=list)
    pending: dict[str, Coin | None] = field(default_factory=dict)  # payment txid -> its change
    tokens: list[StoredToken] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        now = time.time()
        return {
            "format": FORMAT,
            "identity": self.identity,
            "next_key": self.next_key,
            "chain": self.chain,
            "coins": [c.to_json() for c in self.coins],
            "pending": [
                {"txid": txid, "change": None if change is None else change.to_json()}
                for txid, change in self.pending.items()
            ],
            # Expired grants are worth nothing: they are dropped on every write.
            "tokens": [t.to_json() for t in self.tokens if t.usable(now)],
        }

    @classmethod
    def from_json(cls, data: Any) -> _State:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise WalletError("not a Farebox wallet file (or a newer format)")
        try:
            pending = {
                str(p["txid"]): None if p["change"] is None else Coin.from_json(p["change"])
                for p in data.get("pending", [])
            }
            tokens = [StoredToken.from_json(t) for t in data.get("tokens", [])]
            return cls(
                identity=str(data["identity"]),
                next_key=int(data["next_key"]),
                chain=None if data.get("chain") is None else str(data["chain"]),
                coins=[Coin.from_json(c) for c in data.get("coins", [])],
                pending=pending,
                tokens=[t for t in tokens if t is not None],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WalletError(f"the wallet file is malformed: {exc!r}") from None


class Wallet:
    def __init__(self, path: Path, state: _State, *, fee_rate: float = DEFAULT_FEE_RATE) -> None:
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
        with _locked(path):
            if path.exists():
                if not force:
                    raise WalletError(f"{path} already exists (--force keeps it as a backup)")
                # Never destroy keys: an overwritten wallet could hold coins.
                os.replace(path, path.with_name(f"{path.name}.{int(time.time())}.bak"))
            state = _State(identity=PrivateKey().hex())
            _write(path, state)
        return cls(path, state, fee_rate=fee_rate)

    @classmethod
    def open(cls, path: Path | str | None = None, *, fee_rate: float = DEFAULT_FEE_RATE) -> Wallet:
        path = Path(path).expanduser() if path is not None else default_path()
        with _locked(path, create=False):
            state = _read(path)
        return cls(path, state, fee_rate=fee_rate)

    def reload(self) -> None:
        with _locked(self.path, create=False):
            self._state = _read(self.path)

    @contextlib.contextmanager
    def _update(self) -> Iterator[_State]:
        """Read-modify-write under the lock; nothing is written if the block raises."""
        with _locked(self.path, create=False):
            state = _read(self.path)
            yield state
            _write(self.path, state)
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

    def pending(self) -> list[str]:
        """Txids of payments whose outcome the wallet does not know."""
        return list(self._state.pending)

    def balance(self) -> Balance:
        free = [c for c in self._state.coins if c.reserved_by is None]
        held = [c for c in self._state.coins if c.reserved_by is not None]
        return Balance(
            sum(c.satoshis for c in free),
            len(free),
            sum(c.satoshis for c in held),
            len(held),
        )

    def receive(self, beef: bytes, txid: str, vout: int, key_index: int) -> Coin:
        """Record an output paid to wallet key `key_index`, proven by `beef`."""
        tx = transaction_from_beef(beef, txid)
        if not 0 <= vout < len(tx.outputs):
            raise WalletError(f"{txid} has no output {vout}")
        output = tx.outputs[vout]
        expected = P2PKH().lock(self.key(key_index).address())
        if output.locking_script.serialize() != expected.serialize():
            raise WalletError(f"{txid}:{vout} does not pay wallet key {key_index}")
        coin = Coin(
            txid=txid,
            vout=vout,
            satoshis=output.satoshis,
            script=expected.hex(),
            beef=beef_of(tx).hex(),  # only what proves it, in our framing
            key_index=key_index,
        )
        with self._update() as state:
            if all(c.outpoint != coin.outpoint for c in state.coins):
                state.coins.append(coin)
        return coin

    # ----- paying -----------------------------------------------------------------

    def prepare_payment(
        self,
        server: PublicKey | str,
        satoshis: int,
        *,
        prefix: str | None = None,
        time_ms: str | None = None,
    ) -> PreparedPayment:
        """Sign a BRC-29 payment of `satoshis` to `server` and reserve its coins.

        Output 0 pays the key derived for (server, identity, prefix, suffix);
        output 1, if any, is change to a fresh wallet key.
        """
        server_key = PublicKey(server) if isinstance(server, str) else server
        prefix = prefix or base64.b64encode(os.urandom(16)).decode()
        time_ms = time_ms or str(int(time.time() * 1000))
        suffix = base64.b64encode(time_ms.encode()).decode()
        payee = payee_key_for_sender(server_key, self.identity, prefix, suffix)
        with self._update() as state:
            chosen = select(state.coins, satoshis, self.fee_rate)
            outputs = [TransactionOutput(P2PKH().lock(payee.address()), satoshis)]
            change_index = None
            if chosen.change:
                change_index = state.next_key
                state.next_key += 1
                change_lock = P2PKH().lock(self.key(change_index).address())
                outputs.append(TransactionOutput(change_lock, chosen.change))
            inputs = [
                TransactionInput(
                    source_transaction=transaction_from_beef(bytes.fromhex(c.beef), c.txid),
                    source_output_index=c.vout,
                    unlocking_script_template=P2PKH().unlock(self._spender(c)),
                )
                for c in chosen.coins
            ]
            tx = Transaction(inputs, outputs)
            tx.sign()
            # The size budget is an upper bound; this only guards a wrong estimate.
            assert chosen.fee >= fee_for(len(tx.serialize()), self.fee_rate)
            txid = tx.txid()
            change = None
            if chosen.change:
                change = Coin(
                    txid=txid,
                    vout=1,
                    satoshis=chosen.change,
                    script=outputs[1].locking_script.hex(),
                    beef=beef_of(tx).hex(),  # carries the unconfirmed ancestry along
                    key_index=change_index,
                )
            spent = {c.outpoint for c in chosen.coins}
            state.coins = [c.reserved(txid) if c.outpoint in spent else c for c in state.coins]
            state.pending[txid] = change
        return PreparedPayment(
            txid=txid,
            beef=atomic_beef(tx),
            vout=0,
            satoshis=satoshis,
            fee=chosen.fee,
            sender=self.identity_key,
            prefix=prefix,
            time_ms=time_ms,
            inputs=tuple(sorted(spent)),
            change=change,
        )

    def settle(self, txid: str) -> None:
        """The payment `txid` was taken: its coins are spent, its change is ours."""
        with self._update() as state:
            if txid not in state.pending:
                return  # settled already
            change = state.pending.pop(txid)
            state.coins = [c for c in state.coins if c.reserved_by != txid]
            if change is not None:
                state.coins.append(change)

    def release(self, txid: str) -> None:
        """The payment `txid` was refused: its coins may be spent again."""
        with self._update() as state:
            state.pending.pop(txid, None)
            state.coins = [c.reserved(None) if c.reserved_by == txid else c for c in state.coins]

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


@contextlib.contextmanager
def _locked(path: Path, *, create: bool = True) -> Iterator[None]:
    if not create and not path.exists():
        raise WalletNotFound(str(path))
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read(path: Path) -> _State:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except FileNotFoundError:
        raise WalletNotFound(str(path)) from None
    except OSError as exc:
        raise WalletError(f"cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise WalletError(f"{path} holds private keys and is readable by others: chmod 600 {path}")
    try:
        return _State.from_json(json.loads(data))
    except ValueError:
        raise WalletError(f"{path} is not valid JSON") from None


def _write(path: Path, state: _State) -> None:
    """Write a whole new file and rename it over the old one: a crash leaves either."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(state.to_json(), indent=1).encode()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a stale one may have another mode; O_EXCL makes ours 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
