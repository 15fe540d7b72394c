"""Tokens attacked: the shortcuts before PyJWT (the kid read from the header, the
signature checked first, refusals kept) open exactly what PyJWT alone opens,
recognise every token of ours, and never turn a valid token away for good."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import time
import tracemalloc
from pathlib import Path

import jwt
import jwt.api_jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.tokens as module
from gateway.payments import checkout as checkout_mod
from gateway.tokens import ACCESS, LEEWAY, KeyRing, Tokens, unverified_kid
from tests.test_tokens import grant, pyjwt_opens


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens(KeyRing.load(tmp_path / "ring"))


def old_issued_here(tokens: Tokens, token: str) -> bool:
    """issued_here as PyJWT alone answers it (what it was before the shortcut)."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return False
    return isinstance(kid, str) and kid in tokens.ring.public


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- not yet valid: never kept refused --------------------------------------------


def test_a_token_not_yet_valid_is_not_kept_refused_and_opens_later(
    tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 300)  # the minting clock runs ahead
    token = tokens.mint(grant(expires=int(now) + 3600))
    monkeypatch.setattr(time, "time", real)
    for _ in range(3):
        assert tokens.verify(token) is None
        assert tokens.not_yet_valid(token) is not None
    assert token not in tokens._refused
    tokens._early.clear()  # pushed out of the bounded cache of early tokens
    assert tokens.verify(token) is None
    assert token not in tokens._refused and tokens.not_yet_valid(token) is not None
    monkeypatch.setattr(time, "time", lambda: real() + 300)
    assert tokens.verify(token) is not None


def test_a_token_not_yet_valid_by_nbf_is_not_kept_refused(tokens: Tokens) -> None:
    claims = {
        "sub": "cd" * 16, "jti": "j1", "iat": int(time.time()), "nbf": int(time.time()) + 300,
        "exp": int(time.time()) + 3600, "svc": "archive", "scope": "/a", "covers": "resource",
        "methods": ["GET"], "txid": "ab" * 32, "sats": 1,
    }  # fmt: skip
    token = tokens.sign_claims(claims, ACCESS)
    assert tokens.verify(token) is None
    assert tokens.not_yet_valid(token) is not None
    assert token not in tokens._refused


# --- expiry at the LEEWAY boundary ------------------------------------------------


class _Frozen(dt.datetime):
    at: float = 0.0

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
        return dt.datetime.fromtimestamp(cls.at, tz)


@pytest.mark.parametrize("offset", [-0.5, 0.0, 0.5])
def test_expiry_at_the_leeway_boundary_agrees_with_pyjwt_and_the_cache(
    tokens: Tokens, monkeypatch: pytest.MonkeyPatch, offset: float
) -> None:
    exp = int(time.time()) + 100
    token = tokens.mint(grant(expires=exp))
    now = exp + LEEWAY + offset
    _Frozen.at = now
    monkeypatch.setattr(jwt.api_jwt, "datetime", _Frozen)
    monkeypatch.setattr(time, "time", lambda: now)
    expected = pyjwt_opens(tokens, token)
    assert expected == (offset < 0)
    assert (tokens.verify(token) is not None) == expected
    assert (tokens.verify(token) is not None) == expected


# --- a clock stepped back: an expired refusal is kept for good ---------------------


