"""Concession credentials attacked: the answers `verified` keeps
(pricing/concessions.py) are PyJWT's own, at every moment (exp, iat, nbf,
a clock stepped back), for every key mix, issuer and reload; `verified`
never raises; junk cannot make the kept answers hold more than ~10 MiB.

Most tests compare `verified` with PyJWT alone (`old_verified`, what
`verified` was before answers were kept)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import time
import tracemalloc
import types
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.policy.concessions import Eligibility, algorithms_for
from gateway.policy.schema import Quota
from gateway.pricing import concessions as module
from gateway.pricing.concessions import eligible, free_quota_holder, verified
from tests.test_concessions import (  # noqa: F401  (setup is a fixture)
    AGENCY,
    ISSUER,
    agency_concession,
    challenge,
    credential,
    setup,
    with_credential,
)


def old_verified(credential: str, concession: Eligibility) -> dict[str, Any] | None:
    """`verified` as PyJWT alone answers it (before answers were kept)."""
    options = {"require": ["exp"], "verify_aud": False}
    for key in concession.keys:
        algorithms = list(algorithms_for(key))
        if not algorithms:
            continue
        try:
            claims = jwt.decode(
                credential, key, algorithms=algorithms, issuer=concession.issuer, options=options
            )
        except Exception:
            continue
        if isinstance(claims, dict):
            return claims
    return None


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_kept", type(module._kept)())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def signed(payload_json: str, key: Ed25519PrivateKey = AGENCY, header: dict | None = None) -> str:
    """A credential whose payload is exactly this JSON text (NaN, 1e400, 10**400...)."""
    head = b64(json.dumps(header or {"alg": "EdDSA", "typ": "JWT"}).encode())
    body = b64(payload_json.encode())
    sig = key.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64(sig)}"


class Clock:
    """One clock for both the cache (module.time) and PyJWT (jwt.api_jwt.datetime)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.shift = 0.0
        real = time.time
        clock = self
        monkeypatch.setattr(
            module, "time", types.SimpleNamespace(time=lambda: real() + clock.shift)
        )

        class Shifted(dt.datetime):
            @classmethod
            def now(cls, tz=None):  # type: ignore[override]
                return dt.datetime.fromtimestamp(real() + clock.shift, tz)

        monkeypatch.setattr(jwt.api_jwt, "datetime", Shifted)


# --- 1. exceptions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "exp",
    ["10" + "0" * 400, "1" + "0" * 309, "2e308", "1e400", "NaN", "Infinity", "-Infinity",
     '"4102444800"', "true", "false", "null", "[]", "{}", "4102444800.5", "1e300",
     "-" + "9" * 400],
)  # fmt: skip
def test_exp_of_any_spelling_never_raises_and_agrees_with_pyjwt(exp: str) -> None:
    """Even an exp above float's range (10**309, 10**400), which PyJWT
    accepts (int(exp) compares fine with now): no OverflowError out of
    eligible(), free_quota_holder() or rewards' _credential()."""
    token = signed(f'{{"iss": "{ISSUER}", "sub": "h", "exp": {exp}}}')
    concession = agency_concession()
    want = old_verified(token, concession)
    got = verified(token, concession)  # must not raise
    assert got == want
    assert verified(token, concession) == want


def test_huge_exp_escapes_eligible_and_free_quota_holder() -> None:
    token = signed(f'{{"iss": "{ISSUER}", "sub": "h", "exp": {10**400}}}')
    concession = agency_concession()
    assert old_verified(token, concession) is not None  # PyJWT: valid
    offered = (
        Eligibility("q", 50, "", ISSUER, (AGENCY.public_key(),), Quota(requests=2, per="1d")),
    )
    assert eligible(token, offered) is offered[0]  # raises OverflowError
    assert free_quota_holder(token, offered) is not None


async def test_huge_exp_credential_through_the_gateway(setup) -> None:  # noqa: F811
    """End to end: the issuer-signed credential with exp 10**400 on /query
    (low-income, 50%): a 402 at 50 sats, not a 500."""
    base, _ = setup
    token = signed(f'{{"iss": "{ISSUER}", "sub": "h", "exp": {10**400}}}')
    status, body = await challenge(base, "/query", with_credential(token))
    assert status == 402 and body["payment"]["price"]["satoshis"] == 50, (status, body)


# --- 2. expiry: a fractional exp -----------------------------------------------------


