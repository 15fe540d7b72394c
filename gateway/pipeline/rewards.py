"""A rewarded route: proxied free, and a participant is owed the reward once.

The request must carry an eligibility credential (`X-Farebox-Eligibility`,
a JWT from one of the concessions the reward `requires`: a residents' or
voters' register) and say where to be paid (`X-Farebox-Payout-To`: a BRC-29
identity key or an address; a BRC-103 authenticated client's identity key
when it names none). Neither reaches the upstream (X-Farebox-* never does);
the upstream gets `X-Farebox-Participant`, a keyed digest of who takes part,
the same for every answer of one person in one campaign, to refuse or
replace a second answer.

    credential?  no: 403, nothing proxied
    recipient?   no: 400, nothing proxied
    reserve the reward against the campaign's budget, once per credential
    subject (one atomic step in the shared ledger):
      exhausted: 403 (`when_exhausted: refuse`), or proxied unpaid, said so
      again, already owed or paid: proxied again, the same payout shown
        new (or reserved before): proxied; the upstream's 2xx owes it before
        anything reaches the client; any other answer below 500 gives the
        budget back if this request reserved it; a 5xx or no answer keeps it
        reserved (the upstream may have recorded it; sending again settles it)

A 2xx answer carries `X-Farebox-Reward` (satoshis owed) and
`X-Farebox-Payout` (the URL where the participant reads the payout and,
once it is signed, what a BRC-100 wallet needs to take it in), only once
the ledger holds the payout owed. Who is paid once is the register that
vouched and the credential's holder (iss and sub), kept only as a keyed
digest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import replace
from typing import Any, Protocol

from aiohttp import web
from bsv import PrivateKey
from multidict import CIMultiDict

from gateway.edge import metrics, urls
from gateway.edge.problems import problem
from gateway.payouts.engine import new_payout
from gateway.payouts.listfile import BadRecipient, parse_recipient
from gateway.payouts.records import Payout
from gateway.peer import PEER
from gateway.policy import Match
from gateway.policy.schema import Budget, Reward
from gateway.pricing.concessions import HEADER as ELIGIBILITY
from gateway.pricing.concessions import holder, verified
from gateway.pricing.rates import quote
from gateway.proxy.forward import Proxy
from gateway.proxy.headers import keep_private
from gateway.services import Services

log = logging.getLogger("farebox.payouts")

PAYOUT_TO = "X-Farebox-Payout-To"
REWARD = "X-Farebox-Reward"
PAYOUT = "X-Farebox-Payout"
# To the upstream: who takes part, as a digest only this campaign's answers
# share (never the credential, never the recipient), so it can refuse or
# replace a second answer from the same person.
PARTICIPANT = "X-Farebox-Participant"
MAX_CREDENTIAL = 8192


class RewardBook(Protocol):
    """What a rewarded route needs of the payout ledger (gateway.payouts.ledgerfile
    or ledgerredis)."""

    async def reserve(
        self, payout: Payout, budget: Budget, day: str
    ) -> tuple[str, Payout | None]: ...
    async def owe(self, payout_id: str) -> Payout | None: ...
    async def unreserve(self, payout_id: str) -> bool: ...

    id_key: bytes


class Passage(Protocol):
    """What this needs of the pipeline that calls it."""

    services: Services
    proxy: Proxy

    def origin(self, request: web.BaseRequest) -> str: ...


def payout_id(key: bytes, campaign: str, concession: str, who: str) -> str:
    """The payout's idempotency key: the campaign and a keyed digest (HMAC-SHA256
    with the ledger's secret) of the register that vouched and the holder it
    names ("iss|sub"), so neither the ledger nor an export holds the subject,
    nor lets anyone test guesses of it."""
    named = f"{concession}|{who}".encode("utf-8", "surrogatepass")
    return f"{campaign}:{hmac.new(key, named, hashlib.sha256).hexdigest()[:32]}"


def payout_url(origin: str, payout: Payout) -> str:
    """Where the participant reads `payout`: its id and secret ticket in the path."""
    campaign, _, digest = payout.id.partition(":")
    return f"{origin}{urls.PAYOUTS}{campaign}/{digest}/{payout.ticket}"


async def serve(passage: Passage, request: web.BaseRequest, match: Match) -> web.StreamResponse:
    services = passage.services
    reward = match.route.route.reward
    assert reward is not None
    book: RewardBook | None = services.payouts
    if book is None:
        return problem(
            503,
            "rewards-off",
            "Rewards are not paid here",
            "this gateway has no payout ledger: restart it after adding reward routes",
        )
    proven = _credential(services, reward, request)
    if isinstance(proven, web.Response):
        return proven
    concession, claims = proven
    who = holder(claims)
    subject = claims.get("sub")
    if who is None or not isinstance(subject, str) or not subject:
        return problem(
            403,
            "eligibility-no-subject",
            "Credential names no one",
            "the eligibility credential has no subject (sub): a reward is paid once per person",
        )
    recipient = _recipient(request, services)
    if isinstance(recipient, web.Response):
        return recipient
    quoted = await quote(reward.pays, services.rates)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    # BRC-29 from a one-off sender key: the recipient's wallet derives the
    # same key from it, and no worker needs the treasury's key to owe a reward.
    wanted = new_payout(
        payout_id(book.id_key, reward.campaign, concession, who),
        reward.campaign,
        recipient.value,
        quoted.satoshis,
        treasury=PrivateKey(),
        address_script=recipient.script if recipient.kind == "address" else None,
    )
    wanted = replace(wanted, ticket=secrets.token_urlsafe(18))
    who_upstream = {PARTICIPANT: wanted.id.partition(":")[2]}
    outcome, stored = await book.reserve(wanted, reward.budget, day)
    if outcome == "exhausted" or stored is None:
        metrics.REWARDS.labels(reward.campaign, "exhausted").inc()
        if reward.when_exhausted == "refuse":
            return problem(
                403,
                "reward-budget-exhausted",
                "Reward budget spent",
                f"the budget of campaign {reward.campaign!r} is spent: participation is closed",
            )
        hook = _Reward(book, None, "", False)
        return await passage.proxy.forward(request, match, who_upstream, None, hook)
    hook = _Reward(book, stored, payout_url(passage.origin(request), stored), outcome == "new")
    response = await passage.proxy.forward(request, match, who_upstream, None, hook)
    metrics.REWARDS.labels(reward.campaign, hook.outcome).inc()
    if hook.outcome == "owed":
        log.info("reward owed: campaign %s, %d satoshis", reward.campaign, stored.satoshis)
    return response


def _credential(
    services: Services, reward: Reward, request: web.BaseRequest
) -> tuple[str, dict[str, Any]] | web.Response:
    """(the concession whose register vouched, the verified claims), or the 403."""
    names = ", ".join(reward.requires)
    credential = request.headers.get(ELIGIBILITY, "").strip()
    if not credential:
        return problem(
            403,
            "eligibility-required",
            "Eligibility credential required",
            f"this route rewards taking part; send {ELIGIBILITY} with a credential from: {names}",
            accepted=list(reward.requires),
        )
    concessions = services.policy.current.concessions
    if len(credential) <= MAX_CREDENTIAL:
        for name in reward.requires:
            concession = concessions.get(name)
            claims = None if concession is None else verified(credential, concession)
            if claims is not None:
                return name, claims
    return problem(
        403,
        "eligibility-invalid",
        "Eligibility credential not accepted",
        f"the credential is not valid (forged, expired, or from another issuer); accepted: {names}",
        accepted=list(reward.requires),
    )


def _recipient(request: web.BaseRequest, services: Services) -> Any:
    given = request.headers.get(PAYOUT_TO, "").strip()
    if not given:
        peer = PEER.get()
        if peer is not None:
            given = peer.identity
    if not given:
        return problem(
            400,
            "payout-recipient-missing",
            "Where should the reward go?",
            f"send {PAYOUT_TO} with your wallet's identity key (hex) or a BSV address",
        )
    try:
        return parse_recipient(given, services.payout_network)
    except BadRecipient as bad:
        return problem(400, "payout-recipient-invalid", "Not a payout recipient", bad.message)


class _Reward:
    """The proxy's hook (proxy.forward.Metered) on a rewarded request.

    Before anything reaches the client (`answered`): a 2xx owes the reward
    reserved for it, and only then do its headers promise it; any other
    answer below 500 gives the budget back, if this very request reserved it
    (a copy sent twice must not drop the other's reservation); a 5xx keeps it
    reserved (the upstream may have recorded it: sending again settles it).
    `begin` keeps the answer out of shared caches: it carries a secret URL.
    """

    by_bytes = False

    def __init__(
        self, book: RewardBook, stored: Payout | None, url: str, reserved_here: bool
    ) -> None:
        self.book = book
        self.stored = stored
        self.url = url
        self.reserved_here = reserved_here
        self.outcome = "exhausted" if stored is None else "kept"
        self.owed: Payout | None = None

    async def answered(self, status: int) -> None:
        stored = self.stored
        if stored is None:
            return
        if stored.status != "reserved":
            self.owed, self.outcome = stored, "again"  # owed or paid before: shown again
        elif 200 <= status < 300:
            owed = await self.book.owe(stored.id)
            if owed is not None and owed.status != "reserved":
                self.owed, self.outcome = owed, "owed"
        elif status < 500 and self.reserved_here:
            await self.book.unreserve(stored.id)
            self.outcome = "refused-upstream"

    def begin(self, status: int, headers: CIMultiDict[str]) -> None:
        keep_private(headers)
        headers["Cache-Control"] = "private, no-store"
        if self.stored is None:
            headers[REWARD] = "0; budget-exhausted"
        elif self.owed is not None and 200 <= status < 300:
            headers[REWARD] = str(self.owed.satoshis)
            headers[PAYOUT] = self.url

    def allow(self, size: int) -> int:
        return size

    def end(self) -> None:
        pass

    def withdraw(self) -> None:
        pass
