"""Access tokens: minted, verified, rotated, and every forgery refused."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path

import jwt
import pytest

from gateway.tokens import ACCESS, LEEWAY, UPSTREAM, Grant, KeyRing, Tokens, new_grant_id


def grant(**overrides) -> Grant:
    values = dict(
        id=new_grant_id(), service="archive", scope="/archive/records/7", covers="resource",
        methods=("GET", "HEAD"), expires=int(time.time()) + 300, txid="ab" * 32, satoshis=25, payer="cd" * 16,
    )  # fmt: skip
    values.update(overrides)
    return Grant(**values)


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens(KeyRing.load(tmp_path / "ring"))


def test_round_trip_and_scope(tokens: Tokens) -> None:
    g = grant()
    verified, header = tokens.verify(tokens.mint(g))
    assert verified == g
    assert verified.allows("archive", "GET", "/archive/records/7", "/archive/records/{id}")
    assert not verified.allows("archive", "GET", "/archive/records/8", "/archive/records/{id}")
    assert not verified.allows("archive", "POST", "/archive/records/7", "/archive/records/{id}")
    assert not verified.allows("opendata", "GET", "/archive/records/7", "/archive/records/{id}")
    claims = jwt.decode(header, options={"verify_signature": False}, audience=UPSTREAM)
    assert claims["aud"] == UPSTREAM and claims["txid"] == g.txid


def test_route_grant_covers_every_resource_of_the_route(tokens: Tokens) -> None:
    g = grant(scope="/datasets/**", covers="route")
    verified, _ = tokens.verify(tokens.mint(g))
    assert verified.allows("archive", "GET", "/datasets/a/b", "/datasets/**")
    assert not verified.allows("archive", "GET", "/other", "/other/**")


def test_expired_token_refused(tokens: Tokens) -> None:
    # Expired beyond the clock leeway (tests/test_clock_skew.py covers within it).
    assert tokens.verify(tokens.mint(grant(expires=int(time.time()) - LEEWAY - 1))) is None


def test_cached_token_expires_too(tokens: Tokens, monkeypatch) -> None:
    token = tokens.mint(grant(expires=int(time.time()) + 2))
    assert tokens.verify(token) is not None
    monkeypatch.setattr(time, "time", lambda: 10**10)
    assert tokens.verify(token) is None


def test_tampered_token_refused(tokens: Tokens) -> None:
    head, body, sig = tokens.mint(grant()).split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["scope"] = "/archive/**"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert tokens.verify(f"{head}.{forged_body}.{sig}") is None
    assert tokens.verify(f"{head}.{body}.{sig[:-4]}AAAA") is None


def test_alg_none_and_hmac_confusion_refused(tokens: Tokens) -> None:
    g = grant()
    claims = jwt.decode(tokens.mint(g), options={"verify_signature": False}, audience=ACCESS)
    kid = tokens.ring.active
    none = jwt.encode(claims, None, algorithm="none", headers={"kid": kid})
    assert tokens.verify(none) is None
    # HS256 keyed with the (public!) JWK x value: the classic confusion attack.
    x = tokens.ring.jwks()["keys"][0]["x"]
    hmac = jwt.encode(claims, x, algorithm="HS256", headers={"kid": kid})
    assert tokens.verify(hmac) is None


def test_wrong_key_and_upstream_audience_refused(tokens: Tokens, tmp_path: Path) -> None:
    other = Tokens(KeyRing.load(tmp_path / "other"))
    assert tokens.verify(other.mint(grant())) is None
    # A grant header leaked by an upstream is not an access token.
    assert tokens.verify(tokens.upstream_header(grant())) is None
    for junk in ("", "abc", "a.b.c", "x" * 5000):
        assert tokens.verify(junk) is None


def test_rotation_keeps_old_tokens_valid(tmp_path: Path) -> None:
    folder = tmp_path / "ring"
    first = Tokens(KeyRing.load(folder))
    old = first.mint(grant())
    time.sleep(0.01)
    new_kid = KeyRing.add_key(folder)
    rotated = Tokens(KeyRing.load(folder))
    assert rotated.ring.active == new_kid
    assert rotated.verify(old) is not None
    assert jwt.get_unverified_header(rotated.mint(grant()))["kid"] == new_kid
    assert {k["kid"] for k in rotated.ring.jwks()["keys"]} == {first.ring.active, new_kid}


def test_upstream_can_verify_with_jwks(tokens: Tokens) -> None:
    header = tokens.upstream_header(grant())
    jwks = jwt.PyJWKSet.from_dict(tokens.ring.jwks())
    kid = jwt.get_unverified_header(header)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(header, key.key, algorithms=["EdDSA"], audience=UPSTREAM)
    assert claims["svc"] == "archive"


def test_key_files_are_private(tmp_path: Path) -> None:
    KeyRing.load(tmp_path / "ring")
    assert (tmp_path / "ring").stat().st_mode & 0o077 == 0
    for pem in (tmp_path / "ring").glob("*.pem"):
        assert pem.stat().st_mode & 0o077 == 0


def test_a_token_minted_here_is_known_with_its_statement(tmp_path) -> None:
    tokens = Tokens(KeyRing.load(tmp_path), cache_size=2)
    grant = Grant(new_grant_id(), "svc", "/svc/a", "resource", ("GET",), int(time.time()) + 60,
                  "ab" * 32, 5, "cd" * 16)  # fmt: skip
    token = tokens.mint(grant)
    upstream = tokens.upstream_header_minted(token, grant)
    assert tokens.known(token) and tokens.verify(token) == (grant, upstream)
    assert (
        jwt.decode(upstream, options={"verify_signature": False}, audience=UPSTREAM)["jti"]
        == grant.id
    )
    for _ in range(2):  # bounded as any verified token
        more = dataclasses.replace(grant, id=new_grant_id())
        other = tokens.mint(more)
        tokens.upstream_header_minted(other, more)
    assert not tokens.known(token)
    tokens.reload(tmp_path)  # a reloaded ring forgets what it knew
    assert not tokens.known(other)


# --- refusals: cheap, remembered, and the same as PyJWT's -------------------------


def pyjwt_opens(tokens: Tokens, token: str) -> bool:
    """Whether PyJWT alone (no shortcut of ours) opens `token` as an access token."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = tokens.ring.public.get(kid) if isinstance(kid, str) else None
        if key is None:
            return False
        jwt.decode(
            token, key, algorithms=["EdDSA"], audience=ACCESS, issuer="farebox", leeway=LEEWAY,
            options={"require": ["exp", "aud", "iss", "iat", "jti"]},
        )  # fmt: skip
    except (jwt.PyJWTError, UnicodeError, ValueError):
        return False
    return True


