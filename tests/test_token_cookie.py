"""The token's Set-Cookie: written straight for a JWT, exactly as http.cookies
writes it (RFC 6265 section 4.1), for any scope, lifetime and Secure flag."""

from __future__ import annotations

from http.cookies import SimpleCookie

from hypothesis import given
from hypothesis import strategies as st

from gateway.payments.cashier import Accepted
from gateway.pipeline.credentials import COOKIE, TOKEN_HEADER, cookie_path, token_headers
from gateway.tokens import Grant

_B64URL = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1)
_SEGMENT = st.text(
    st.characters(codec="utf-8", exclude_characters="/;\r\n\x00"), min_size=0, max_size=12
)


def expected_cookie(token: str, grant: Grant, secure: bool, now: int) -> str:
    jar: SimpleCookie = SimpleCookie()
    jar[COOKIE] = token
    morsel = jar[COOKIE]
    morsel["path"] = cookie_path(grant)
    morsel["max-age"] = str(max(0, grant.expires - now))
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    if secure:
        morsel["secure"] = True
    return morsel.OutputString()


def _accepted(token: str, scope: str, covers: str, expires: int) -> Accepted:
    grant = Grant("g" * 32, "svc", scope, covers, ("GET",), expires, "ab" * 32, 10, "cd" * 16)
    return Accepted(grant, token, None, False)  # type: ignore[arg-type]


@given(
    segments=st.lists(_B64URL, min_size=3, max_size=3),
    path=st.lists(_SEGMENT, min_size=1, max_size=4),
    covers=st.sampled_from(["resource", "route"]),
    lifetime=st.integers(-100, 10**7),
    secure=st.booleans(),
)
def test_a_jwt_cookie_is_what_http_cookies_writes(
    segments: list[str], path: list[str], covers: str, lifetime: int, secure: bool
) -> None:
    token = ".".join(segments)
    now = 1_800_000_000
    accepted = _accepted(token, "/" + "/".join(path), covers, now + lifetime)
    headers = token_headers(accepted, secure=secure, now=now)
    assert headers[TOKEN_HEADER] == token
    assert headers["Set-Cookie"] == expected_cookie(token, accepted.grant, secure, now)


@given(token=st.text(st.characters(codec="ascii", exclude_characters="\r\n"), min_size=1))
def test_any_other_token_is_quoted_as_http_cookies_quotes_it(token: str) -> None:
    accepted = _accepted(token, "/a/{id}/b", "route", 1_800_000_060)
    headers = token_headers(accepted, secure=True, now=1_800_000_000)
    assert headers["Set-Cookie"] == expected_cookie(token, accepted.grant, True, 1_800_000_000)