def test_fractional_exp_is_kept_past_pyjwts_expiry() -> None:
    """PyJWT truncates exp (int(exp) <= now: expired): the claims are kept
    until int(exp), not float(exp), so no discount or reward outlives it."""
    now = time.time()
    whole = math.floor(now) + 2
    exp = whole + 0.9
    token = signed(f'{{"iss": "{ISSUER}", "sub": "h", "exp": {exp}}}')
    concession = agency_concession()
    assert verified(token, concession) is not None
    time.sleep(max(0.0, whole + 0.2 - time.time()))
    assert time.time() < exp
    assert old_verified(token, concession) is None  # PyJWT: expired
    assert verified(token, concession) is None, "kept claims of a credential PyJWT refuses"


def test_exact_integer_exp_boundary_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    base = time.time()
    token = credential(expires_in=100)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    concession = agency_concession()
    assert verified(token, concession) is not None
    for at in (exp - 0.001, exp, exp + 0.001):
        clock.shift = at - base - (time.time() - base)
        # PyJWT and the cache at the same (shifted) moment
        assert (verified(token, concession) is None) == (old_verified(token, concession) is None)


# --- 3. clock steps -----------------------------------------------------------------


def test_refusal_of_an_expired_credential_is_asked_again_when_the_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The clock ran 10 minutes ahead, then NTP stepped it back: a refusal
    made as expired is asked again, so the holder is not charged full price
    (or refused a reward) for a credential PyJWT accepts."""
    clock = Clock(monkeypatch)
    token = credential(expires_in=300)
    concession = agency_concession()
    clock.shift = 600
    assert verified(token, concession) is None  # expired by the wrong clock
    clock.shift = 0
    assert old_verified(token, concession) is not None
    assert verified(token, concession) is not None, "refusal kept after the clock stepped back"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_kept_claims_are_not_given_before_nbf_or_iat_when_the_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch, claim: str
) -> None:
    """Clock 10 minutes ahead, credential valid from +5 minutes: verified and
    kept; clock stepped back: PyJWT says not valid yet, and so does the
    cache (no discount before the credential's start)."""
    clock = Clock(monkeypatch)
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "sub": "h", "exp": now + 3600, claim: now + 300}, AGENCY, algorithm="EdDSA"
    )
    concession = agency_concession()
    clock.shift = 600
    assert verified(token, concession) is not None
    clock.shift = 0
    assert old_verified(token, concession) is None  # ImmatureSignatureError
    assert verified(token, concession) is None, "kept claims before nbf/iat"


def test_not_valid_yet_then_valid_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "sub": "h", "exp": now + 3600, "nbf": now + 300}, AGENCY, algorithm="EdDSA"
    )
    concession = agency_concession()
    for shift in (0, 299, 301, 3599, 3601):
        clock.shift = shift
        assert verified(token, concession) == old_verified(token, concession), shift


# --- 4. headers PyJWT accepts that _signed_with refuses ------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"x5c": ["MII" + "A" * 1100]}, id="x5c-chain"),
        pytest.param({"kid": "k" * 800}, id="long-kid"),
    ],
)
def test_a_genuine_credential_with_a_long_header_is_refused(extra: dict) -> None:
    """An issuer that puts its certificate chain (x5c) or a JWK in the header
    (a header segment over 1024 characters): accepted, as PyJWT accepts it."""
    token = jwt.encode(
        {"iss": ISSUER, "sub": "h", "exp": int(time.time()) + 600},
        AGENCY,
        algorithm="EdDSA",
        headers=extra,
    )
    concession = agency_concession()
    assert old_verified(token, concession) is not None
    assert verified(token, concession) is not None


# --- 5. memory under junk -------------------------------------------------------------


def test_memory_held_by_junk_is_bounded() -> None:
    """Junk refusals kept are those PyJWT was asked about (a signed JWT's
    shape for the issuer's algorithm) and at most _REFUSED_LENGTH characters,
    _KEPT of them: about 10 MiB at most. Longer junk, and anything not so
    shaped (non-ASCII: aiohttp makes a 4-byte emoji 4 bytes of str), is
    refused again each time, cheaply, and never kept."""
    concession = agency_concession()
    head = b64(b'{"alg":"EdDSA"}')
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(module._KEPT + 10):
        body = f"{n:08d}".ljust(module._REFUSED_LENGTH - len(head) - 90, "x")
        assert verified(f"{head}.{body}.{'A' * 86}", concession) is None
    for junk in ("x" * 5000, "\U0001f600" * 2000, "\udcff" * 2000):
        assert verified(junk, concession) is None
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(module._kept) == module._KEPT
    assert held < 12 * 2**20, f"{held / 2**20:.1f} MiB held by junk"


