"""Concessions: a valid eligibility credential lowers the price; anything else is ignored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from bsv import PrivateKey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.payments.cashier import Cashier
from gateway.policy import PolicyError, load_policy
from gateway.policy.concessions import Eligibility
from gateway.pricing import concessions as pricing_concessions
from gateway.pricing.concessions import verified
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
    assert "p.yaml:2:3: concessions.a: cannot read" in text and "missing.json" in text
    assert "routes[0].concessions: unknown concession 'c'" in text
    assert "routes[1].concessions: a free route has nothing to discount" in text


def test_a_concession_needs_exactly_one_key_source(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("concessions:\n  b: {discount: 10}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert "p.yaml:2:3: concessions.b: give exactly one of issuer_key" in str(info.value)


def test_a_route_concession_must_give_a_discount_or_a_quota(tmp_path: Path) -> None:
    # Without either, a concession only proves eligibility (for a reward's
    # `requires`): a priced route listing it would give nothing, and says so.
    (tmp_path / "k.json").write_text(json.dumps(jwks(AGENCY)))
    (tmp_path / "p.yaml").write_text(
        "concessions:\n  b: {issuer_jwks: k.json}\n"
        "services:\n  s:\n    upstream: http://127.0.0.1:9\n    routes:\n"
        "      - {path: /x, price: 10, concessions: [b]}\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert "concession 'b' gives no discount nor free_quota" in str(info.value)
    (tmp_path / "p.yaml").write_text("concessions:\n  b: {issuer_jwks: k.json}\n")
    assert "b" in load_policy(tmp_path).concessions


# --- credentials that must not count: mismatched algorithms, twins, no one named ------

VETERANS = ec.generate_private_key(ec.SECP256R1())
VETERANS_ISSUER = "https://veterans.example.gov"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
EC_POLICY = """\
concessions:
  veterans:
    free_quota: {{requests: 2, per: 1d}}
    issuer: https://veterans.example.gov
    issuer_key: |
{pem}
services:
  data:
    upstream: {upstream}
    routes:
      - path: /records/{{n}}
        price: 30
        concessions: [veterans]
"""


def pem_of(key) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def indent(pem: str) -> str:
    return "\n".join("      " + line for line in pem.strip().splitlines())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(issuer: str = VETERANS_ISSUER, **extra: object) -> dict:
    return {"iss": issuer, "exp": int(time.time()) + 3600, **extra}


def hs256_with_public_key(payload: dict, pem: str) -> str:
    """HS256 keyed with the issuer's public PEM: the old algorithm-confusion forgery
    (pyjwt will not make it, so it is made by hand)."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(pem.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


def ecdsa_twin(token: str, public_key: ec.EllipticCurvePublicKey) -> str:
    """The same ES256 JWT with signature (r, n - s) instead of (r, s): another text,
    and a signature that verifies as well (ECDSA is malleable; nothing here demands
    low s)."""
    head, body, signature = token.split(".")
    raw = unb64url(signature)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    twin_s = P256_ORDER - s
    public_key.verify(  # raises InvalidSignature if the twin were not valid
        encode_dss_signature(r, twin_s),
        f"{head}.{body}".encode(),
        ec.ECDSA(hashes.SHA256()),
    )
    twin = f"{head}.{body}.{b64url(r.to_bytes(32, 'big') + twin_s.to_bytes(32, 'big'))}"
    assert twin != token
    return twin