def test_a_refusal_made_while_the_clock_ran_ahead_does_not_outlive_the_clock(
    tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NTP steps a clock that ran an hour ahead back: tokens refused as expired
    meanwhile open again, as PyJWT (and the cache of verified tokens, which
    checks the time on every hit) opens them."""
    token = tokens.mint(grant(expires=int(time.time()) + 600))
    ahead = time.time() + 3600
    _Frozen.at = ahead
    with monkeypatch.context() as m:
        m.setattr(jwt.api_jwt, "datetime", _Frozen)
        m.setattr(time, "time", lambda: ahead)
        assert tokens.verify(token) is None
    assert pyjwt_opens(tokens, token)
    assert tokens.verify(token) is not None, "kept refused though valid now"


# --- memory: 'a few MB' ------------------------------------------------------------


def test_refusals_kept_hold_about_ten_mib_at_most(tokens: Tokens) -> None:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(module._REFUSED_KEPT + 10):
        tokens.verify(f"{n:08d}" + "x" * (module._REFUSED_LENGTH - 8))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(tokens._refused) == module._REFUSED_KEPT
    assert held < 12 * 2**20, f"{held / 2**20:.1f} MiB held by refused junk"


# --- issued_here: every token of ours still recognised ----------------------------


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_issued_here_recognises_all_that_it_did(tokens: Tokens, data: st.DataObject) -> None:
    good = tokens.mint(grant())
    parts = good.split(".")
    kind = data.draw(st.sampled_from(["char", "cut", "pad", "odd", "tail", "header"]))
    if kind == "char":
        i = data.draw(st.integers(0, len(good) - 1))
        token = good[:i] + data.draw(st.characters()) + good[i + 1 :]
    elif kind == "cut":
        token = good[: data.draw(st.integers(0, len(good)))]
    elif kind == "pad":
        i = data.draw(st.integers(0, 2))
        parts[i] += "=" * data.draw(st.integers(1, 4))
        token = ".".join(parts)
    elif kind == "odd":
        i = data.draw(st.integers(0, len(good)))
        token = good[:i] + data.draw(st.text(min_size=1, max_size=3)) + good[i:]
    elif kind == "tail":
        token = good + data.draw(st.sampled_from([".", ".x", "..", " x", "\x00", "\udcff"]))
    else:
        fields = data.draw(
            st.dictionaries(
                st.sampled_from(["kid", "alg", "typ", "crit", "b64", "x"]),
                st.one_of(
                    st.text(max_size=20), st.integers(), st.none(), st.booleans(),
                    st.just(tokens.ring.active), st.lists(st.text(max_size=3), max_size=2),
                ),
            )
        )  # fmt: skip
        parts[0] = b64(json.dumps(fields).encode())
        token = ".".join(parts)
    try:
        old = old_issued_here(tokens, token)
    except (UnicodeError, ValueError):
        old = False  # it raised: a 500, not a strip
    if old:
        assert tokens.issued_here(token), token


def test_a_long_header_naming_our_kid_is_no_longer_ours(tokens: Tokens) -> None:
    """issued_here before: True (PyJWT reads any header); now False, so such a
    token passes to a free route's upstream. Only forged tokens have such a
    header (ours are ~80 characters), so this leaks nothing of ours."""
    _, body, sig = tokens.mint(grant()).split(".")
    header = b64(json.dumps({"alg": "EdDSA", "kid": tokens.ring.active, "pad": "p" * 900}).encode())
    token = f"{header}.{body}.{sig}"
    assert old_issued_here(tokens, token)
    assert not tokens.issued_here(token)


@pytest.mark.parametrize(
    "header",
    [
        b"[1,2]", b'"kid"', b"null", b'{"kid": 5}', b'{"kid": ["x"]}', b"{", b"\xff\xfe",
        b'{"kid": "\\ud800"}', b"[" * 700 + b"]" * 700,
    ],
)  # fmt: skip
def test_odd_headers_are_refused_without_raising(tokens: Tokens, header: bytes) -> None:
    token = f"{b64(header)}.e30.AAAA"
    assert unverified_kid(token) in (None, "\ud800")
    assert not tokens.issued_here(token)
    assert tokens.verify(token) is None
    assert tokens.read_claims(token, ACCESS) is None


def test_deep_header_under_a_deep_stack_does_not_raise(tokens: Tokens) -> None:
    """A 1024-character header of nested arrays (768 '[') parsed deep in a call
    stack: refused (RecursionError caught, as PyJWT's _load catches it), not raised."""
    header = b64(b"[" * 760 + b"]" * 760)[: module._HEADER_LENGTH]
    token = f"{header}.e30.AAAA"

    def deep(n: int) -> object:
        return deep(n - 1) if n else tokens.verify(token)

    limit = sys.getrecursionlimit()
    assert deep(limit - 300) is None


# --- checkout tickets ----------------------------------------------------------------


def test_checkout_tickets_read_as_before(tokens: Tokens) -> None:
    now = int(time.time())
    claims = {"jti": "c1", "svc": "s", "res": "/r", "m": "GET", "sats": 5, "iat_ms": now * 1000,
              "iat": now, "exp": now - LEEWAY - 5}  # fmt: skip
    ticket = tokens.sign_claims(claims, checkout_mod.AUDIENCE)
    assert checkout_mod.read_ticket(tokens, ticket) is None
    assert checkout_mod.read_ticket(tokens, ticket, allow_expired=True) is not None
    assert tokens.verify(ticket) is None  # not an access token
    head, body, sig = ticket.split(".")
    forged = sig[:-6] + ("AAAAAA" if not sig.endswith("AAAAAA") else "BBBBBA")
    assert checkout_mod.read_ticket(tokens, f"{head}.{body}.{forged}", allow_expired=True) is None
    # a ticket refused as an access token is still read as a ticket
    assert checkout_mod.read_ticket(tokens, ticket, allow_expired=True) is not None


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_verify_agrees_with_pyjwt_over_wider_mutations(tokens: Tokens, data: st.DataObject) -> None:
    good = tokens.mint(grant())
    parts = good.split(".")
    kind = data.draw(st.sampled_from(["char", "odd", "tail", "pad", "header", "sigbits"]))
    if kind == "char":
        i = data.draw(st.integers(0, len(good) - 1))
        token = good[:i] + data.draw(st.characters()) + good[i + 1 :]
    elif kind == "odd":
        i = data.draw(st.integers(0, len(good)))
        token = good[:i] + data.draw(st.text(min_size=1, max_size=3)) + good[i:]
    elif kind == "tail":
        token = good + data.draw(st.sampled_from([".", ".x", "=", "==", "===", " ", "\n"]))
    elif kind == "pad":
        i = data.draw(st.integers(0, 2))
        parts[i] += "=" * data.draw(st.integers(1, 4))
        token = ".".join(parts)
    elif kind == "sigbits":  # the last character's unused low bits (non-canonical base64)
        c = parts[2][-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        i = alphabet.index(c)
        parts[2] = parts[2][:-1] + alphabet[i ^ data.draw(st.integers(1, 3))]
        token = ".".join(parts)
    else:
        fields = json.loads(base64.urlsafe_b64decode(parts[0] + "=="))
        fields.update(
            data.draw(
                st.dictionaries(
                    st.sampled_from(["crit", "b64", "alg", "typ", "jku"]),
                    st.one_of(
                        st.just(["b64"]),
                        st.booleans(),
                        st.just("EdDSA"),
                        st.just("none"),
                        st.text(max_size=4),
                    ),
                )
            )
        )
        parts[0] = b64(json.dumps(fields).encode())
        token = ".".join(parts)  # header changed: the signature no longer holds anyway
    assert (tokens.verify(token) is not None) == pyjwt_opens(tokens, token), token
    assert (tokens.verify(token) is not None) == pyjwt_opens(tokens, token), token