# --- 6. what held: keys, issuers, reloads, twins --------------------------------------


def ecdsa_twin(token: str, curve_order: int) -> str:
    head, body, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    half = len(raw) // 2
    r, s = raw[:half], int.from_bytes(raw[half:], "big")
    return f"{head}.{body}.{b64(r + (curve_order - s).to_bytes(half, 'big'))}"


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_mixed_keys_issuers_reloads_and_twins_agree_with_pyjwt() -> None:
    ed = Ed25519PrivateKey.generate()
    ecp = ec.generate_private_key(ec.SECP256R1())
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "h", "exp": now + 600}
    tokens = {
        "ed": jwt.encode(claims, ed, algorithm="EdDSA"),
        "es": jwt.encode(claims, ecp, algorithm="ES256"),
        "rs": jwt.encode(claims, rs, algorithm="RS256"),
        "ps": jwt.encode(claims, rs, algorithm="PS256"),
        "other-iss": jwt.encode({**claims, "iss": "x"}, ed, algorithm="EdDSA"),
        "no-iss": jwt.encode({"sub": "h", "exp": now + 600}, ed, algorithm="EdDSA"),
        "aud": jwt.encode({**claims, "aud": "someone"}, ed, algorithm="EdDSA"),
        "hs": jwt.encode(claims, "secret-secret-secret-secret-secret!", algorithm="HS256"),
    }
    tokens["es-twin"] = ecdsa_twin(tokens["es"], P256_N)
    _, body, sig = tokens["rs"].split(".")
    tokens["rs-named-es"] = b64(b'{"alg":"ES256","typ":"JWT"}') + f".{body}.{sig}"
    tokens["ed-named-rs"] = b64(b'{"alg":"RS256"}') + "." + tokens["ed"].split(".", 1)[1]
    pubs = [ed.public_key(), ecp.public_key(), rs.public_key()]
    concessions = [
        Eligibility("all", 10, "", ISSUER, tuple(pubs)),
        Eligibility("rev", 10, "", ISSUER, tuple(reversed(pubs))),
        Eligibility("ed", 10, "", ISSUER, (ed.public_key(),)),
        Eligibility("rotated", 10, "", ISSUER, (Ed25519PrivateKey.generate().public_key(),)),
        Eligibility("other", 10, "", "https://elsewhere", tuple(pubs)),
        Eligibility("any-iss", 10, "", None, tuple(pubs)),
        Eligibility("none", 10, "", ISSUER, ()),
    ]
    for _ in range(2):  # fresh, then kept
        for name, token in tokens.items():
            for c in concessions:
                assert verified(token, c) == old_verified(token, c), (name, c.name)
    # a "reload": new objects with a rotated key or another issuer
    reloaded = [
        Eligibility("all", 10, "", ISSUER, (Ed25519PrivateKey.generate().public_key(),)),
        Eligibility("ed", 10, "", "https://changed", (ed.public_key(),)),
    ]
    for name, token in tokens.items():
        for c in reloaded:
            assert verified(token, c) == old_verified(token, c) is None, (name, c.name)


@pytest.mark.parametrize(
    "junk",
    [
        "[" * 5000, "a." + "[" * 5000 + ".c", b64(b"[" * 700 + b"]" * 700) + ".e30.AAAA",
        b64(b'{"alg": ["EdDSA"]}') + ".e30.AAAA", b64(b'{"alg": "EdDSA"}') + ".e30.AAAA",
        b64(b'{"alg": "EdDSA"}') + "." + b64(b"[" * 3000) + ".AAAA",
        b64(b'{"alg": "EdDSA"}') + "==.e30.AAAA", "\udcff.\udcff.\udcff",
        b64(b'{"alg": "EdDSA", "n": ' + b"9" * 700 + b"}") + ".e30.AAAA",
        b64('{"alg": "EdDSA"}'.encode("utf-16")) + ".e30.AAAA",
        b64(b'{"alg": "\\ud800"}') + ".e30.AAAA", "." * 3, "..", ".e30.AAAA",
    ],
)  # fmt: skip
def test_junk_never_raises(junk: str) -> None:
    c = agency_concession()
    for _ in range(2):
        assert verified(junk, c) is None
        assert verified(junk, c) == old_verified(junk, c)
