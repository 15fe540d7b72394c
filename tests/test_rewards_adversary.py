"""Reward routes attacked: credentials, recipients, methods, upstream answers,
races, clocks, the payout URL, the admin API and nginx mode.

A real gateway (the same assembly as tests/conftest.py's `gateway`, kept
here so a test can reload the policy), a real upstream whose answers each
request steers (status, delay, forged and cache headers), the SQLite payout
ledger and Redis (tests/redis_servers.py). What these tests found when they were
written is fixed; each test says the input and what must happen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import sqlite3
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from bsv import PrivateKey
from bsv.utils import decode_address
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.chain.arc import ArcBroadcaster
from gateway.client import Wallet, fund
from gateway.devnet import start as start_devnet
from gateway.edge.protocol import ProblemServer
from gateway.endpoints import admin
from gateway.payouts.ledgerfile import open_ledger
from gateway.payouts.ledgerredis import RedisLedger
from gateway.payouts.runner import PayoutRunner
from gateway.peer.guard import Authenticator
from gateway.pipeline import rewards
from gateway.pipeline.gateway import MAX_HEADER_BYTES
from gateway.policy.reload import PolicyHolder
from gateway.pricing.rates import FixedRates
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway, payout_network
from gateway.services import Services
from gateway.store import StoreUnavailable
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.conftest import PAID_SERVER, raw_request
from tests.redis_servers import RedisServer, need_redis, running
from tests.test_peer_auth import Client
from tests.test_rewards import ISSUER, REGISTER, credential, pem, wallet_key

# --- the city: three registers, two rewarded routes ---------------------------------------

VOTERS = ec.generate_private_key(ec.SECP256R1())  # an ES256 register: signatures have twins
VOTERS_ISSUER = "https://voters.hollowmere.example"
STUDENTS = Ed25519PrivateKey.generate()  # a register the reward does not accept
STUDENTS_ISSUER = "https://students.hollowmere.example"
CAMPAIGN = "park-2027"
PAYS = 500
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 order


def any_pem(key: Any) -> str:
    text = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return "\n".join("      " + line for line in text.strip().splitlines())


POLICY = """\
concessions:
  residents:
    {residents_issuer_line}
    issuer_key: |
{residents}
  voters:
    {voters_issuer_line}
    issuer_key: |
{voters}
  students:
    discount: 50
    issuer: {students_issuer}
    issuer_key: |
{students}
services:
  city:
    upstream: {upstream}
    mount: /consult
    routes:
      - path: /surveys/{{survey}}/responses
        methods: [POST]
        price: free
        reward:
          pays: {pays}
          campaign: {campaign}
          requires: [residents, voters]
          budget: {{total: {total}, per_day: {per_day}}}
          when_exhausted: {when}
      - path: /notices/{{n}}
        methods: {notice_methods}
        price: free
        reward:
          pays: 100
          campaign: notices-2027
          requires: [residents]
          budget: {{total: 100000}}
      - path: /**
        price: free
"""


def policy_text(
    upstream: str,
    *,
    pays: int | str = PAYS,
    total: int = 100_000,
    per_day: int = 50_000,
    when: str = "proxy",
    campaign: str = CAMPAIGN,
    notice_methods: str = "[POST]",
    voters_issuer_line: str = f"issuer: {VOTERS_ISSUER}",
    residents_issuer_line: str = f"issuer: {ISSUER}",
) -> str:
    return POLICY.format(
        residents_issuer_line=residents_issuer_line, residents=pem(REGISTER),
        voters_issuer_line=voters_issuer_line, voters=any_pem(VOTERS),
        students_issuer=STUDENTS_ISSUER, students=any_pem(STUDENTS),
        upstream=upstream, pays=pays, campaign=campaign, total=total, per_day=per_day,
        when=when, notice_methods=notice_methods,
    )  # fmt: skip


def token(claims: dict[str, Any], *, key: Any = REGISTER, alg: str = "EdDSA") -> str:
    body = {"iss": ISSUER, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, key, algorithm=alg)


def voter(subject: str = "voter-1", **claims: Any) -> str:
    return token({"iss": VOTERS_ISSUER, "sub": subject, **claims}, key=VOTERS, alg="ES256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def handmade(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    """A JWT put together by hand: `sign(signing_input) -> signature bytes`."""
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return signing + "." + b64(sign(signing.encode()))


# --- an upstream each request steers ------------------------------------------------------


@dataclass
class Town:
    """The upstream: records every request; the JSON body's (or the query's)
    `status`, `sleep`, `forge` and `cache` say how to answer."""

    url: str = ""
    seen: list[dict[str, str]] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)


FORGED = {
    "X-Farebox-Reward": "999999",
    "X-Farebox-Payout": "https://evil.example/.well-known/farebox/payouts/x/y/z",
    "X-Farebox-Payout-To": "1BoatSLRHtKNngkdXEeobR76b53LETtpyR",
}
SHARED_CACHE = {
    "Cache-Control": "public, max-age=3600, s-maxage=3600",
    "CDN-Cache-Control": "max-age=3600",
    "Surrogate-Control": "max-age=3600",
    "X-Accel-Expires": "3600",
}


@contextlib.asynccontextmanager
async def running_town() -> AsyncIterator[Town]:
    town = Town()

    async def any_request(request: web.Request) -> web.StreamResponse:
        town.seen.append(dict(request.headers))
        town.methods.append(request.method)
        steer: dict[str, Any] = dict(request.query)
        raw = await request.read()
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
                if isinstance(body, dict):
                    steer.update(body)
        await asyncio.sleep(float(steer.get("sleep", 0)))
        status = int(steer.get("status", 201 if request.method == "POST" else 200))
        if request.method == "OPTIONS":
            status = 204  # as frameworks answer OPTIONS themselves
        headers: dict[str, str] = {}
        if steer.get("forge"):
            headers.update(FORGED)
        if steer.get("cache"):
            headers.update(SHARED_CACHE)
        if status == 303:
            headers["Location"] = "/consult/thanks"
        town.answered.append(status)
        if status in (204, 304) or request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        return web.json_response({"recorded": len(town.seen)}, status=status, headers=headers)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", any_request)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    town.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield town
    finally:
        await runner.cleanup()


@pytest.fixture
async def town() -> AsyncIterator[Town]:
    async with running_town() as record:
        yield record


# --- the gateway ---------------------------------------------------------------------------


@dataclass
class City:
    base: str
    services: Services
    ledger: Any
    town: Town
    folder: Path

    @property
    def policy(self) -> PolicyHolder:
        return self.services.policy

    def rewrite(self, text: str) -> None:
        (self.folder / "test.yaml").write_text(text)
        assert self.policy.reload()


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Any]:
    runners: list[web.BaseRunner] = []
    proxies: list[Proxy] = []
    closers: list[Any] = []

    async def starter(
        town: Town,
        *,
        ledger: Any = None,
        store: Any = None,
        read_timeout: float = 5,
        folder: str = "policies",
        no_ledger: bool = False,
        **options: Any,
    ) -> City:
        extra = dict(options.pop("services", {}))
        path = tmp_path / folder
        path.mkdir(exist_ok=True)
        (path / "test.yaml").write_text(textwrap.dedent(policy_text(town.url, **options)))
        if no_ledger:
            ledger = None
        elif ledger is None:
            ledger = open_ledger(tmp_path / "payouts.db", exclusive=False)
            closers.append(ledger.close)
        proxy = Proxy(connect_timeout=2, read_timeout=read_timeout)
        await proxy.start()
        proxies.append(proxy)
        services = Services(
            PolicyHolder.load(path),
            extra.pop("server_key", "02" + "11" * 32),
            store=store or MemoryStore(),
            payouts=ledger,
            **extra,
        )
        server = ProblemServer(
            assemble_gateway(services, proxy).handle,
            access_log=None,
            max_field_size=MAX_HEADER_BYTES,  # as `farebox serve` (gateway/serve/worker.py)
        )
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return City(f"http://127.0.0.1:{runner.addresses[0][1]}", services, ledger, town, path)

    yield starter
    for runner in runners:
        await runner.cleanup()
    for proxy in proxies:
        await proxy.close()
    for close in closers:
        await close()


async def post(
    base: str,
    *,
    cred: str | None = None,
    to: str | None = None,
    answer: dict[str, Any] | None = None,
    path: str = "/consult/surveys/park/responses",
    method: str = "POST",
    headers: list[tuple[str, str]] | None = None,
    timeout: float | None = None,
) -> tuple[int, Any, dict[str, str], list[tuple[str, str]]]:
    sent: list[tuple[str, str]] = list(headers or [])
    if cred is not None:
        sent.append(("X-Farebox-Eligibility", cred))
    if to is not None:
        sent.append(("X-Farebox-Payout-To", to))
    kw: dict[str, Any] = {}
    if method == "POST":
        kw["json"] = {"answer": "more trees", **(answer or {})}
    client_timeout = aiohttp.ClientTimeout(total=timeout) if timeout else None
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as http,
        http.request(method, base + path, headers=sent, allow_redirects=False, **kw) as r,
    ):
        text = await r.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        return r.status, body, dict(r.headers), list(r.headers.items())


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.json(content_type=None)


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


async def one(city: City) -> Any:
    found = await city.ledger.payouts()
    assert len(found) == 1, found
    return found[0]


# --- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": 12345}, "eligibility-invalid"),  # pyjwt refuses a non-string sub
        ({"sub": ["resident-1"]}, "eligibility-invalid"),
        ({"sub": {"id": 1}}, "eligibility-invalid"),
        ({"sub": True}, "eligibility-invalid"),
        ({"sub": ""}, "eligibility-no-subject"),
        ({"sub": None}, "eligibility-invalid"),
        ({"jti": "credential-7"}, "eligibility-no-subject"),  # a jti is not a person
        ({"sub": "r", "iss": "https://elsewhere.example"}, "eligibility-invalid"),
        ({"sub": "r", "exp": "tomorrow"}, "eligibility-invalid"),
        ({"sub": "r", "nbf": int(time.time()) + 3600}, "eligibility-invalid"),
        ({"sub": "r", "iat": int(time.time()) + 3600}, "eligibility-invalid"),
        ({"sub": "r" * 9000}, "eligibility-invalid"),  # beyond 8192 characters
    ],
)
async def test_a_credential_naming_no_one_is_refused_and_nothing_is_proxied(
    start, town: Town, claims: dict[str, Any], reason: str
) -> None:
    city = await start(town)
    status, body, headers, _ = await post(city.base, cred=token(claims), to=wallet_key())
    assert (status, body["reason"]) == (403, reason)
    if reason == "eligibility-invalid":
        assert body["accepted"] == ["residents", "voters"]
    assert "no-store" in headers["Cache-Control"]
    assert town.seen == [] and await city.ledger.payouts() == []


def _none_alg(claims: dict[str, Any]) -> str:
    return handmade({"alg": "none", "typ": "JWT"}, claims, lambda _: b"")


def _hs256_with_public_key(claims: dict[str, Any]) -> str:
    secret = (
        REGISTER.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .strip()
    )
    return handmade(
        {"alg": "HS256", "typ": "JWT"},
        claims,
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )


@pytest.mark.parametrize(
    "forge",
    [
        _none_alg,
        _hs256_with_public_key,
        # An ES256 credential from a key not the voters' register's own
        lambda c: jwt.encode(c, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
        # The students' register is a real one, but the reward does not require it
        lambda c: jwt.encode({**c, "iss": STUDENTS_ISSUER}, STUDENTS, algorithm="EdDSA"),
        # The voters' register signing as the residents' issuer
        lambda c: jwt.encode(c, VOTERS, algorithm="ES256"),
    ],
    ids=["alg-none", "hs256-public-key", "foreign-es256", "not-required", "issuer-mixup"],
)
async def test_forged_and_foreign_credentials_are_refused(start, town: Town, forge: Any) -> None:
    city = await start(town)
    claims = {"iss": ISSUER, "sub": "resident-1", "exp": int(time.time()) + 600}
    status, body, _, _ = await post(city.base, cred=forge(claims), to=wallet_key())
    assert (status, body["reason"]) == (403, "eligibility-invalid")
    assert town.seen == [] and await city.ledger.payouts() == []


async def test_a_credential_with_raw_non_utf8_bytes_is_a_clear_403(start, town: Town) -> None:
    city = await start(town)
    good = credential()
    status, body = await raw_request(
        city.base,
        "/consult/surveys/park/responses",
        "POST",
        f"X-Farebox-Eligibility: {good[:-3]}\udcff\udcfe\r\n"
        f"X-Farebox-Payout-To: {wallet_key()}\r\nContent-Length: 0\r\n",
    )
    assert status == 403 and json.loads(body)["reason"] == "eligibility-invalid"
    assert town.seen == []


@pytest.mark.parametrize(
    "subject",
    ["résident-1", "resident\x00one", "r" * 4000, "🙂", " resident-1 ", "a|b"],
    ids=["latin", "nul", "long", "emoji", "spaces", "pipe"],
)
async def test_odd_but_valid_subjects_are_rewarded_once_and_never_stored(
    start, town: Town, subject: str
) -> None:
    city = await start(town)
    for n in range(2):
        status, _, headers, _ = await post(city.base, cred=credential(subject), to=wallet_key())
        assert status == 201 and headers["X-Farebox-Reward"] == "500", n
    payout = await one(city)
    assert payout.status == "owed"
    stored = json.dumps([getattr(payout, name) for name in payout.__slots__])
    assert subject not in stored and ISSUER not in stored


async def test_a_subject_that_is_not_encodable_is_not_a_500(start, town: Town) -> None:
    city = await start(town)
    status, body, _, _ = await post(city.base, cred=credential("resident-\ud800"), to=wallet_key())
    assert status != 500, body
    assert status in (201, 403)


async def test_the_same_person_with_two_credentials_is_paid_once(start, town: Town) -> None:
    city = await start(town)
    urls = set()
    for n in range(3):
        cred = token({"sub": "resident-9", "jti": f"c{n}", "iat": int(time.time()) - n})
        status, _, headers, _ = await post(city.base, cred=cred, to=wallet_key())
        assert status == 201
        urls.add(headers["X-Farebox-Payout"])
    assert len(urls) == 1
    payout = await one(city)
    assert payout.satoshis == PAYS
    assert await city.ledger.spent(CAMPAIGN, today()) == (PAYS, PAYS)


async def test_an_ecdsa_signature_twin_is_the_same_person(start, town: Town) -> None:
    city = await start(town)
    first = voter("voter-7")
    head, claims, signature = first.split(".")
    raw = unb64(signature)
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    twin = f"{head}.{claims}.{b64(r + (N - s).to_bytes(32, 'big'))}"
    assert twin != first
    jwt.decode(twin, VOTERS.public_key(), algorithms=["ES256"], issuer=VOTERS_ISSUER)
    status, _, a, _ = await post(city.base, cred=first, to=wallet_key())
    status2, _, b, _ = await post(city.base, cred=twin, to=wallet_key())
    assert (status, status2) == (201, 201)
    assert a["X-Farebox-Payout"] == b["X-Farebox-Payout"]
    assert len(await city.ledger.payouts()) == 1


async def test_the_same_sub_from_two_registers_is_two_people(start, town: Town) -> None:
    """Once per (iss, sub): a `sub` is unique within its issuer only (RFC 7519),
    so the residents' "alex" and the voters' "alex" are two participants."""
    city = await start(town)
    _, _, a, _ = await post(city.base, cred=credential("alex"), to=wallet_key())
    _, _, b, _ = await post(city.base, cred=voter("alex"), to=wallet_key())
    assert a["X-Farebox-Payout"] != b["X-Farebox-Payout"]
    assert len(await city.ledger.payouts()) == 2


async def test_two_registers_subjects_never_share_a_payout(start, town: Town) -> None:
    unpinned = "description: issuer not pinned"
    city = await start(town, voters_issuer_line=unpinned, residents_issuer_line=unpinned)
    claims = {"sub": "42", "exp": int(time.time()) + 600}  # no iss: none is asked for
    resident = jwt.encode(claims, REGISTER, algorithm="EdDSA")
    voter_42 = jwt.encode(claims, VOTERS, algorithm="ES256")
    _, _, first, _ = await post(city.base, cred=resident, to=wallet_key())
    status, _, second, _ = await post(city.base, cred=voter_42, to=wallet_key())
    assert status == 201 and first["X-Farebox-Reward"] == "500"
    assert second.get("X-Farebox-Payout") != first["X-Farebox-Payout"]
    assert len(await city.ledger.payouts()) == 2


async def test_the_ledger_id_does_not_give_the_subject_away(start, town: Town) -> None:
    city = await start(town)
    await post(city.base, cred=credential("resident-04217"), to=wallet_key())
    digest = (await one(city)).id.partition(":")[2]
    found = None
    for n in range(100_000):
        guess = f"resident-{n:05d}"
        if hashlib.sha256(f"{ISSUER}|{guess}".encode()).hexdigest()[:32] == digest:
            found = guess
            break
    assert found is None, f"the ledger id names {found}"


async def test_neither_credential_nor_recipient_reach_the_upstream(start, town: Town) -> None:
    city = await start(town)
    key = wallet_key()
    cred = credential("resident-2")
    await post(
        city.base,
        cred=cred,
        to=key,
        headers=[("x-farebox-eligibility", cred), ("Connection", "X-Farebox-Payout-To")],
    )
    (seen,) = town.seen
    # Only the participant's digest (X-Farebox-Participant) is Farebox's to send.
    text = json.dumps(seen).lower().replace("x-farebox-participant", "")
    assert cred.lower() not in text and key not in text and "farebox" not in text


# --- recipients ----------------------------------------------------------------------------


async def test_recipient_spellings_are_normalised_or_refused_clearly(start, town: Town) -> None:
    city = await start(town, services={"payout_network": "main"})
    key = PrivateKey().public_key().hex()
    status, _, _, _ = await post(city.base, cred=credential("upper"), to="  " + key.upper() + "\t")
    assert status == 201
    assert (await city.ledger.payouts())[0].recipient == key
    mainnet = PrivateKey().public_key().address()
    testnet = PrivateKey().public_key().address(network=__import__("bsv").Network.TESTNET)
    status, _, _, _ = await post(city.base, cred=credential("main"), to=mainnet)
    assert status == 201
    for n, bad in enumerate(
        [
            testnet,  # another network than the gateway pays on
            "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",  # P2SH
            "0x" + key,
            key[:-1],
            key + "00",
            "02" + "ff" * 32,  # x beyond the field: no point
            f"{key}, {wallet_key()}",  # two in one header
            "\u0660" * 66,  # Arabic-Indic digits are digits, not hex
        ]
    ):
        status, body, _, _ = await post(city.base, cred=credential(f"bad-{n}"), to=bad)
        assert (status, body["reason"]) == (400, "payout-recipient-invalid"), bad
    assert len(town.seen) == 2


async def test_a_devnet_takes_either_network_and_arc_its_own() -> None:
    assert payout_network(SimpleNamespace(devnet_url="http://d", watch_network="main")) is None
    assert payout_network(SimpleNamespace(devnet_url=None, watch_network="test")) == "test"


async def test_two_payout_to_headers_take_the_first_and_leak_neither(start, town: Town) -> None:
    city = await start(town)
    first, second = wallet_key(), wallet_key()
    status, _, _, _ = await post(
        city.base,
        cred=credential(),
        headers=[("X-Farebox-Payout-To", first), ("X-Farebox-Payout-To", second)],
    )
    assert status == 201
    assert (await one(city)).recipient == first
    text = json.dumps(town.seen)
    assert first not in text and second not in text


async def test_a_recipient_header_with_raw_bytes_is_a_clear_400(start, town: Town) -> None:
    city = await start(town)
    status, body = await raw_request(
        city.base,
        "/consult/surveys/park/responses",
        "POST",
        f"X-Farebox-Eligibility: {credential()}\r\n"
        f"X-Farebox-Payout-To: 02{'ab' * 31}\udcff\udcfe\r\nContent-Length: 0\r\n",
    )
    assert status == 400 and json.loads(body)["reason"] == "payout-recipient-invalid"
    assert town.seen == []


async def test_a_brc103_client_is_paid_to_its_identity_key(start, town: Town) -> None:
    city = await start(
        town,
        services={
            "server_key": PAID_SERVER.public_key().hex(),
            "peers": Authenticator(PAID_SERVER, MemoryStore(), limit=64 * 1024),
        },
    )
    client = Client(city.base)
    await client.handshake()
    answer = await client.request(
        "POST",
        "/consult/surveys/park/responses",
        {"X-Farebox-Eligibility": credential("peer"), "Content-Type": "application/json"},
        b'{"answer": "benches"}',
    )
    assert answer.status == 201, answer.body
    assert answer.headers["x-farebox-reward"] == "500"
    assert (await one(city)).recipient == client.identity
    (seen,) = town.seen
    assert client.identity not in json.dumps(seen)


# --- methods -------------------------------------------------------------------------------


async def test_methods_the_route_does_not_offer_never_reach_the_reward(start, town: Town) -> None:
    city = await start(town)
    for method in ("PUT", "DELETE", "PATCH"):
        status, body, headers, _ = await post(
            city.base, cred=credential(), to=wallet_key(), method=method
        )
        assert (status, body["reason"]) == (405, "method-not-allowed"), method
        assert "POST" in headers["Allow"]
    # GET too: the path's own route answers, not the catch-all `/**`.
    status, body, _, _ = await post(city.base, cred=credential(), to=wallet_key(), method="GET")
    assert (status, body["reason"]) == (405, "method-not-allowed")
    assert town.seen == []
    assert await city.ledger.payouts() == []
    assert "farebox" not in json.dumps(town.seen).lower()


@pytest.mark.parametrize("methods", ["[GET, HEAD]", "'*'", "[POST, OPTIONS]"])
async def test_a_reward_route_that_reads_or_preflights_is_refused_by_the_policy(
    start, town: Town, methods: str
) -> None:
    # A HEAD (the default methods are GET, HEAD) or an OPTIONS the upstream's
    # framework answers on its own would be owed the reward: nothing was taken
    # part in. Such a route is refused when the policy loads.
    from gateway.policy import PolicyError

    with pytest.raises(PolicyError, match="a reward is for taking part"):
        await start(town, notice_methods=methods)


async def test_a_cors_preflight_is_not_a_500(start, town: Town) -> None:
    city = await start(town)
    async with (
        aiohttp.ClientSession() as http,
        http.options(
            city.base + "/consult/surveys/park/responses",
            headers={
                "Origin": "https://elsewhere.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-farebox-eligibility",
            },
        ) as r,
    ):
        assert r.status == 405 and (await r.json(content_type=None))["reason"]
    assert await city.ledger.payouts() == []


async def test_a_large_body_is_proxied_after_the_checks(start, town: Town) -> None:
    city = await start(town)
    big = {"answer": "x" * (3 << 20)}
    status, body, _, _ = await post(city.base, cred=None, to=wallet_key(), answer=big)
    assert (status, body["reason"]) == (403, "eligibility-required") and town.seen == []
    status, _, headers, _ = await post(city.base, cred=credential(), to=wallet_key(), answer=big)
    assert status == 201 and headers["X-Farebox-Reward"] == "500"


async def test_without_a_payout_ledger_nothing_is_proxied(start, town: Town) -> None:
    city = await start(town, no_ledger=True)
    status, body, _, _ = await post(city.base, cred=credential(), to=wallet_key())
    assert (status, body["reason"]) == (503, "rewards-off") and town.seen == []


async def test_a_fiat_reward_without_a_rate_is_a_503_and_nothing_is_proxied(
    start, town: Town
) -> None:
    city = await start(town, pays="{eur_cents: 5}")
    status, body, headers, _ = await post(city.base, cred=credential(), to=wallet_key())
    assert (status, body["reason"]) == (503, "price-unavailable")
    assert "Retry-After" in headers
    assert town.seen == [] and await city.ledger.payouts() == []


async def test_a_fiat_reward_is_converted_once_and_kept(start, town: Town) -> None:
    rates = FixedRates({"EUR": Decimal("40")})
    city = await start(
        town, pays="{eur_cents: 5}", total=10**6, per_day=10**6, services={"rates": rates}
    )
    _, _, headers, _ = await post(
        city.base, cred=credential(), to=wallet_key(), answer={"status": 503}
    )
    rates.per_bsv["EUR"] = Decimal("20")  # the rate moves while it is reserved
    _, _, headers, _ = await post(city.base, cred=credential(), to=wallet_key())
    assert headers["X-Farebox-Reward"] == "125000"  # 5 cents at 40 EUR/BSV, as reserved
    assert (await one(city)).satoshis == 125000


# --- what the upstream answers -------------------------------------------------------------


@pytest.mark.parametrize("status", [201, 422, 503])
async def test_an_upstream_cannot_forge_the_reward_headers(start, town: Town, status: int) -> None:
    city = await start(town)
    got, _, _, pairs = await post(
        city.base, cred=credential(), to=wallet_key(), answer={"forge": 1, "status": status}
    )
    assert got == status
    names = [(k.lower(), v) for k, v in pairs]
    assert ("x-farebox-payout-to", FORGED["X-Farebox-Payout-To"]) not in names
    rewards_ = [v for k, v in names if k == "x-farebox-reward"]
    payouts_ = [v for k, v in names if k == "x-farebox-payout"]
    if status == 201:
        assert rewards_ == ["500"] and len(payouts_) == 1
        assert payouts_[0].startswith(city.base + "/.well-known/farebox/payouts/park-2027/")
    else:
        assert rewards_ == [] and payouts_ == []


async def test_an_upstream_cannot_forge_on_an_exhausted_budget(start, town: Town) -> None:
    city = await start(town, total=500, per_day=500)
    await post(city.base, cred=credential("first"), to=wallet_key())
    _, _, _, pairs = await post(
        city.base, cred=credential("second"), to=wallet_key(), answer={"forge": 1}
    )
    names = [(k.lower(), v) for k, v in pairs]
    assert [v for k, v in names if k == "x-farebox-reward"] == ["0; budget-exhausted"]
    assert [v for k, v in names if k == "x-farebox-payout"] == []


async def test_the_rewarded_answer_is_private_and_not_stored(start, town: Town) -> None:
    city = await start(town)
    _, _, _, pairs = await post(city.base, cred=credential(), to=wallet_key(), answer={"cache": 1})
    controls = [v.lower() for k, v in pairs if k.lower() == "cache-control"]
    assert controls == ["private, no-store"]


async def test_the_rewarded_answer_keeps_no_shared_cache_override(start, town: Town) -> None:
    city = await start(town)
    _, _, headers, _ = await post(
        city.base, cred=credential(), to=wallet_key(), answer={"cache": 1}
    )
    assert "X-Farebox-Payout" in headers
    kept = {k.lower() for k in headers} & {
        "cdn-cache-control",
        "surrogate-control",
        "x-accel-expires",
    }
    assert kept == set()


async def test_an_exhausted_answer_is_not_stored_either(start, town: Town) -> None:
    city = await start(town, total=500, per_day=500)
    await post(city.base, cred=credential("first"), to=wallet_key())
    _, _, _, pairs = await post(
        city.base, cred=credential("second"), to=wallet_key(), answer={"cache": 1}
    )
    controls = ", ".join(v.lower() for k, v in pairs if k.lower() == "cache-control")
    assert "no-store" in controls


async def test_a_client_that_hangs_up_is_still_owed_and_reads_it_again(start, town: Town) -> None:
    city = await start(town)
    cred = credential("impatient")
    with pytest.raises(asyncio.TimeoutError):
        await post(city.base, cred=cred, to=wallet_key(), answer={"sleep": 1}, timeout=0.3)
    for _ in range(40):
        found = await city.ledger.payouts()
        if found and found[0].status == "owed":
            break
        await asyncio.sleep(0.05)
    payout = await one(city)
    assert payout.status == "owed"  # the upstream recorded the answer: it is owed
    status, _, headers, _ = await post(city.base, cred=cred, to=wallet_key())
    assert status == 201 and headers["X-Farebox-Payout"].endswith("/" + payout.ticket)
    assert len(await city.ledger.payouts()) == 1


async def test_an_upstream_timeout_keeps_the_reservation_and_a_resend_settles_it(
    start, town: Town
) -> None:
    city = await start(town, read_timeout=0.3, total=500, per_day=500)
    cred = credential("late")
    status, body, headers, _ = await post(
        city.base, cred=cred, to=wallet_key(), answer={"sleep": 1}
    )
    assert (status, body["reason"]) == (504, "upstream-timeout")
    assert "X-Farebox-Payout" not in headers
    assert (await one(city)).status == "reserved"
    # The budget is held for it: nobody else takes it meanwhile.
    status, _, headers, _ = await post(city.base, cred=credential("other"), to=wallet_key())
    assert headers["X-Farebox-Reward"] == "0; budget-exhausted"
    status, _, headers, _ = await post(city.base, cred=cred, to=wallet_key())
    assert status == 201 and headers["X-Farebox-Reward"] == "500"
    assert (await one(city)).status == "owed"


async def test_an_unreachable_upstream_keeps_the_reservation(start, town: Town) -> None:
    city = await start(town)
    city.rewrite(policy_text("http://127.0.0.1:9"))
    status, body, _, _ = await post(city.base, cred=credential(), to=wallet_key())
    assert (status, body["reason"]) == (502, "upstream-unreachable")
    assert (await one(city)).status == "reserved"


async def test_a_double_submission_refused_as_duplicate_loses_no_reward(start, town: Town) -> None:
    city = await start(town)
    cred, key = credential("double-click"), wallet_key()
    first = asyncio.ensure_future(post(city.base, cred=cred, to=key, answer={"sleep": 1}))
    for _ in range(100):  # the first copy is reserved and waiting on the upstream
        if await city.ledger.payouts(status="reserved"):
            break
        await asyncio.sleep(0.01)
    status, _, _, _ = await post(city.base, cred=cred, to=key, answer={"status": 409})
    assert status == 409
    status, _, headers, _ = await first
    assert status == 201 and headers["X-Farebox-Reward"] == "500"
    found, payout = await get(headers["X-Farebox-Payout"])
    assert found == 200 and payout["status"] == "owed"
    assert await city.ledger.spent(CAMPAIGN, today()) == (PAYS, PAYS)


async def test_a_redirect_after_post_does_not_hold_the_budget_for_ever(start, town: Town) -> None:
    city = await start(town)
    for _ in range(2):
        status, _, _, _ = await post(
            city.base, cred=credential("form"), to=wallet_key(), answer={"status": 303}
        )
        assert status == 303
    # Only a 2xx owes a reward (the README says so): a 303 gives the budget back.
    assert await city.ledger.payouts() == []
    assert await city.ledger.spent(CAMPAIGN, today()) == (0, 0)


async def test_an_upstream_4xx_gives_the_budget_back_and_a_5xx_holds_it(start, town: Town) -> None:
    city = await start(town, total=1000, per_day=1000)
    await post(city.base, cred=credential("a"), to=wallet_key(), answer={"status": 400})
    assert await city.ledger.payouts() == []
    assert await city.ledger.spent(CAMPAIGN, today()) == (0, 0)
    await post(city.base, cred=credential("b"), to=wallet_key(), answer={"status": 500})
    assert (await one(city)).status == "reserved"
    assert await city.ledger.spent(CAMPAIGN, today()) == (PAYS, PAYS)


# --- budgets, races and clocks -------------------------------------------------------------


async def test_twenty_submissions_at_once_by_one_person_owe_one_reward(start, town: Town) -> None:
    city = await start(town)
    cred = credential("eager")
    results = await asyncio.gather(
        *(post(city.base, cred=cred, to=wallet_key(), answer={"sleep": 0.05}) for _ in range(20))
    )
    assert {r[0] for r in results} == {201}
    assert len({r[2]["X-Farebox-Payout"] for r in results}) == 1
    assert (await one(city)).status == "owed"
    assert await city.ledger.spent(CAMPAIGN, today()) == (PAYS, PAYS)


async def test_participants_racing_the_last_satoshis_never_pass_the_budget(
    start, town: Town
) -> None:
    city = await start(town, total=7 * PAYS + 499, per_day=7 * PAYS + 499, when="refuse")
    results = await asyncio.gather(
        *(
            post(city.base, cred=credential(f"p{n}"), to=wallet_key(), answer={"sleep": 0.02})
            for n in range(30)
        )
    )
    statuses = sorted(r[0] for r in results)
    assert statuses == [201] * 7 + [403] * 23
    assert len(town.seen) == 7  # refused ones never reached the upstream
    tally = await city.ledger.tally()
    assert tally.counts == {"owed": 7} and tally.satoshis == {"owed": 7 * PAYS}


class Clock:
    """A stand-in for the `time` module in gateway.pipeline.rewards."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def gmtime(self, seconds: float | None = None) -> time.struct_time:
        return time.gmtime(self.now if seconds is None else seconds)

    def strftime(self, fmt: str, moment: time.struct_time) -> str:
        return time.strftime(fmt, moment)


async def test_the_day_budget_starts_again_at_utc_midnight(
    start, town: Town, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(1_900_000_000 - 1_900_000_000 % 86400 - 1)  # 23:59:59 UTC
    monkeypatch.setattr(rewards, "time", clock)
    city = await start(town, total=1000, per_day=500)
    _, _, headers, _ = await post(city.base, cred=credential("d1"), to=wallet_key())
    assert headers["X-Farebox-Reward"] == "500"
    _, _, headers, _ = await post(city.base, cred=credential("d2"), to=wallet_key())
    assert headers["X-Farebox-Reward"] == "0; budget-exhausted"
    clock.now += 1  # 00:00:00
    _, _, headers, _ = await post(city.base, cred=credential("d2"), to=wallet_key())
    assert headers["X-Farebox-Reward"] == "500"
    _, _, headers, _ = await post(city.base, cred=credential("d3"), to=wallet_key())
    assert headers["X-Farebox-Reward"] == "0; budget-exhausted"  # the total is spent


async def test_a_reservation_is_given_back_to_the_day_it_was_charged_to(
    start, town: Town, monkeypatch: pytest.MonkeyPatch
) -> None:
    city = await start(town, total=100_000, per_day=500)
    _, _, headers, _ = await post(city.base, cred=credential("p1"), to=wallet_key())
    assert headers["X-Farebox-Reward"] == "500"  # today's budget is spent
    # The gateway's clock already says tomorrow (midnight passed between
    # computing the day and the ledger recording the reservation, or the
    # gateway runs ahead of Redis): p2's reservation is charged to tomorrow...
    clock = Clock(time.time() + 86400)
    monkeypatch.setattr(rewards, "time", clock)
    await post(city.base, cred=credential("p2"), to=wallet_key(), answer={"status": 503})
    # ...and when its resend is refused, given back to today.
    await post(city.base, cred=credential("p2"), to=wallet_key(), answer={"status": 422})
    monkeypatch.undo()
    _, _, headers, _ = await post(city.base, cred=credential("p3"), to=wallet_key())
    owed_today = [p for p in await city.ledger.payouts() if p.status == "owed"]
    assert headers["X-Farebox-Reward"] == "0; budget-exhausted", owed_today
    assert sum(p.satoshis for p in owed_today) <= 500


async def test_a_reload_changing_the_amount_keeps_what_was_reserved(start, town: Town) -> None:
    city = await start(town, total=2000, per_day=2000)
    await post(city.base, cred=credential("held"), to=wallet_key(), answer={"status": 503})
    city.rewrite(policy_text(town.url, pays=800, total=2000, per_day=2000))
    _, _, headers, _ = await post(city.base, cred=credential("held"), to=wallet_key())
    assert headers["X-Farebox-Reward"] == "500"  # as reserved
    _, _, headers, _ = await post(city.base, cred=credential("new"), to=wallet_key())
    assert headers["X-Farebox-Reward"] == "800"
    owed = await city.ledger.payouts(status="owed")
    assert sorted(p.satoshis for p in owed) == [500, 800]
    assert await city.ledger.spent(CAMPAIGN, today()) == (1300, 1300)
    # A reload lowering the total below what is spent closes it.
    city.rewrite(policy_text(town.url, pays=800, total=1000, per_day=1000, when="refuse"))
    status, body, _, _ = await post(city.base, cred=credential("late"), to=wallet_key())
    assert (status, body["reason"]) == (403, "reward-budget-exhausted")
    # One already owed still reads the same payout, though the budget is spent.
    status, _, headers, _ = await post(city.base, cred=credential("held"), to=wallet_key())
    assert status == 201 and headers["X-Farebox-Reward"] == "500"


async def test_a_busy_sqlite_ledger_is_a_503_not_a_500(start, town: Town, tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "busy.db", exclusive=False)
    ledger._db.execute("PRAGMA busy_timeout=200")
    city = await start(town, ledger=ledger)
    blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        status, body, _, _ = await post(city.base, cred=credential(), to=wallet_key())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        await ledger.close()
    assert town.seen == []
    assert (status, body["reason"]) == (503, "store-unavailable")


class FlakyOwe:
    """The ledger, but its first owe() finds the store gone."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def owe(self, payout_id: str) -> Any:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("redis went away")
        return await self.inner.owe(payout_id)


async def test_a_reward_announced_to_the_client_is_owed(start, town: Town, tmp_path: Path) -> None:
    inner = open_ledger(tmp_path / "flaky.db", exclusive=False)
    city = await start(town, ledger=FlakyOwe(inner))
    try:
        status, _, headers, _ = await post(city.base, cred=credential(), to=wallet_key())
        if status == 201:
            assert headers["X-Farebox-Reward"] == "500"
            _, payout = await get(headers["X-Farebox-Payout"])
            assert payout["status"] == "owed"
        else:  # refusing to announce it is fine too, if nothing is claimed
            assert "X-Farebox-Payout" not in headers
    finally:
        await inner.close()


# --- the payout URL ------------------------------------------------------------------------


async def test_the_payout_url_answers_only_its_exact_self(start, town: Town) -> None:
    city = await start(town)
    _, _, headers, _ = await post(city.base, cred=credential(), to=wallet_key())
    url = headers["X-Farebox-Payout"]
    path = url.removeprefix(city.base)
    prefix, campaign, digest, ticket = path.rsplit("/", 3)
    assert (await raw_request(city.base, path))[0] == 200
    same = [
        f"{prefix}/{campaign}/x/../{digest}/{ticket}",  # dot segments resolved first
        f"{prefix}/{campaign}//{digest}/{ticket}",  # empty segments collapsed
        f"{prefix}/{campaign}/{digest}/%{ord(ticket[0]):02X}{ticket[1:]}",  # unreserved escape
    ]
    for target in same:
        status, body = await raw_request(city.base, target)
        assert status == 200 and json.loads(body)["status"] == "owed", target
    wrong = [
        path + "/",
        path + "x",
        f"{prefix}/{campaign}/{digest}",
        f"{prefix}/{campaign}/{digest}/{ticket}/{ticket}",
        f"{prefix}/notices-2027/{digest}/{ticket}",
        f"{prefix}/{campaign}:{digest}/x/{ticket}",
        f"{prefix}/{campaign}/{digest}/{ticket.swapcase()}",
        f"{prefix}/{campaign}/{digest}/{'A' * 200}",
        f"{prefix}/{campaign}/{digest.upper()}/{ticket}",
        f"{prefix}/{campaign}/{digest}/%00{ticket}",
        f"{prefix}/{campaign}/{digest}%2F{ticket}",
        f"{prefix}/{campaign}/{digest}/{ticket}%2F",
    ]
    for target in wrong:
        status, body = await raw_request(city.base, target)
        assert status in (400, 404), (target, status)
        reason = json.loads(body)["reason"]
        assert status == 400 or reason == "no-payout", (target, reason)
    # Dot segments above it leave the payouts altogether: no route, never it.
    status, body = await raw_request(
        city.base, f"{prefix}/../../consult/{campaign}/{digest}/{ticket}"
    )
    assert status == 404 and b"owed" not in body
    async with aiohttp.ClientSession() as http, http.post(url) as r:
        assert r.status == 405 and (await r.json(content_type=None))["reason"]


async def test_the_payout_url_is_not_cacheable_and_names_no_subject(start, town: Town) -> None:
    city = await start(town)
    _, _, headers, _ = await post(city.base, cred=credential("resident-77"), to=wallet_key())
    async with aiohttp.ClientSession() as http, http.get(headers["X-Farebox-Payout"]) as r:
        assert r.headers["Cache-Control"] == "no-store"
        text = await r.text()
    assert "resident-77" not in text and ISSUER not in text


async def test_the_engine_pays_only_what_is_owed_and_the_report_names_no_one(
    start, town: Town, tmp_path: Path
) -> None:
    runner, chain = await start_devnet("127.0.0.1", 0)
    devnet = f"http://127.0.0.1:{runner.addresses[0][1]}"
    broadcaster = ArcBroadcaster(devnet)
    try:
        treasury = Wallet.create(tmp_path / "treasury.json")
        await fund(treasury, 10_000, devnet)
        city = await start(town, services={"treasury": treasury.path})
        address = PrivateKey().public_key().address()  # a mainnet address: a devnet pays any
        _, _, paid, _ = await post(city.base, cred=credential("resident-42"), to=address)
        held_key = wallet_key()
        await post(city.base, cred=credential("held"), to=held_key, answer={"status": 503})
        engine = PayoutRunner(city.ledger, treasury.path, broadcaster, interval=0, batch_size=10)
        report = await engine.tick()
        assert report is not None and report.payouts == 1
        assert (await engine.tick()).payouts == 0  # every round looks; nothing more to pay
        statuses = {p.recipient: p.status for p in await city.ledger.payouts()}
        assert statuses == {address: "seen", held_key: "reserved"}
        _, payout = await get(paid["X-Farebox-Payout"])
        script = "76a914" + decode_address(address)[0].hex() + "88ac"
        outputs = chain.unspent_by_script(bytes.fromhex(script))
        assert [(t, v, s) for t, v, s, _ in outputs] == [(payout["txid"], payout["vout"], PAYS)]
        assert payout.get("internalizeAction") is None  # an address needs no derivation data
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{city.base}/.well-known/farebox/transparency?format=json") as r:
                text = await r.text()
            async with http.get(
                f"{city.base}/.well-known/farebox/transparency", headers={"Accept": "text/html"}
            ) as r:
                text += await r.text()
        for secret in (address, script[6:-4], "resident-42", held_key, payout["recipient"]):
            assert secret not in text
        status, money, _ = await admin_get(city, "/treasury")
        assert status == 200 and money["owed_satoshis"] == PAYS  # the reserved one
    finally:
        await broadcaster.close()
        await runner.cleanup()


# --- the admin API -------------------------------------------------------------------------


async def admin_get(city: City, query: str) -> tuple[int, Any, dict[str, str]]:
    side = web.AppRunner(admin.app(city.services, "t0ken-t0ken-t0ken"), access_log=None)
    await side.setup()
    await web.TCPSite(side, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{side.addresses[0][1]}"
    try:
        async with (
            aiohttp.ClientSession(headers={"Authorization": "Bearer t0ken-t0ken-t0ken"}) as http,
            http.get(base + query) as r,
        ):
            text = await r.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return r.status, body, dict(r.headers)
    finally:
        await side.cleanup()


@pytest.mark.parametrize(
    ("query", "status", "check"),
    [
        ("/payouts?limit=0", 400, "bad-query"),
        ("/payouts?limit=-5", 400, "bad-query"),
        ("/payouts?limit=abc", 400, "bad-query"),
        ("/payouts?limit=1e3", 400, "bad-query"),
        ("/payouts?limit=99999999999999999999999", 200, 2),
        ("/payouts?limit=1", 200, 1),
        ("/payouts?status=", 200, 2),
        ("/payouts?status=OWED", 400, "bad-query"),
        ("/payouts?status=owed", 200, 1),
        ("/payouts?status=reserved", 200, 1),
        ("/payouts?campaign=nope", 200, 0),
        ("/payouts?format=xml", 400, "bad-query"),
        ("/payouts?format=", 400, "bad-query"),
        ("/treasury", 404, "no-treasury"),
    ],
)
async def test_admin_payouts_queries_answer_clearly(
    start, town: Town, query: str, status: int, check: Any
) -> None:
    city = await start(town)
    await post(city.base, cred=credential("a"), to=wallet_key())
    await post(city.base, cred=credential("b"), to=wallet_key(), answer={"status": 502})
    got, body, _ = await admin_get(city, query)
    assert got == status, body
    if isinstance(check, str):
        assert body["reason"] == check
    else:
        assert len(body["payouts"]) == check


async def test_admin_payouts_csv_has_no_ticket(start, town: Town) -> None:
    city = await start(town)
    _, _, headers, _ = await post(city.base, cred=credential("a"), to=wallet_key())
    ticket = headers["X-Farebox-Payout"].rsplit("/", 1)[1]
    for query in ("/payouts?format=csv", "/payouts"):
        status, body, _ = await admin_get(city, query)
        assert status == 200 and ticket not in json.dumps(body)


# --- nginx auth_request --------------------------------------------------------------------


async def test_auth_request_hands_every_rewarded_request_to_farebox(start, town: Town) -> None:
    city = await start(town)
    cases = [
        [("X-Farebox-Eligibility", credential()), ("X-Farebox-Payout-To", wallet_key())],
        [],  # no credential: Farebox answers the 403 itself
        [("X-Farebox-Eligibility", "junk")],
    ]
    async with aiohttp.ClientSession() as http:
        for extra in cases:
            headers = [
                ("X-Original-URI", "/consult/surveys/park/responses"),
                ("X-Original-Method", "POST"),
                *extra,
            ]
            async with http.get(city.base + "/.well-known/farebox/auth", headers=headers) as r:
                assert r.status == 401, extra
                assert "X-Farebox-Payout" not in r.headers
        # A free route beside it: let through.
        headers = [
            ("X-Original-URI", "/consult/surveys/park"),
            ("X-Original-Method", "GET"),
        ]
        async with http.get(city.base + "/.well-known/farebox/auth", headers=headers) as r:
            assert r.status == 204
    assert town.seen == [] and await city.ledger.payouts() == []


# --- Redis: several gateways, one budget ---------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with running(server):
        yield server


@pytest.fixture
async def shared(redis_server: RedisServer) -> AsyncIterator[Any]:
    """(store, ledger) on a fresh key prefix of the module's Redis."""
    prefix = f"adv{time.monotonic_ns()}:"
    stores: list[RedisStore] = []

    async def make() -> tuple[RedisStore, RedisLedger]:
        store = RedisStore.from_url(redis_server.url, prefix=prefix)
        stores.append(store)
        return store, await RedisLedger.open(store)

    yield make
    for store in stores:
        await store.close()


async def test_on_redis_one_person_at_once_on_two_gateways_is_paid_once(
    start, town: Town, shared: Any
) -> None:
    store_a, ledger_a = await shared()
    store_b, ledger_b = await shared()
    a = await start(town, store=store_a, ledger=ledger_a, folder="a")
    b = await start(town, store=store_b, ledger=ledger_b, folder="b")
    cred = credential("eager")
    results = await asyncio.gather(
        *(post(g.base, cred=cred, to=wallet_key(), answer={"sleep": 0.05}) for g in [a, b] * 10)
    )
    assert {r[0] for r in results} == {201}
    # One payout, whichever gateway answered (each names it on its own origin).
    assert len({r[2]["X-Farebox-Payout"].split("/.well-known")[1] for r in results}) == 1
    assert (await ledger_a.tally()).counts == {"owed": 1}
    assert await ledger_b.spent(CAMPAIGN, today()) == (PAYS, PAYS)


async def test_on_redis_participants_racing_the_last_satoshis_never_pass_it(
    start, town: Town, shared: Any
) -> None:
    store_a, ledger_a = await shared()
    store_b, ledger_b = await shared()
    budget = {"total": 5 * PAYS + 250, "per_day": 5 * PAYS + 250}
    a = await start(town, store=store_a, ledger=ledger_a, folder="a", **budget)
    b = await start(town, store=store_b, ledger=ledger_b, folder="b", **budget)
    results = await asyncio.gather(
        *(
            post(g.base, cred=credential(f"p{n}"), to=wallet_key(), answer={"sleep": 0.02})
            for n, g in enumerate([a, b] * 15)
        )
    )
    paid = [r for r in results if r[2].get("X-Farebox-Reward") == "500"]
    unpaid = [r for r in results if r[2].get("X-Farebox-Reward") == "0; budget-exhausted"]
    assert (len(paid), len(unpaid)) == (5, 25)
    tally = await ledger_a.tally()
    assert tally.counts == {"owed": 5} and tally.satoshis == {"owed": 5 * PAYS}
    assert await ledger_a.spent(CAMPAIGN, today()) == (5 * PAYS, 5 * PAYS)


async def test_on_redis_a_4xx_gives_back_and_a_resend_is_paid_once(
    start, town: Town, shared: Any
) -> None:
    store, ledger = await shared()
    city = await start(town, store=store, ledger=ledger, total=500, per_day=500)
    cred = credential("x")
    await post(city.base, cred=cred, to=wallet_key(), answer={"status": 503})
    assert [p.status for p in await ledger.payouts()] == ["reserved"]
    # A resend refused (422: a duplicate? a bad answer?) did not make the
    # reservation: the first may have been recorded, so it stays held.
    await post(city.base, cred=cred, to=wallet_key(), answer={"status": 422})
    assert [p.status for p in await ledger.payouts()] == ["reserved"]
    assert await ledger.spent(CAMPAIGN, today()) == (500, 500)
    _, _, headers, _ = await post(city.base, cred=cred, to=wallet_key())
    assert headers["X-Farebox-Reward"] == "500"
    assert (await ledger.tally()).counts == {"owed": 1}


async def test_with_redis_gone_a_rewarded_request_is_a_503_and_not_proxied(
    start, town: Town, tmp_path: Path
) -> None:
    need_redis()
    server = RedisServer(tmp_path / "gone")
    server.start()
    store = RedisStore.from_url(server.url, prefix="gone:", timeout=0.5)
    try:
        ledger = await RedisLedger.open(store)
        city = await start(town, store=store, ledger=ledger)
        server.stop()
        status, body, headers, _ = await post(city.base, cred=credential(), to=wallet_key())
        assert (status, body["reason"]) == (503, "store-unavailable")
        assert "Retry-After" in headers
        assert town.seen == []
    finally:
        server.stop()
        await store.close()
