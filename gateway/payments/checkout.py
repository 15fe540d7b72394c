"""Checkouts: a payment request a person can pay from a phone.

A phone wallet pays an address and an amount; it knows nothing of BRC-121.
So each paywall page gets a checkout: a signed ticket (no server state)
naming the purchase, its price and its expiry, and a payee address made for
that ticket alone. The address is the BRC-29 key of the ticket for the
well-known "anyone" sender (private key 1), with the checkout id as the
derivation prefix and the ticket's issue time as the suffix: the cashier
then verifies and records the payment exactly as any other, and the server
key can spend it like any other receipt.

A phone wallet may broadcast its payment just as (or well after) the checkout
expires, when nobody polls any more. So a checkout whose status a page asked
is kept in the store (`CheckoutWatcher.keep`), and for a grace period after
its expiry (the `checkout_grace` setting, GRACE by default) each worker's
background task looks for its payment now and then (`next_look`), at a
bounded rate (LOOK_RATE across all instances), and hands what it finds to the
cashier as a timely payment would be (endpoints/checkout.py, `watch_late`).

The watch list holds at most as many checkouts as that rate can look at as
scheduled (`most_watched`: LOOK_RATE x grace / the looks one checkout takes in
it, about 10,000 for a day), so looks do not fall ever further behind; when
they do fall behind for a while (a burst of pages), the store hands out the
looks due latest first, so a recently expired checkout's first looks are not
queued behind old checkouts' overdue ones.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol
from urllib.parse import quote

from bsv import PrivateKey, PublicKey

from gateway.bsv.derivation import p2pkh_script, payee_key_for_sender
from gateway.tokens import Tokens

ANYONE = PrivateKey(1)  # BRC-42's "anyone": a sender whose key everybody knows
ANYONE_HEX = ANYONE.public_key().hex()
AUDIENCE = "farebox:checkout"
LIFETIME = 600  # seconds a checkout may be paid
GRACE = 86_400  # seconds an expired checkout is still watched, by default (checkout_grace)
LOOK_RATE = 2  # lookups a second the late watch makes at most, across all instances
FIRST_LOOK = 3  # seconds after expiry of the first look for a late payment
SHORTEST_GAP = 5  # seconds between looks, at least ...
LONGEST_GAP = 14_400  # ... and at most: 17 looks over a day's grace
MAX_HOST = 255  # the longest Host a watched checkout is kept with
RETRY_KEEP = 30  # seconds before a poll asks again to watch a checkout the store refused
LABEL_MOST = 40  # characters of the payee's name a payment URI carries at most
SHORT_KEPT = 300  # seconds a short checkout id outlives its checkout (a late post: "expired")


@dataclass(frozen=True, slots=True)
class Checkout:
    id: str  # base64 of 12 random bytes: the derivation prefix
    service: str
    resource: str  # the path asked for
    method: str
    satoshis: int
    issued_ms: int  # Unix milliseconds: the derivation suffix's source
    expires: int  # Unix seconds

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires


def open_checkout(
    tokens: Tokens, service: str, resource: str, method: str, satoshis: int
) -> tuple[Checkout, str]:
    """A new checkout and its ticket (a signed token to put in URLs)."""
    now_ms = int(time.time() * 1000)
    checkout = Checkout(
        id=base64.b64encode(os.urandom(12)).decode(),
        service=service,
        resource=resource,
        method=method,
        satoshis=satoshis,
        issued_ms=now_ms,
        expires=now_ms // 1000 + LIFETIME,
    )
    claims = {
        "jti": checkout.id,
        "svc": service,
        "res": resource,
        "m": method,
        "sats": satoshis,
        "iat_ms": now_ms,
        "exp": checkout.expires,
    }
    return checkout, tokens.sign_claims(claims, AUDIENCE)


def read_ticket(tokens: Tokens, ticket: str, *, allow_expired: bool = False) -> Checkout | None:
    claims = tokens.read_claims(ticket, AUDIENCE, verify_exp=not allow_expired)
    if claims is None:
        return None
    try:
        return Checkout(
            id=str(claims["jti"]),
            service=str(claims["svc"]),
            resource=str(claims["res"]),
            method=str(claims["m"]),
            satoshis=int(claims["sats"]),
            issued_ms=int(claims["iat_ms"]),
            expires=int(claims["exp"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


# --- short checkout ids: what the QR code carries -----------------------------------------
#
# A ticket is a signed JWT of some 300 characters: in the QR code's `r=` URL
# it makes the code dense and hard to scan on a dim screen. So the page puts a
# short random id in its URLs instead (24 base32 letters, 120 random bits:
# unguessable), and the store keeps the ticket under it (`Store.bind`, holder
# "checkout:<id>") until SHORT_KEPT seconds after the checkout expires. The
# ticket stays the checkout's truth: the short id only finds it. A ticket in a
# URL (a page rendered while the store was unreachable, an old link) works as
# before.

SHORT_ID = re.compile(r"[a-z2-7]{24}")


def short_id() -> str:
    """A new short checkout id: 24 lower-case base32 letters (120 random bits)."""
    return base64.b32encode(secrets.token_bytes(15)).decode().lower()


def is_short_id(text: str) -> bool:
    return SHORT_ID.fullmatch(text) is not None


class TicketKeeper(Protocol):
    """What short ids need of the store (store/ holds the contract)."""

    async def bind(self, holder: str, token: str, expires: int) -> None: ...
    async def bound(self, holder: str) -> list[str]: ...


async def keep_ticket(store: TicketKeeper, checkout: Checkout, ticket: str) -> str:
    """A short id for `ticket`, kept in the store; raises StoreUnavailable."""
    short = short_id()
    await store.bind("checkout:" + short, ticket, checkout.expires + SHORT_KEPT)
    return short


async def kept_ticket(store: TicketKeeper | None, given: str) -> str | None:
    """The ticket `given` names: itself, or, for a short id, the one the store
    keeps under it (None when unknown or long expired, or with no store).

    Raises StoreUnavailable."""
    if not is_short_id(given):
        return given
    found = await store.bound("checkout:" + given) if store is not None else []
    return found[0] if found else None


def suffix(checkout: Checkout) -> str:
    return base64.b64encode(str(checkout.issued_ms).encode()).decode()


def payee(server: PublicKey, checkout: Checkout) -> PublicKey:
    """The key this checkout is paid to (anyone can compute it; only the
    server can spend it)."""
    return payee_key_for_sender(server, ANYONE, checkout.id, suffix(checkout))


def locking_script(server: PublicKey, checkout: Checkout) -> bytes:
    return p2pkh_script(payee(server, checkout))


def payment_uri(address: str, satoshis: int, pay_url: str, label: str) -> str:
    """BIP-21 style: `bitcoin:<address>?sv&amount=<BSV>&label=…&r=<pay url>`.

    `r` is where a wallet may POST the transaction (BEEF or raw, bytes or
    hex) instead of broadcasting it itself. Its ":" and "/" stay as they are
    (RFC 3986 allows them in a query, as BIP-72's examples write `r`): every
    character saved makes the QR code less dense.
    """
    amount = format(Decimal(satoshis) / Decimal(100_000_000), "f").rstrip("0").rstrip(".")
    if len(label) > LABEL_MOST:  # a long service name must not make the QR code dense
        label = label[:LABEL_MOST].rsplit(" ", 1)[0].rstrip(" ,;:-(")
    return (
        f"bitcoin:{address}?sv&amount={amount}"
        f"&label={quote(label, safe='')}&r={quote(pay_url, safe=':/')}"
    )


class PaymentWatcher(Protocol):
    """Finds transactions paying a script, for wallets that do not post them."""

    async def payments_to(self, script: bytes) -> list[bytes]:
        """BEEFs of transactions with an output locked by `script` (newest last)."""
        ...

    async def close(self) -> None: ...


# --- watching a checkout past its expiry ---------------------------------------------------


def next_look(expires: int, now: float) -> int:
    """Unix seconds of the next look for a late payment to a checkout expiring at `expires`.

    FIRST_LOOK after expiry, then gaps as long as the time since expiry
    (doubling) between SHORTEST_GAP and LONGEST_GAP: soon while the person
    may still be waiting, rarely once they cannot be.
    """
    if now < expires:
        return expires + FIRST_LOOK
    return int(now) + min(LONGEST_GAP, max(SHORTEST_GAP, int(now) - expires))


def looks_within(grace: int) -> int:
    """How many looks `next_look` schedules for one checkout within `grace` after its expiry."""
    expires, looks = 0, 0
    due = next_look(expires, expires - 1)
    while due < expires + grace:
        looks += 1
        due = next_look(expires, due)
    return looks


def most_watched(grace: int) -> int:
    """Checkouts the watch list holds at most: as many as LOOK_RATE can look at as scheduled.

    A checkout watched for `grace` takes `looks_within(grace)` looks; more
    checkouts at once than LOOK_RATE x grace / that would need more looks
    than the rate allows, and looks would fall ever further behind.
    """
    return max(1, LOOK_RATE * grace // max(1, looks_within(grace)))


MOST_WATCHED = most_watched(GRACE)  # 10,164 for a day's grace


@dataclass(frozen=True, slots=True)
class Watched:
    """What the late watch keeps of a checkout: its ticket and the Host it was asked on."""

    ticket: str  # the signed ticket: names the purchase (a bearer of its grant, never shown)
    host: str  # the Host the policy is matched on, as for the page's own polls

    def to_text(self) -> str:
        return json.dumps({"ticket": self.ticket, "host": self.host}, separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str) -> Watched | None:
        try:
            data = json.loads(text)
            return cls(str(data["ticket"]), str(data["host"]))
        except (ValueError, KeyError, TypeError):
            return None


class WatchList(Protocol):
    """What the late watch needs of the store (store/ holds the contract)."""

    async def watch_checkout(
        self, checkout: str, entry: str, due: int, until: int, most: int
    ) -> bool: ...
    async def due_checkouts(self, limit: int, lease: int) -> list[tuple[str, str]]: ...
    async def look_again(self, checkout: str, due: int) -> None: ...
    async def unwatch_checkout(self, checkout: str) -> None: ...


class CheckoutWatcher:
    """A payment watcher that also keeps watching checkouts past their expiry.

    It answers `payments_to` as the watcher it wraps; `keep` puts a checkout
    whose status was asked on the store's watch list until `grace` seconds
    after it expires (once per checkout per process: a page polls often).
    Only checkouts this server signed get there, and at most `most` at once
    (by default `most_watched(grace)`). A checkout the store did not take
    (the list was full) is offered again by a later poll, RETRY_KEEP seconds
    on, so it is watched once room frees.
    """

    def __init__(
        self,
        inner: PaymentWatcher,
        watchlist: WatchList,
        *,
        grace: int = GRACE,
        most: int | None = None,
    ) -> None:
        self.inner = inner
        self.watchlist = watchlist
        self.grace = grace
        self.most = most_watched(grace) if most is None else most
        # Checkout id -> None once kept, else when the store last refused it.
        self._kept: OrderedDict[str, float | None] = OrderedDict()

    async def payments_to(self, script: bytes) -> list[bytes]:
        return await self.inner.payments_to(script)

    async def close(self) -> None:
        await self.inner.close()

    def within_grace(self, checkout: Checkout, now: float | None = None) -> bool:
        """Whether a payment to `checkout` is still looked for (its expiry + grace not passed)."""
        return (time.time() if now is None else now) < checkout.expires + self.grace

    async def keep(self, checkout: Checkout, ticket: str, host: str) -> bool:
        """Watch `checkout` (read from `ticket`) past its expiry; False when not kept now.

        Raises StoreUnavailable (then the next poll tries again).
        """
        now = time.time()
        if checkout.id in self._kept:
            refused = self._kept[checkout.id]
            if refused is None or now < refused + RETRY_KEEP:
                return False  # kept already, or refused a moment ago
        if len(host) > MAX_HOST or not self.within_grace(checkout, now):
            return False
        entry = Watched(ticket, host).to_text()
        due = next_look(checkout.expires, now)
        until = checkout.expires + self.grace
        kept = await self.watchlist.watch_checkout(checkout.id, entry, due, until, self.most)
        # Refused (the list is full, or another worker kept it): ask again a
        # little later rather than at every poll, and never give up on it.
        self._kept[checkout.id] = None if kept else now
        self._kept.move_to_end(checkout.id)
        if len(self._kept) > 4096:
            self._kept.popitem(last=False)
        return kept
