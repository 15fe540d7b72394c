"""Concessions: a valid eligibility credential lowers the price; anything else is ignored."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from bsv import PrivateKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.payments.cashier import Cashier
from gateway.policy import PolicyError, load_policy
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens
from tests.chainkit import Tracker, atomic_beef, pay
from tests.test_paid_access import FakeBroadcaster

SERVER = PrivateKey(0xC0_4C_E5)
AGENCY = Ed25519PrivateKey.generate()
ISSUER = "https://benefits.example.gov"

POLICY = """\
concessions:
  low-income:
    description: Households receiving income support
    discount: 50
    issuer_jwks: agency.jwks.json
    issuer: https://benefits.example.gov
  students:
    discount: 100
    issuer_key: |
{pem}
    issuer: https://benefits.example.gov
  pensioners:
    description: Two free record lookups a day for pension card holders
    free_quota: {{requests: 2, per: 1d}}
    issuer_key: |
{pem}
services:
  data:
    upstream: {upstream}
    tabs: {{top_up: 500}}
    routes:
      - path: /records/{{n}}
        price: 30
        concessions: [pensioners]
      - path: /calls/{{n}}
        price: 10
        meter: {{per: request}}
        concessions: [low-income]
      - path: /query
        price: 100
        concessions: [low-income]
      - path: /course/{{n}}
        price: 40
        concessions: [students, low-income]
