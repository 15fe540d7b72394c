"""Taking a payment for one purchase: checks, claim, broadcast, receipt, token.

The order is the money rules in code: nothing is claimed before every check
passed; a txid is claimed atomically for exactly one purchase (a retry of the
same purchase gets the same grant back, anything else is refused); a claim
whose broadcast fails is released; the receipt is stored before the token
leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bsv import PrivateKey

from gateway.bsv.ancestry import AncestryLimits
from gateway.bsv.beef import Limits, read_beef
from gateway.bsv.derivation import PayeeScripts
from gateway.chain import Broadcaster, BroadcastResult, ChainError
from gateway.edge import metrics
from gateway.errors import PaymentError
from gateway.payments import verify
from gateway.payments.remittance import Remittance, TopUp
from gateway.payments.verify import ChainTracker, Expectation, verify_payment
from gateway.policy import Match
from gateway.pricing.tabs import MSAT, tab_for_payment, tab_scope
from gateway.store import Claim, Outcome, StoreUnavailable
from gateway.store.receipts import Receipt
from gateway.tokens import Grant, Tokens, new_grant_id, payer_hash

_PUBKEY = re.compile(r"0[23][0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]{1,16}")


FRESH = "fresh:"  # claim key prefix: a payment once judged fresh, broadcast outcome unknown
NEW, TAKEN_OVER = object(), object()  # _claim: this caller owns the txid (by claim, by takeover)
# Refusals that depend on today's price or key, not on the transaction: a
# payment taken before under other terms is answered with its grant instead.
_CHANGES_WITH_TERMS = frozenset({"underpaid", "wrong-payee"})


class Ledger(Protocol):
    """What taking payments needs of the store (store/ holds the contract)."""

    async def claim(self, txid: str, purchase: str) -> Claim: ...
    async def complete(self, txid: str, receipt: Receipt, token: str) -> None: ...
    async def release(self, txid: str, purchase: str) -> None: ...
    async def receipt(self, txid: str) -> Receipt | None: ...
    async def accepted(self, txid: str, purchase: str) -> Claim | None: ...
    async def credit(self, tab: str, amount: int, once: str) -> tuple[int, bool]: ...
    async def balance(self, tab: str) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    grant: Grant
    token: str
    receipt: Receipt
    repeated: bool  # an idempotent retry of an already accepted payment
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    balance: int | None = None  # a top-up: the tab's balance (msat) once credited


class Cashier:
    def __init__(
        self,
        server_key: PrivateKey,
        *,
        tracker: ChainTracker,
        broadcaster: Broadcaster,
        store: Ledger,
        tokens: Tokens,
        time_window: float = 30.0,
        beef_limits: Limits = Limits(),
        ancestry: AncestryLimits = AncestryLimits(),
        settle_wait: float = 30.0,
        on_accepted: Callable[[Match, Receipt], None] | None = None,
    ) -> None:
        self.server_key = server_key
        self.tracker = tracker
        self.broadcaster = broadcaster
        self.store = store
        self.tokens = tokens
        self.time_window = time_window
        self.beef_limits = beef_limits
        self.ancestry = ancestry
        # Seconds a resend waits for a concurrent acceptance of the same
        # payment before taking it over: longer than any broadcast may take
        # (ARC: two requests of up to 10 s each), so a live owner is not raced.
        self.settle_wait = settle_wait
        self.on_accepted = on_accepted  # told of each new payment (statistics, metrics)
        self._payees = PayeeScripts(server_key)

    def payee_script(self, payment: Remittance) -> bytes:
        """The P2PKH script `payment` must pay: its BRC-29 key under `server_key`."""
        if self._payees.server is not self.server_key:  # the key was replaced
            self._payees = PayeeScripts(self.server_key)
        return self._payees.script(payment.sender, payment.prefix, payment.suffix)

    async def accept(
        self,
        payment: Remittance,
        match: Match,
        method: str,
        price: int,
        top_up: TopUp | None = None,
        *,
        fresh: bool = True,
    ) -> Accepted:
        """Take `payment` for `match`, priced at `price` satoshis (quoted now).

        With `top_up`, `price` is the smallest top-up, the whole output is
        credited to the tab (once per txid) and the grant is a tab token.
        `fresh=False` skips the payment-time window: a checkout (paywall
        page) has its own expiry, and its time names the checkout, not the
        moment of paying. It also takes a payment already in a block: a
        checkout's address is made for it alone, so such a payment is its
        own, found late (its merkle root is checked like any other).
        """
        try:
            accepted = await self._accept(payment, match, method, price, top_up, fresh)
        except PaymentError as exc:
            metrics.PAYMENTS.labels(match.service.name, "refused", exc.reason).inc()
            raise
        if not accepted.repeated:
            metrics.PAYMENTS.labels(match.service.name, "accepted", "").inc()
            metrics.SATOSHIS.labels(match.service.name).inc(accepted.receipt.satoshis)
        return accepted

    async def _accept(
        self,
        payment: Remittance,
        match: Match,
        method: str,
        price: int,
        top_up: TopUp | None,
        fresh: bool,
    ) -> Accepted:
        route = match.route.route
        lap = _Laps()
        beef = read_beef(payment.beef, self.beef_limits)
        lap("parse")
        rules = payment.rules
        expect = Expectation(
            price, self.payee_script(payment), payment.vout, rules.exact, rules.amount
        )
        lap("derivation")
        # Each read once: Match.scope is a property, worked out on every read.
        scope, terms = match.scope, route.effective_grant
        if top_up is None:
            purchase = f"{match.service.name}\n{scope}"
        else:
            purchase = f"{match.service.name}\ntab:{top_up.tab or 'new'}"
        try:
            verified = await verify_payment(
                beef, expect, _Guarded(self.tracker), self.ancestry, allow_mined=not fresh
            )
        except ChainError as exc:
            # Unknown, not refused: the merkle roots could not be checked now.
            raise PaymentError(
                "chain-unavailable",
                f"cannot check the proofs now ({exc.kind}); retry later",
                status=503,
            ) from None
        except PaymentError as refused:
            if refused.reason not in _CHANGES_WITH_TERMS:
                raise
            # The price rose or the key rotated since this very payment was
            # taken for this purchase (its answer lost, now sent again): it
            # still bought what it bought.
            earlier = await self._taken_before(beef.subject.txid(), purchase)
            if earlier is None or not rules.answer_again:
                raise
            return earlier
        lap.add(verified.timings)
        claim = await self._claim(verified.txid, purchase)
        lap("claim")
        if isinstance(claim, Accepted):
            if not rules.answer_again:
                raise PaymentError("payment-reused", "this transaction was taken before")
            # Checked after the claim: a client that lost the answer may
            # resend an accepted payment at any time and get its grant back.
            return claim
        skew = abs(time.time() * 1000 - int(payment.time)) / 1000
        window = self.time_window if rules.window is None else rules.window
        # A payment taken over from a stalled owner, or sent again after an
        # outage left its broadcast unknown, was judged fresh when it first
        # came: refusing it as stale now would charge the client for nothing.
        if (
            fresh
            and claim is not TAKEN_OVER
            and skew > window
            and not await self._was_fresh(verified.txid, purchase)
        ):
            await self.store.release(verified.txid, purchase)
            raise PaymentError(
                "stale-time", f"payment time is {skew:.0f} s away from now (window {window:.0f} s)"
            )

        try:
            if verified.transaction.merkle_path is not None:
                # In a block already (a checkout paid from a phone and found
                # late): its proof was checked; there is nothing to broadcast.
                result = BroadcastResult(verified.txid, "MINED", accepted=True, rejected=False)
            else:
                # Name the payment: with unconfirmed ancestors ARC answers about
                # the first of them unless asked about this txid.
                result = await self.broadcaster.broadcast(payment.beef, txid=verified.txid)
        except Exception as exc:
            # Unknown outcome (a ChainError, or a broadcaster's own failure):
            # the network may hold the transaction, so the same payment must
            # be taken when it comes again, however late.
            await self._remember_fresh(verified.txid, purchase)
            await self.store.release(verified.txid, purchase)
            kind = exc.kind if isinstance(exc, ChainError) else type(exc).__name__
            raise PaymentError(
                "chain-unavailable", f"cannot broadcast now ({kind}); send it again", status=503
            ) from None
        except BaseException:
            await self.store.release(verified.txid, purchase)
            raise
        if not result.accepted:
            if not result.rejected:
                await self._remember_fresh(verified.txid, purchase)
            await self.store.release(verified.txid, purchase)
            if not result.rejected:
                # Neither refused nor seen yet: the same payment may come again.
                raise PaymentError(
                    "broadcast-pending",
                    f"the network has not taken the transaction yet ({result.status}); retry shortly",
                    status=503,
                )
            raise PaymentError(
                result.reason or "broadcast-rejected",
                result.detail or "the network refused the transaction",
            )
        lap("broadcast")

        now = int(time.time())
        balance = None
        if top_up is None:
            grant = Grant(
                id=new_grant_id(),
                service=match.service.name,
                scope=scope,
                covers=terms.covers,
                methods=route.methods,
                expires=now + terms.lasts,
                txid=verified.txid,
                satoshis=verified.satoshis,
                payer=payer_hash(payment.sender_hex),
            )
        else:
            tab = top_up.tab or tab_for_payment(verified.txid)
            try:
                # Once per txid, whoever gets here: a resent or taken-over
                # payment finds it credited already.
                balance, _ = await self.store.credit(tab, verified.satoshis * MSAT, verified.txid)
            except StoreUnavailable:
                raise PaymentError(
                    "store-unavailable",
                    "payment seen but not credited; send it again shortly",
                    status=503,
                ) from None
            grant = Grant(
                id=new_grant_id(),
                service=match.service.name,
                scope=tab_scope(match),
                covers="tab",
                methods=("*",),
                expires=now + top_up.lasts,
                txid=verified.txid,
                satoshis=verified.satoshis,
                payer=payer_hash(payment.sender_hex),
                tab=tab,
            )
        token = self.tokens.mint(grant)
        lap("token")
        receipt = Receipt(
            txid=verified.txid,
            vout=verified.vout,
            satoshis=verified.satoshis,
            service=grant.service,
            resource=grant.scope,
            method=method,
            grant_id=grant.id,
            time=now,
            expires=grant.expires,
            payer=grant.payer,
            # What sweeping needs to derive the key that spends this output.
            sender=payment.sender_hex,
            prefix=payment.prefix,
            suffix=payment.suffix,
        )
        try:
            await self.store.complete(verified.txid, receipt, token)  # before the token leaves
        except StoreUnavailable:
            # Broadcast but not recorded: no token without a receipt. The same
            # payment sent again completes it (the claim is taken over).
            raise PaymentError(
                "store-unavailable",
                "payment seen but not recorded; send it again shortly",
                status=503,
            ) from None
        lap("receipt")
        if self.on_accepted is not None:
            self.on_accepted(match, receipt)
        return Accepted(grant, token, receipt, False, lap.stages, balance)

    def _repeated(self, receipt: Receipt, token: str) -> Accepted:
        """An earlier acceptance of this payment, answered again (its grant)."""
        verified = self.tokens.verify(token)
        if verified is None:
            # Minted by an instance whose clock runs ahead: still the grant bought.
            early = self.tokens.not_yet_valid(token)
            if early is not None:
                return Accepted(early[0], token, receipt, repeated=True)
            raise PaymentError(
                "grant-expired", "this payment was accepted before and its grant has ended"
            )
        return Accepted(verified[0], token, receipt, repeated=True)

    async def _taken_before(self, txid: str, purchase: str) -> Accepted | None:
        """This payment's earlier acceptance for `purchase`, if it was accepted
        (a read: it never claims, so it cannot stand in a real payment's way)."""
        try:
            claim = await self.store.accepted(txid, purchase)
        except StoreUnavailable:
            return None  # the refusal stands; the client may send it again
        if claim is None or claim.receipt is None or claim.token is None:
            return None
        return self._repeated(claim.receipt, claim.token)

    async def _was_fresh(self, txid: str, purchase: str) -> bool:
        """Whether this payment was fresh when it first came (see _remember_fresh)."""
        try:
            mark = await self.store.claim(FRESH + txid, purchase)
            if mark.outcome is Outcome.NEW:
                await self.store.release(FRESH + txid, purchase)
        except StoreUnavailable:
            raise PaymentError(
                "store-unavailable", "payments are paused: the store is unreachable", status=503
            ) from None
        return mark.outcome is Outcome.SAME

    async def _remember_fresh(self, txid: str, purchase: str) -> None:
        """Mark a fresh payment whose broadcast outcome is unknown (best effort)."""
        with contextlib.suppress(StoreUnavailable):
            await self.store.claim(FRESH + txid, purchase)

    async def _claim(self, txid: str, purchase: str) -> Accepted | object:
        """The earlier outcome of this txid, or NEW when this caller now owns
        it, or TAKEN_OVER from an owner that stalled past `settle_wait`."""
        deadline = time.monotonic() + self.settle_wait
        while True:
            try:
                claim = await self.store.claim(txid, purchase)
            except StoreUnavailable:
                raise PaymentError(
                    "store-unavailable", "payments are paused: the store is unreachable", status=503
                ) from None
            if claim.outcome is Outcome.NEW:
                return NEW
            if claim.outcome is Outcome.CONFLICT:
                raise PaymentError(
                    "payment-reused", "this transaction already paid for something else"
                )
            if claim.receipt is not None and claim.token is not None:
                return self._repeated(claim.receipt, claim.token)
            # The same payment is being accepted by a concurrent request. If
            # that takes longer than any broadcast may, its owner died or lost
            # the store before completing: take over. Broadcasting again is
            # harmless (idempotent) and the purchase is the same.
            if time.monotonic() > deadline:
                return TAKEN_OVER
            await asyncio.sleep(0.02)


class _Guarded:
    """A chain tracker whose every failure is a ChainError: an unknown answer, never a 500."""

    def __init__(self, tracker: ChainTracker) -> None:
        self.tracker = tracker

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        try:
            return await self.tracker.is_valid_root_for_height(root, height)
        except ChainError:
            raise
        except Exception as exc:
            raise ChainError("unexpected", f"{type(exc).__name__}: {exc}") from exc


class _Laps:
    """Seconds spent per stage of one acceptance, for the bench and metrics."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._clock = verify.STAGE_CLOCK  # wall time unless the bench asks for CPU time
        self._last = self._clock()

    def __call__(self, stage: str) -> None:
        now = self._clock()
        self.stages[stage] = now - self._last
        self._last = now

    def add(self, stages: dict[str, float]) -> None:
        self.stages.update(stages)
        self._last = self._clock()