def test_a_token_refused_once_is_refused_again_without_reading_it(
    tokens: Tokens, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client keeps sending its expired token until it pays again: the second
    refusal must not cost what the first did (PyJWT reads every character)."""
    expired = tokens.mint(grant(expires=int(time.time()) - LEEWAY - 1))
    forged = tokens.mint(grant())[:-6] + "AAAAAA"
    foreign = Tokens(KeyRing.load(tmp_path / "other")).mint(grant())
    for token in (expired, forged, foreign, "x" * 600):
        assert tokens.verify(token) is None
    decoded: list[str] = []
    real = jwt.decode
    monkeypatch.setattr(
        jwt, "decode", lambda token, *a, **k: decoded.append(token) or real(token, *a, **k)
    )
    for token in (expired, forged, foreign, "x" * 600):
        assert tokens.verify(token) is None
        assert tokens.not_yet_valid(token) is None
    assert decoded == []
    valid = tokens.mint(grant())
    tokens._cache.clear()
    assert tokens.verify(valid) is not None and decoded == [valid]


def test_a_forged_signature_is_refused_before_pyjwt_reads_the_token(
    tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("PyJWT was asked about a token whose signature fails")

    monkeypatch.setattr(jwt, "decode", never)
    head, body, _ = tokens.mint(grant()).split(".")
    other = tokens.mint(grant(scope="/archive/**")).split(".")[2]
    assert tokens.verify(f"{head}.{body}.{other}") is None  # a signature of another token
    assert tokens.verify(f"{head}.{body}.{other}!") is None  # outside the alphabet


def test_a_key_brought_by_a_reload_opens_tokens_refused_before_it(tmp_path: Path) -> None:
    """Another instance rotated first and minted with its new key: refused here
    (an unknown kid) until this instance reloads the ring, then opened."""
    folder = tmp_path / "ring"
    here = Tokens(KeyRing.load(folder))
    time.sleep(0.01)
    KeyRing.add_key(folder)
    elsewhere = Tokens(KeyRing.load(folder))
    token = elsewhere.mint(grant())
    assert here.verify(token) is None
    assert not here.issued_here(token)
    here.reload(folder)
    assert here.verify(token) is not None
    assert here.issued_here(token)


def test_refusals_kept_are_bounded(tokens: Tokens, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.tokens as module

    monkeypatch.setattr(module, "_REFUSED_KEPT", 8)
    for n in range(20):
        assert tokens.verify(f"junk{n}") is None
    assert tokens.verify("x" * 5000) is None  # longer than kept refusals go
    assert len(tokens._refused) == 8 and "x" * 5000 not in tokens._refused