"""


def jwks(key: Ed25519PrivateKey) -> dict:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "agency-1"}]}


def credential(
    key: Ed25519PrivateKey = AGENCY,
    *,
    issuer: str = ISSUER,
    expires_in: int = 3600,
    subject: str = "household-42",
) -> str:
    claims = {
        "iss": issuer,
        "sub": subject,
        "exp": int(time.time()) + expires_in,
        "eligible": True,
    }
    return jwt.encode(claims, key, algorithm="EdDSA")


@pytest.fixture
async def setup(gateway, upstream, tmp_path: Path):
    pem = (
        AGENCY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    indented = "\n".join("      " + line for line in pem.strip().splitlines())
    policy = POLICY.format(upstream=upstream.url, pem=indented)
    # The JWKS file sits next to the policy file (paths are relative to it).
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "agency.jwks.json").write_text(json.dumps(jwks(AGENCY)))
    tracker, broadcaster, store = Tracker(), FakeBroadcaster(), MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens)
    base = await gateway(
        policy, server_key=SERVER.public_key().hex(), tokens=tokens, cashier=cashier, store=store
    )
    return base, tracker


async def challenge(
    base: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(base + path, headers=headers) as r:
        body = await r.json(content_type=None)
        return r.status, body


def with_credential(token: str) -> dict[str, str]:
    return {"X-Farebox-Eligibility": token}


async def test_valid_credential_halves_the_price_and_the_challenge_says_so(setup) -> None:
    base, _ = setup
    status, body = await challenge(base, "/query", with_credential(credential()))
    price = body["payment"]["price"]
    assert status == 402 and price["satoshis"] == 50 and price["full_satoshis"] == 100
    assert price["concession"] == {"name": "low-income", "discount_percent": 50}
    # Without a credential the offer is still listed, so people know to ask.
    status, body = await challenge(base, "/query")
    assert body["payment"]["price"] == {"satoshis": 100}
    [offer] = body["payment"]["concessions"]
    assert offer["name"] == "low-income" and offer["discount_percent"] == 50


@pytest.mark.parametrize(
    "bad",
    [
        credential(Ed25519PrivateKey.generate()),  # forged: another key
        credential(expires_in=-10),  # expired
        credential(issuer="https://elsewhere.example"),  # foreign issuer
        jwt.encode({"iss": ISSUER, "exp": int(time.time()) + 60}, None, algorithm="none"),
        "not-a-jwt",
        "",
    ],
)
async def test_bad_credentials_are_ignored(setup, bad: str) -> None:
    base, _ = setup
    status, body = await challenge(base, "/query", with_credential(bad))
    assert status == 402 and body["payment"]["price"] == {"satoshis": 100}


async def test_full_concession_is_served_free_and_best_discount_wins(setup, upstream) -> None:
    base, _ = setup
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/course/1", headers=with_credential(credential())) as r,
    ):
        assert r.status == 200
    seen = {k.lower() for k in upstream.seen[-1].headers}
    assert "x-farebox-eligibility" not in seen  # the credential stays with Farebox


async def test_paying_the_discounted_price(setup) -> None:
    base, tracker = setup
    client = PrivateKey()

    def headers(sats: int) -> dict[str, str]:
        now = str(int(time.time() * 1000))
        p = pay(
            SERVER.public_key(),
            client,
            sats,
            tracker,
            prefix="Y29uYw==",
            suffix=base64.b64encode(now.encode()).decode(),
        )
        return {
            "x-bsv-beef": base64.b64encode(atomic_beef(p.tx)).decode(),
            "x-bsv-sender": client.public_key().hex(),
            "x-bsv-nonce": "Y29uYw==",
            "x-bsv-time": now,
            "x-bsv-vout": "0",
            **with_credential(credential()),
        }

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/query", headers=headers(49)) as r:
            assert r.status == 402 and (await r.json(content_type=None))["reason"] == "underpaid"
        async with http.get(f"{base}/query", headers=headers(50)) as r:
            assert r.status == 200
        # The same 50 without a credential would not do.
        plain = headers(50)
        del plain["X-Farebox-Eligibility"]
        async with http.get(f"{base}/query?again", headers=plain) as r:
            assert r.status == 402 and (await r.json(content_type=None))["reason"] == "underpaid"


async def test_a_concession_free_quota_counts_per_holder(setup, upstream) -> None:
    base, _ = setup
    mine = with_credential(credential())
    async with aiohttp.ClientSession() as http:
        for left in ("1", "0"):
            async with http.get(f"{base}/records/1", headers=mine) as r:
                assert r.status == 200 and r.headers["RateLimit-Remaining"] == left
        async with http.get(f"{base}/records/1", headers=mine) as r:
            assert r.status == 402  # used up: the normal price applies
        # Another holder has a quota of their own; a forged credential has none.
        theirs = with_credential(credential(subject="household-7"))
        async with http.get(f"{base}/records/2", headers=theirs) as r:
            assert r.status == 200
        forged = with_credential(credential(Ed25519PrivateKey.generate(), subject="x"))
        async with http.get(f"{base}/records/3", headers=forged) as r:
            assert r.status == 402
    assert upstream.paths == ["/records/1", "/records/1", "/records/2"]
    assert not any("x-farebox-eligibility" in {k.lower() for k in s.headers} for s in upstream.seen)


async def test_a_discount_lowers_a_metered_unit_price(setup) -> None:
    base, _ = setup
    status, body = await challenge(base, "/calls/1", with_credential(credential()))
    tab = body["payment"]["tab"]
    assert status == 402 and tab["unit_price"] == {
        "satoshis": "5",
        "full_satoshis": "10",
        "concession": {"name": "low-income", "discount_percent": 50},
    }
    status, body = await challenge(base, "/calls/1", with_credential("forged"))
    assert body["payment"]["tab"]["unit_price"] == {"satoshis": "10"}


def test_policy_errors_point_at_concessions(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "concessions:\n"
        "  a: {discount: 10, issuer_jwks: missing.json}\n"
        "services:\n  s:\n    upstream: http://127.0.0.1:1\n    routes:\n"
        "      - {path: /x, price: 5, concessions: [c]}\n"
        "      - {path: /y, price: free, concessions: [a]}\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    text = str(info.value)
    assert "p.yaml:2: concessions.a: cannot read" in text and "missing.json" in text
    assert "routes[0].concessions: unknown concession 'c'" in text
    assert "routes[1].concessions: a free route has nothing to discount" in text


def test_a_concession_needs_exactly_one_key_source(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("concessions:\n  b: {discount: 10}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert "p.yaml:2: concessions.b: give exactly one of issuer_key" in str(info.value)


def test_a_concession_gives_a_discount_or_a_quota(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("concessions:\n  b: {issuer_jwks: k.json}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert "concessions.b: a concession needs a discount (percent) or a free_quota" in str(
        info.value
    )
