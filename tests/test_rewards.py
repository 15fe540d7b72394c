"""Reward routes end to end (issue 15, point 1): a real gateway, a real upstream
recording survey responses, a real devnet and treasury paying the rewards.

What a participant sees: the credential and the recipient checked before
anything reaches the upstream; a 2xx answer that says what is owed and where
to read it; the same payout for a resubmission; the budget said plainly;
the payout signed and broadcast by the engine, readable with its BRC-29 data.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from bsv import PrivateKey, PublicKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.bsv.derivation import invoice_number, p2pkh_script
from gateway.chain import ChainError
from gateway.chain.arc import ArcBroadcaster
from gateway.client import Wallet, fund
from gateway.devnet import start as start_devnet
from gateway.endpoints import admin
from gateway.payouts.ledgerfile import open_ledger
from gateway.payouts.runner import PayoutRunner
from gateway.policy.reload import PolicyHolder
from gateway.services import Services
from tests.survey_upstream import Survey, running_survey

REGISTER = Ed25519PrivateKey.generate()  # the city's residents' register
ISSUER = "https://register.hollowmere.example"


def pem(key: Ed25519PrivateKey) -> str:
    text = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return "\n".join("      " + line for line in text.strip().splitlines())


POLICY = """\
concessions:
  residents:
    description: Registered residents
    discount: 100
    issuer: {issuer}
    issuer_key: |
{pem}
services:
  city:
    upstream: {upstream}
    mount: /consult
    routes:
      - path: /surveys/{{survey}}/responses
        methods: [POST]
        price: free
        reward:
          pays: 500
          campaign: park-2027
          requires: [residents]
          budget: {{total: {total}, per_day: {per_day}}}
          when_exhausted: {when_exhausted}
      - path: /**
        price: free
"""


def credential(subject: str | None = "resident-1", *, key=REGISTER, expires_in: int = 600) -> str:
    claims: dict[str, object] = {"iss": ISSUER, "exp": int(time.time()) + expires_in}
    if subject is not None:
        claims["sub"] = subject
    return jwt.encode(claims, key, algorithm="EdDSA")


@pytest.fixture
async def survey() -> AsyncIterator[Survey]:
    async with running_survey() as record:
        yield record


@dataclass
class City:
    base: str
    ledger: object
    survey: Survey


async def city(
    gateway, survey: Survey, tmp_path: Path, *, total=100_000, per_day=50_000, when="proxy"
) -> City:
    ledger = open_ledger(tmp_path / "payouts.db", exclusive=False)
    policy = POLICY.format(
        issuer=ISSUER, pem=pem(REGISTER), upstream=survey.url,
        total=total, per_day=per_day, when_exhausted=when,
    )  # fmt: skip
    base = await gateway(policy, payouts=ledger)
    return City(base, ledger, survey)


async def respond(
    base: str,
    *,
    token: str | None = None,
    to: str | None = None,
    answer: str = "more trees",
    survey: str = "park",
) -> tuple[int, dict, dict[str, str]]:
    headers = {}
    if token is not None:
        headers["X-Farebox-Eligibility"] = token
    if to is not None:
        headers["X-Farebox-Payout-To"] = to
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/consult/surveys/{survey}/responses", json={"answer": answer}, headers=headers
        ) as r,
    ):
        return r.status, await r.json(content_type=None), dict(r.headers)


async def fetch(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.json(content_type=None)


def wallet_key() -> str:
    return PrivateKey().public_key().hex()


async def test_a_resident_is_owed_the_reward_once_and_the_upstream_never_sees_who(
    gateway, survey: Survey, tmp_path: Path
) -> None:
    c = await city(gateway, survey, tmp_path)
    key = wallet_key()
    status, body, headers = await respond(c.base, token=credential(), to=key)
    assert status == 201 and body == {"recorded": 1}
    assert headers["X-Farebox-Reward"] == "500"
    url = headers["X-Farebox-Payout"]
    assert url.startswith(c.base + "/.well-known/farebox/payouts/park-2027/")
    assert "no-store" in headers["Cache-Control"]
    seen = {name.lower() for name in survey.headers[0]}
    assert not seen & {"x-farebox-eligibility", "x-farebox-payout-to"}
    participant = survey.headers[0]["X-Farebox-Participant"]
    assert len(participant) == 32 and "resident-1" not in participant
    status, payout = await fetch(url)
    assert status == 200
    assert (payout["status"], payout["satoshis"], payout["recipient"]) == ("owed", 500, key)
    # Sent again (the page reloaded, a second answer): the same payout, never a second.
    status, _, again = await respond(c.base, token=credential(), to=wallet_key(), answer="b")
    assert status == 201 and again["X-Farebox-Payout"] == url
    assert len(await c.ledger.payouts()) == 1
    # The upstream sees the same participant again (it may refuse the second
    # answer), and another resident as another one.
    assert survey.headers[1]["X-Farebox-Participant"] == participant
    await respond(c.base, token=credential("resident-2"), to=wallet_key())
    assert survey.headers[2]["X-Farebox-Participant"] != participant
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert await c.ledger.spent("park-2027", today) == (1000, 1000)  # two residents


# Made when the test runs, not when the module is collected: a credential
# minted at collection would expire before a long suite reaches it.
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: None, "eligibility-required"),
        (lambda: "not-a-jwt", "eligibility-invalid"),
        (lambda: credential(key=Ed25519PrivateKey.generate()), "eligibility-invalid"),  # forged
        (lambda: credential(expires_in=-60), "eligibility-invalid"),  # expired
        (lambda: credential(subject=None), "eligibility-no-subject"),
        (lambda: "x" * 8000, "eligibility-invalid"),
    ],
)
async def test_without_a_valid_credential_nothing_is_proxied(
    gateway, survey: Survey, tmp_path: Path, make: Callable[[], str | None], reason: str
) -> None:
    c = await city(gateway, survey, tmp_path)
    status, body, _ = await respond(c.base, token=make(), to=wallet_key())
    assert (status, body["reason"]) == (403, reason)
    assert survey.headers == [] and await c.ledger.payouts() == []


@pytest.mark.parametrize(
    ("to", "reason"),
    [
        (None, "payout-recipient-missing"),
        ("", "payout-recipient-missing"),
        ("02" + "00" * 32, "payout-recipient-invalid"),  # not on the curve
        ("1BoatSLRHtKNngkdXEeobR76b53LETtpyX", "payout-recipient-invalid"),  # bad checksum
        ("04" + "11" * 64, "payout-recipient-invalid"),
    ],
)
async def test_without_a_recipient_nothing_is_proxied(
    gateway, survey: Survey, tmp_path: Path, to: str | None, reason: str
) -> None:
    c = await city(gateway, survey, tmp_path)
    status, body, _ = await respond(c.base, token=credential(), to=to)
    assert (status, body["reason"]) == (400, reason)
    assert survey.headers == [] and await c.ledger.payouts() == []


async def test_an_answer_the_upstream_refuses_owes_nothing_and_frees_the_budget(
    gateway, survey: Survey, tmp_path: Path
) -> None:
    c = await city(gateway, survey, tmp_path, total=500, per_day=500)
    status, _, headers = await respond(c.base, token=credential(), to=wallet_key(), answer="")
    assert status == 422 and "X-Farebox-Payout" not in headers
    assert await c.ledger.payouts() == []
    # The budget held for it came back: the corrected answer is rewarded.
    status, _, headers = await respond(c.base, token=credential(), to=wallet_key())
    assert status == 201 and headers["X-Farebox-Reward"] == "500"


async def test_an_upstream_outage_keeps_the_reservation_and_a_resend_owes_it(
    gateway, survey: Survey, tmp_path: Path
) -> None:
    c = await city(gateway, survey, tmp_path, total=500, per_day=500)
    survey.fail = 503
    status, _, _ = await respond(c.base, token=credential(), to=wallet_key())
    assert status == 503
    (held,) = await c.ledger.payouts()
    assert held.status == "reserved"  # it may have been recorded: never forgotten
    survey.fail = None
    status, _, headers = await respond(c.base, token=credential(), to=wallet_key())
    assert status == 201 and headers["X-Farebox-Reward"] == "500"
    (owed,) = await c.ledger.payouts()
    assert owed.status == "owed" and owed.id == held.id


async def test_a_spent_budget_is_said_and_participation_goes_on_unpaid(
    gateway, survey: Survey, tmp_path: Path
) -> None:
    c = await city(gateway, survey, tmp_path, total=1000, per_day=1000)
    for n in range(2):
        status, _, headers = await respond(c.base, token=credential(f"r{n}"), to=wallet_key())
        assert status == 201 and headers["X-Farebox-Reward"] == "500"
    status, body, headers = await respond(c.base, token=credential("r3"), to=wallet_key())
    assert status == 201 and body == {"recorded": 3}  # the answer still counts
    assert headers["X-Farebox-Reward"] == "0; budget-exhausted"
    assert "X-Farebox-Payout" not in headers
    assert len(await c.ledger.payouts()) == 2


async def test_a_spent_budget_can_close_participation(
    gateway, survey: Survey, tmp_path: Path
) -> None:
    c = await city(gateway, survey, tmp_path, total=500, per_day=500, when="refuse")
    assert (await respond(c.base, token=credential("r1"), to=wallet_key()))[0] == 201
    status, body, _ = await respond(c.base, token=credential("r2"), to=wallet_key())
    assert (status, body["reason"]) == (403, "reward-budget-exhausted")
    assert len(survey.responses) == 1


async def test_a_payout_url_needs_its_ticket(gateway, survey: Survey, tmp_path: Path) -> None:
    c = await city(gateway, survey, tmp_path)
    _, _, first = await respond(c.base, token=credential("r1"), to=wallet_key())
    _, _, second = await respond(c.base, token=credential("r2"), to=wallet_key())
    url, other = first["X-Farebox-Payout"], second["X-Farebox-Payout"]
    forged = url.rsplit("/", 1)[0] + "/" + other.rsplit("/", 1)[1]
    for wrong in (forged, url + "x", url.rsplit("/", 1)[0], url.replace("park-2027", "park")):
        status, body = await fetch(wrong)
        assert (status, body["reason"]) == (404, "no-payout"), wrong


async def test_the_engine_pays_the_reward_and_the_url_gives_what_a_wallet_needs(
    gateway, survey: Survey, tmp_path: Path
) -> None:
    runner, chain = await start_devnet("127.0.0.1", 0)
    devnet = f"http://127.0.0.1:{runner.addresses[0][1]}"
    broadcaster = ArcBroadcaster(devnet)
    try:
        treasury = Wallet.create(tmp_path / "treasury.json")
        await fund(treasury, 10_000, devnet)
        c = await city(gateway, survey, tmp_path)
        citizen = PrivateKey()
        _, _, headers = await respond(c.base, token=credential(), to=citizen.public_key().hex())
        engine = PayoutRunner(c.ledger, treasury.path, broadcaster, interval=0, batch_size=10)
        report = await engine.tick()
        assert (
            report is not None
            and report.payouts == 1
            and report.campaigns == {"park-2027": [1, 500]}
        )
        status, payout = await fetch(headers["X-Farebox-Payout"])
        assert status == 200 and payout["status"] == "seen" and payout["vout"] == 0
        internalize = payout["internalizeAction"]
        (output,) = internalize["outputs"]
        remittance = output["paymentRemittance"]
        # The citizen's key for it, derived as a BRC-100 wallet does (BRC-29).

        mine = citizen.derive_child(
            PublicKey(remittance["senderIdentityKey"]),
            invoice_number(remittance["derivationPrefix"], remittance["derivationSuffix"]),
        )
        outputs = chain.unspent_by_script(p2pkh_script(mine.public_key()))
        assert [(t, v, s) for t, v, s, _ in outputs] == [(payout["txid"], 0, 500)]
        assert bytes(internalize["tx"][:4]) == b"\x01\x01\x01\x01"  # Atomic BEEF
        # Another round pays nothing more.
        assert (await engine.tick()).payouts == 0
        assert [p.status for p in await c.ledger.payouts()] == ["seen"]
        # The public report shows it by campaign and day, and never whom.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{c.base}/.well-known/farebox/transparency?format=json") as r:
                text = await r.text()
            async with http.get(
                f"{c.base}/.well-known/farebox/transparency", headers={"Accept": "text/html"}
            ) as r:
                page = await r.text()
        report = json.loads(text)
        (row,) = report["payouts"]
        assert (row["campaign"], row["payouts"], row["satoshis"]) == ("park-2027", 1, 500)
        assert row["txids"] == [payout["txid"]]
        assert report["payout_totals_satoshis"] == {"park-2027": 500}
        assert citizen.public_key().hex() not in text + page
        assert "Paid out to citizens" in page and "park-2027" in page
        # The admin sees who, the state, the treasury and what is owed.
        services = Services(
            PolicyHolder.load(tmp_path / "policies"),
            "02" + "11" * 32,
            payouts=c.ledger,
            treasury=treasury.path,
            treasury_low_balance=20_000,
        )
        side = web.AppRunner(admin.app(services, "t0ken"), access_log=None)
        await side.setup()
        await web.TCPSite(side, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{side.addresses[0][1]}"
        auth = {"Authorization": "Bearer t0ken"}
        try:
            async with aiohttp.ClientSession(headers=auth) as http:
                async with http.get(f"{base}/payouts?status=seen") as r:
                    listed = await r.json()
                async with http.get(f"{base}/payouts?format=csv&campaign=park-2027") as r:
                    rows = list(csv.DictReader(io.StringIO(await r.text())))
                async with http.get(f"{base}/payouts?status=owed") as r:
                    none = await r.json()
                async with http.get(f"{base}/payouts?status=lost") as r:
                    bad = (r.status, (await r.json())["reason"])
                async with http.get(f"{base}/treasury") as r:
                    money = await r.json()
        finally:
            await side.cleanup()
        (entry,) = listed["payouts"]
        assert (entry["recipient"], entry["satoshis"], entry["txid"]) == (
            citizen.public_key().hex(),
            500,
            payout["txid"],
        )
        assert [r["status"] for r in rows] == ["seen"] and none["payouts"] == []
        assert bad == (400, "bad-query")
        batch = await c.ledger.batch(payout["txid"])
        assert money["satoshis"] == 10_000 - 500 - batch.fee and money["low"]
        assert money["owed_satoshis"] == 0 and money["low_balance"] == 20_000
    finally:
        await broadcaster.close()
        await runner.cleanup()


class DownOnce:
    """A broadcaster whose first broadcast finds the chain unreachable."""

    def __init__(self, inner: ArcBroadcaster) -> None:
        self.inner = inner
        self.down = True
        self.sent: list[str] = []

    async def broadcast(self, tx: bytes | str, *, txid: str | None = None):
        self.sent.append(txid or "")
        if self.down:
            self.down = False
            raise ChainError("unreachable", "connection refused")
        return await self.inner.broadcast(tx, txid=txid)

    async def status(self, txid: str):
        return await self.inner.status(txid)


async def test_the_runner_sends_again_what_an_outage_left_signed(
    gateway, survey: Survey, tmp_path: Path
) -> None:
    runner, chain = await start_devnet("127.0.0.1", 0)
    devnet = f"http://127.0.0.1:{runner.addresses[0][1]}"
    inner = ArcBroadcaster(devnet)
    try:
        treasury = Wallet.create(tmp_path / "treasury.json")
        await fund(treasury, 10_000, devnet)
        c = await city(gateway, survey, tmp_path)
        await respond(c.base, token=credential(), to=wallet_key())
        flaky = DownOnce(inner)
        engine = PayoutRunner(c.ledger, treasury.path, flaky, interval=0, batch_size=10)
        first = await engine.tick()
        assert first is not None and first.unsent and not first.sent
        (signed,) = await c.ledger.payouts()
        assert signed.status == "signed"
        # No new reward is owed, yet the next round sends the same transaction.
        second = await engine.tick()
        assert second is not None and second.sent == [signed.txid]
        assert flaky.sent == [signed.txid, signed.txid]
        (paid,) = await c.ledger.payouts()
        assert (paid.status, paid.txid) == ("seen", signed.txid)
        # The next looks ask how it stands: mined once the devnet mines it.
        chain.mine()
        await engine.tick()
        assert [p.status for p in await c.ledger.payouts()] == ["mined"]
    finally:
        await inner.close()
        await runner.cleanup()


def test_the_access_log_leaves_the_payout_ticket_out(caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp.test_utils import make_mocked_request

    from gateway.edge.logs import AccessLog

    path = "/.well-known/farebox/payouts/park-2027/" + "ab" * 16 + "/s3cret-ticket"
    request = make_mocked_request("GET", path)
    logger = logging.getLogger("farebox.access.test")
    with caplog.at_level(logging.INFO, logger=logger.name):
        AccessLog(logger, "").log(request, web.Response(status=200), 0.001)
    (record,) = caplog.records
    assert "s3cret-ticket" not in record.getMessage() and "s3cret" not in record.path
    assert record.getMessage().startswith("GET /.well-known/farebox/payouts/park-2027/abab")