@pytest.fixture
async def veterans(gateway, upstream) -> str:
    policy = EC_POLICY.format(upstream=upstream.url, pem=indent(pem_of(VETERANS.public_key())))
    return await gateway(policy)


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P384_KEY = ec.generate_private_key(ec.SECP384R1())


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda c: jwt.encode(c, VETERANS, algorithm="ES256"), id="ES256"),
        pytest.param(lambda c: jwt.encode(c, P384_KEY, algorithm="ES384"), id="ES384"),
        pytest.param(lambda c: jwt.encode(c, RSA_KEY, algorithm="RS256"), id="RS256"),
        pytest.param(lambda c: jwt.encode(c, RSA_KEY, algorithm="PS256"), id="PS256"),
        pytest.param(
            lambda c: hs256_with_public_key(c, pem_of(AGENCY.public_key())), id="HS256-pem"
        ),
    ],
)
async def test_an_algorithm_not_the_issuers_is_ignored_not_a_500(setup, make) -> None:
    # The agency's key is Ed25519: only EdDSA credentials can be its.
    base, _ = setup
    token = make(claims(ISSUER, sub="household-42"))
    status, body = await challenge(base, "/query", with_credential(token))
    assert status == 402 and body["payment"]["price"] == {"satoshis": 100}, body
    status, body = await challenge(base, "/records/1", with_credential(token))  # free quota
    assert status == 402 and body["payment"]["price"] == {"satoshis": 30}, body


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda c: jwt.encode(c, AGENCY, algorithm="EdDSA"), id="EdDSA"),
        pytest.param(lambda c: jwt.encode(c, RSA_KEY, algorithm="RS256"), id="RS256"),
        pytest.param(lambda c: jwt.encode(c, RSA_KEY, algorithm="PS256"), id="PS256"),
        pytest.param(lambda c: jwt.encode(c, P384_KEY, algorithm="ES384"), id="ES384"),
        pytest.param(
            lambda c: hs256_with_public_key(c, pem_of(VETERANS.public_key())), id="HS256-pem"
        ),
    ],
)
async def test_an_algorithm_not_the_ec_issuers_is_ignored_not_a_500(veterans, make) -> None:
    token = make(claims(sub="veteran-1"))
    status, body = await challenge(veterans, "/records/1", with_credential(token))
    assert status == 402 and body["payment"]["price"] == {"satoshis": 30}, body
    # The issuer's own algorithm works: the refusals above are the algorithm's.
    good = with_credential(jwt.encode(claims(sub="veteran-1"), VETERANS, algorithm="ES256"))
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{veterans}/records/1", headers=good) as r,
    ):
        assert r.status == 200


@pytest.mark.parametrize(
    "unique",
    [pytest.param({"sub": "veteran-7"}, id="sub"), pytest.param({"jti": "card-0007"}, id="jti")],
)
async def test_an_ecdsa_twin_shares_its_credentials_quota(veterans, upstream, unique) -> None:
    token = jwt.encode(claims(**unique), VETERANS, algorithm="ES256")
    twin = ecdsa_twin(token, VETERANS.public_key())
    jwt.decode(twin, VETERANS.public_key(), algorithms=["ES256"], issuer=VETERANS_ISSUER)
    async with aiohttp.ClientSession() as http:
        for left, spelling in (("1", token), ("0", twin)):
            async with http.get(f"{veterans}/records/1", headers=with_credential(spelling)) as r:
                assert r.status == 200 and r.headers["RateLimit-Remaining"] == left
        for spelling in (twin, token):  # one quota, used up, whichever text comes
            async with http.get(f"{veterans}/records/2", headers=with_credential(spelling)) as r:
                assert r.status == 402
    assert upstream.paths == ["/records/1", "/records/1"]


async def test_another_credential_id_is_another_quota(veterans) -> None:
    # Without a `sub`, each credential the issuer issues (its `jti`) is a holder.
    async with aiohttp.ClientSession() as http:
        for card in ("card-1", "card-2"):
            token = jwt.encode(claims(jti=card), VETERANS, algorithm="ES256")
            for left in ("1", "0"):
                async with http.get(f"{veterans}/records/1", headers=with_credential(token)) as r:
                    assert r.status == 200 and r.headers["RateLimit-Remaining"] == left


async def test_a_credential_naming_no_one_gets_no_free_quota(veterans) -> None:
    # Neither `sub` nor `jti`: every spelling of it (and every re-issue) would be a
    # new holder, so it holds no quota at all.
    bare = jwt.encode(claims(), VETERANS, algorithm="ES256")
    for spelling in (bare, ecdsa_twin(bare, VETERANS.public_key())):
        status, body = await challenge(veterans, "/records/1", with_credential(spelling))
        assert status == 402 and body["payment"]["price"] == {"satoshis": 30}, body


async def test_a_credential_naming_no_one_still_gets_its_discount(setup) -> None:
    # Eligibility needs no holder: only a free quota is counted per holder.
    base, _ = setup
    anonymous = jwt.encode(claims(ISSUER), AGENCY, algorithm="EdDSA")
    status, body = await challenge(base, "/query", with_credential(anonymous))
    assert status == 402 and body["payment"]["price"]["satoshis"] == 50
    status, body = await challenge(base, "/records/1", with_credential(anonymous))
    assert status == 402 and body["payment"]["price"] == {"satoshis": 30}


def test_an_issuer_key_no_accepted_algorithm_uses_is_a_policy_error(tmp_path: Path) -> None:
    k1 = pem_of(ec.generate_private_key(ec.SECP256K1()).public_key())
    (tmp_path / "secret.jwks.json").write_text(
        json.dumps({"keys": [{"kty": "oct", "k": b64url(b"a shared secret, never a key")}]})
    )
    (tmp_path / "p.yaml").write_text(
        "concessions:\n"
        f"  k1:\n    discount: 10\n    issuer_key: |\n{indent(k1)}\n"
        "  oct: {discount: 10, issuer_jwks: secret.jwks.json}\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    text = str(info.value)
    assert "concessions.k1: issuer_key is not an Ed25519" in text
    assert "concessions.oct: " in text and "has no Ed25519" in text


# --- answers kept: a holder's requests and junk sent again cost a lookup ----------


def agency_concession(key: Ed25519PrivateKey = AGENCY) -> Eligibility:
    return Eligibility("low-income", 50, "", ISSUER, (key.public_key(),))


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every credential handed to PyJWT, in order; nothing kept from other tests."""
    monkeypatch.setattr(pricing_concessions, "_kept", type(pricing_concessions._kept)())
    seen: list[str] = []
    real = jwt.decode

    def counting(token, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


def test_a_credential_is_read_once_while_it_lasts(decodes: list[str]) -> None:
    concession = agency_concession()
    good = credential(expires_in=1)
    first = verified(good, concession)
    assert first is not None and first["sub"] == "household-42"
    first["sub"] = "changed by a caller"  # a copy each time: the kept claims stay
    for _ in range(3):
        again = verified(good, concession)
        assert again is not None and again["sub"] == "household-42"
    assert decodes == [good]
    time.sleep(max(0.0, first["exp"] - time.time()) + 0.05)  # past its exp
    assert verified(good, concession) is None  # asked again: PyJWT refuses it now
    assert verified(good, concession) is None  # and that refusal is kept
    assert decodes == [good, good, good]  # the refusal, then its exp read for how long


def test_refusals_are_kept_but_not_for_a_credential_not_valid_yet(decodes: list[str]) -> None:
    concession = agency_concession()
    forged = credential(Ed25519PrivateKey.generate())
    expired = credential(expires_in=-10)
    foreign = credential(issuer="https://elsewhere.example")
    early = jwt.encode(
        {"iss": ISSUER, "sub": "h", "exp": int(time.time()) + 600, "nbf": int(time.time()) + 300},
        AGENCY,
        algorithm="EdDSA",
    )
    for _ in range(3):
        for token in (forged, expired, foreign, early):
            assert verified(token, concession) is None
    # expired: refused, then read once more for its exp (the refusal holds past it)
    assert decodes == [forged, expired, expired, foreign, early, early, early]


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "not a jwt",
        "a.b",
        "a.b.c.d",
        "!!!.b.c",
        "eyJhbGciOiJub25lIn0.e30.",  # alg none: no concession key uses it
        base64.urlsafe_b64encode(b'{"alg": "HS256"}').decode().rstrip("=") + ".e30.c2ln",
        base64.urlsafe_b64encode(b"[1, 2]").decode().rstrip("=") + ".e30.c2ln",
        "é.b.c",
    ],
)
def test_what_is_not_a_signed_jwt_for_the_issuer_never_reaches_pyjwt(
    decodes: list[str], junk: str
) -> None:
    assert verified(junk, agency_concession()) is None
    assert decodes == []


def test_a_reloaded_concession_with_another_key_is_asked_afresh(decodes: list[str]) -> None:
    """A policy reload makes new concessions: what the old one proved is not theirs."""
    good = credential()
    assert verified(good, agency_concession()) is not None
    rotated = agency_concession(Ed25519PrivateKey.generate())
    assert verified(good, rotated) is None
    assert verified(credential(), agency_concession()) is not None
