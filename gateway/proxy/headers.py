"""Which header fields pass a proxied request and its answer, and how.

Upstream (`upstream_headers`): the client's fields less what is hop-by-hop
(RFC 9110 7.6.1), Farebox's own or a payment's, what overrides the method
or path, names with `_` or `.` (CGI, WSGI and PHP read them as `-`), and
credentials (a bearer token of ours, the credential cookie in any spelling
a parser could read as it); `X-Forwarded-*` set by Farebox. Back
(`response_headers`, `answer_encoded`): the upstream's fields less
hop-by-hop ones and Farebox's own names, `Server` ours; a priced answer
made private to shared caches (`keep_private`, RFC 9111 5.2.2). Pure: no
I/O; names are classified once per spelling, answers once per list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import unquote_plus

from aiohttp import web
from multidict import CIMultiDict

from gateway.edge.forwarded import Network, is_trusted
from gateway.edge.protocol import SERVER
from gateway.policy import Match

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by Farebox for the upstream; a client's own copies would be spoofing.
OWN_HEADERS = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)
# Headers that make frameworks serve another method or path than the one the
# policy decided on (Symfony, Laravel, ASP.NET Core, Express method-override;
# Laminas and IIS URL rewrites), or name the client in ways upstreams trust:
# never forwarded. (A `_method` query parameter is the upstream's to refuse.)
OVERRIDES = frozenset(
    {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        # Who the client is or where it came from: Farebox says so itself
        # (X-Forwarded-For, -Proto, -Host); a client's own word is not passed.
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-scheme",
        "x-forwarded-server",
        "x-host",
    }
)
OWN_PREFIX = "x-farebox-"
# Never forwarded: Farebox's own headers and the client's payment (BRC-121,
# BRC-105 and BRC-104's x-bsv-*; x402's below): a payment names the payer's
# identity key, and one not taken here could be spent by whoever holds it.
PRIVATE_PREFIXES = (OWN_PREFIX, "x-bsv-")
PAYMENT_HEADERS = frozenset({"payment-signature", "x-payment"})  # x402 v2, v1
# The credential cookie (pipeline/credentials.py COOKIE). Kept from the upstream
# in every spelling some parser reads as it: any case, spaces or quotes around
# the name, percent-escapes, PHP's `.`/space/`[` for `_`, `,` as a separator.
CREDENTIAL_COOKIE = "farebox_token"
_PHP_NAME = str.maketrans({".": "_", " ": "_", "[": "_"})
# Priced answers: what a shared cache must not be told (RFC 9111 5.2.2), and
# the fields some caches obey instead of Cache-Control (nginx's X-Accel-Expires
# overrides it; CDN-Cache-Control, RFC 9213, and Surrogate-Control target CDNs).
SHARED_CACHE_DIRECTIVES = frozenset({"public", "s-maxage", "proxy-revalidate"})
CACHE_OVERRIDES = frozenset(
    {"x-accel-expires", "surrogate-control", "cdn-cache-control", "edge-control"}
)
VARY_CREDENTIALS = ("Authorization", "Cookie")
AUTH_VARY = "x-bsv-auth-request-id"
_DIRECTIVE = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*"?)+')
WS_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)


_PASS, _DROP, _LOOK = 1, 2, 3  # what a header's name alone says (see _Kinds)
_CONNECTION, _FORGEABLE, _OVERRIDE = 4, 5, 6  # answers only
_NAMES_KEPT = 4096  # distinct spellings remembered before starting over


class _Kinds(dict[str, int]):
    """Header name -> what the name alone says about passing it on, worked
    out once per spelling by `classify` (names repeat on every request, and
    the checks were most of the cost of passing a header on); bounded."""

    def __init__(self, classify: Callable[[str], int]) -> None:
        super().__init__()
        self.classify = classify

    def __missing__(self, name: str) -> int:
        if len(self) >= _NAMES_KEPT:
            self.clear()
        kind = self[name] = self.classify(name)
        return kind


def _request_kind(name: str) -> int:
    """_PASS, _DROP, or _LOOK (the value or the request decides) for a request header."""
    if not (name.isascii() and name.replace("-", "").isalnum()):
        # '_' or '.' make a twin of a real header to CGI, WSGI and PHP
        # (which turn '-' and '.' into '_'), so a way round what is
        # dropped here; nginx drops such names too by default.
        return _DROP
    lower = name.lower()
    if (
        lower in OVERRIDES
        or lower in PAYMENT_HEADERS
        or lower in HOP_BY_HOP
        or lower in OWN_HEADERS
        or lower.startswith(PRIVATE_PREFIXES)
        or lower == "expect"
    ):
        return _DROP
    if lower in ("host", "cookie", "authorization") or lower in WS_HANDSHAKE:
        return _LOOK
    return _PASS


def upstream_headers(
    request: web.BaseRequest,
    match: Match,
    extra: dict[str, str] | None = None,
    own_token: Callable[[str], bool] | None = None,
    trusted: tuple[Network, ...] = (),
) -> CIMultiDict[str]:
    """The headers sent upstream for `request`: the client's, less what is
    hop-by-hop (RFC 9110 7.6.1), Farebox's or a payment's, what overrides
    the method or path, and credentials; X-Forwarded-* set by Farebox."""
    drop = _connection_listed(request.headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        kind = _REQUEST_KINDS[name]
        if kind == _DROP or (drop and name.lower() in drop):
            continue
        if kind == _LOOK:
            lower = name.lower()
            if lower == "host":
                if not match.service.service.preserve_host:
                    continue
            elif lower == "cookie":
                if _may_name_credential(value):
                    value = without_credential_cookie(value)
                    if not value:
                        continue
            elif lower == "authorization":
                if value[:7].lower() == "bearer " and (
                    not match.route.route.price.free
                    or (own_token is not None and own_token(value[7:].strip()))
                ):
                    # On a priced route a bearer token is ours to check, not
                    # theirs; on a free one a token of ours (a tab's, say) is
                    # a credential the upstream must not receive.
                    continue
            elif is_websocket(request):  # the handshake's own fields: aiohttp redoes them
                continue
        out.add(name, value)
    if trusted and is_trusted(request.remote, trusted):
        # A proxy we trust in front: extend its chain, keep what it said.
        chain = request.headers.get("X-Forwarded-For", "")
        hop = request.remote or ""
        out["X-Forwarded-For"] = f"{chain}, {hop}" if chain else hop
        out["X-Forwarded-Proto"] = request.headers.get("X-Forwarded-Proto", request.scheme)
        out["X-Forwarded-Host"] = request.headers.get("X-Forwarded-Host", request.host)
    else:
        out["X-Forwarded-For"] = request.remote or ""
        out["X-Forwarded-Proto"] = request.scheme
        out["X-Forwarded-Host"] = request.host
    if extra:
        out.update(extra)
    return out


def response_headers(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    return _without_hop_by_hop(headers.items())


def keep_private(headers: CIMultiDict[str]) -> None:
    """Make a priced answer one no shared cache stores, whatever the upstream said.

    `Cache-Control` gets `private` (unless it says `no-store` already) and
    loses `public`, `s-maxage` and `proxy-revalidate`; the rest (`max-age`,
    `no-cache`, validators) stays for the client's own cache. Fields that
    override Cache-Control for some cache (X-Accel-Expires, CDN-Cache-Control,
    Surrogate-Control) are dropped, and `Vary` names the credentials.
    """
    directives: list[str] = []
    private = False
    for value in headers.popall("Cache-Control", ()):
        for found in _DIRECTIVE.finditer(value):
            directive = found.group().strip()
            name, qualified, _ = directive.partition("=")
            name = name.strip().lower()
            if not name or name in SHARED_CACHE_DIRECTIVES:
                continue
            if name in ("private", "no-store"):
                if qualified:  # private="Set-Cookie" covers some fields only
                    continue
                private = True
            directives.append(directive)
    if not private:
        directives.insert(0, "private")
    headers["Cache-Control"] = ", ".join(directives)
    for name in [n for n in headers if _RESPONSE_KINDS[n] == _OVERRIDE]:
        headers.popall(name, None)
    vary = [v.strip() for value in headers.popall("Vary", ()) for v in value.split(",")]
    vary = [v for v in vary if v]
    if "*" not in vary:
        known = {v.lower() for v in vary}
        vary.extend(v for v in VARY_CREDENTIALS if v.lower() not in known)
    headers["Vary"] = ", ".join(vary)


# The upstream's own values are replaced: our request id, and Server (as nginx hides it).
_REPLACED = frozenset({"x-request-id", "server"})
# Headers only Farebox speaks to clients: a token, a charge, a payment
# request. From an upstream they would be forged (a free route's upstream
# asking clients to pay its own key, or a junk token a client keeps instead
# of the one it bought), so they never pass.
_OWN_PREFIXES = ("x-farebox-", "x-bsv-")
_OWN = frozenset({"payment-required", "payment-response", "x-payment-response", "set-cookie"})


def _response_kind(name: str) -> int:
    """_PASS, _DROP, _CONNECTION, _FORGEABLE (one of Farebox's own names: its
    value decides), or _OVERRIDE (overrides Cache-Control for some cache:
    passed, but dropped from priced answers by keep_private)."""
    lower = name.lower()
    if lower == "connection":
        return _CONNECTION
    if lower.startswith(_OWN_PREFIXES):
        return _DROP
    if lower in _OWN:
        return _FORGEABLE
    if lower in HOP_BY_HOP or lower in _REPLACED:
        return _DROP
    if lower in CACHE_OVERRIDES or lower.endswith("-cdn-cache-control"):
        return _OVERRIDE
    return _PASS


_REQUEST_KINDS = _Kinds(_request_kind)
_RESPONSE_KINDS = _Kinds(_response_kind)


def _without_hop_by_hop(pairs: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    listed: list[str] = []
    for name, value in pairs:
        kind = _RESPONSE_KINDS[name]
        if kind in (_PASS, _OVERRIDE):
            out.add(name, value)
        elif kind == _CONNECTION:
            listed.append(value)
        elif kind == _FORGEABLE and not _forged(name.lower(), value):
            out.add(name, value)
    # RFC 9110 7.6.1: headers named in Connection are hop-by-hop too.
    if listed:
        for token in ",".join(listed).split(","):
            if token.strip():
                out.popall(token.strip(), None)
    out["Server"] = SERVER  # as nginx does: the upstream's software is not the client's business
    # A shared cache in front may keep this answer for unsigned clients, never
    # hand it to a BRC-104 signed request (whose answer must be signed for it).
    vary = out.getall("Vary", ())
    if vary:
        out.popall("Vary")
        out["Vary"] = ", ".join((*vary, AUTH_VARY))
    else:
        out["Vary"] = AUTH_VARY
    return out


# The answer headers an upstream's headers become (_without_hop_by_hop, then
# keep_private on priced routes), by the upstream's exact list: a service
# answers with the same headers again and again (a Date changes once a
# second). Copied out, since every answer adds its own.
class Encoded:
    """Answer headers made from an upstream's list, as the lines `_head` would
    write for them, and what `Lane._write` would add to them."""

    __slots__ = ("dated", "headers", "length", "lines", "sound", "typed")

    def __init__(self, headers: CIMultiDict[str]) -> None:
        self.headers = headers
        text = "".join([f"{n}: {v}\r\n" for n, v in headers.items()])
        self.lines = text.encode("utf-8", "surrogateescape")
        # One CR and one LF per line, as `_head` insists (else it refuses to write).
        self.sound = text.count("\n") == len(headers) == text.count("\r")
        self.length = headers.get("Content-Length")  # None: Lane._write adds one
        self.typed = "Content-Type" in headers
        self.dated = "Date" in headers


_answers: dict[tuple[bool, tuple[tuple[str, str], ...]], Encoded] = {}
_ANSWERS_KEPT = 1024


def answer_encoded(pairs: list[tuple[str, str]], priced: bool) -> Encoded:
    """The answer headers for an upstream's `pairs`, made once per list."""
    key = (priced, tuple(pairs))
    made = _answers.get(key)
    if made is None:
        headers = _without_hop_by_hop(pairs)
        if priced:
            keep_private(headers)
        if len(_answers) >= _ANSWERS_KEPT:
            _answers.clear()
        made = _answers[key] = Encoded(headers)
    return made


def answer_headers(pairs: list[tuple[str, str]], priced: bool) -> CIMultiDict[str]:
    """The headers of the answer to the client for an upstream's `pairs`."""
    return answer_encoded(pairs, priced).headers.copy()


def caching(name: str) -> bool:
    """Whether a header Farebox adds to an answer is one keep_private rewrites."""
    return _RESPONSE_KINDS[name] == _OVERRIDE or name.lower() in ("cache-control", "vary")


def _forged(name: str, value: str) -> bool:
    """Whether an upstream's header of a name Farebox also sends must not pass:
    the x402 ones always, a cookie only when it would set Farebox's grant cookie."""
    if name != "set-cookie":
        return True
    return value.lstrip().lower().startswith(CREDENTIAL_COOKIE + "=")


def _connection_listed(headers: CIMultiDict[str]) -> frozenset[str]:
    # RFC 9110 7.6.1: headers named in Connection are hop-by-hop too.
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    # Every Connection field counts: a second one may name what the first did not.
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def is_websocket(request: web.BaseRequest) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _may_name_credential(header: str) -> bool:
    """Cheap test before parsing: could a parser read the credential cookie here?

    Every spelling has "farebox" in some case, or a percent-escape in it.
    """
    return "farebox" in header.lower() or "%" in header


def without_credential_cookie(header: str) -> str:
    """A Cookie header without any pair some parser would read as the credential.

    Pairs are split on `;`; a pair goes whole if any `,`-separated part of it
    (RFC 2965 parsers split there too) names the credential cookie.
    """
    kept = []
    for pair in header.split(";"):
        pair = pair.strip()
        if pair and not any(_names_credential(part) for part in pair.split(",")):
            kept.append(pair)
    return "; ".join(kept)


def _names_credential(part: str) -> bool:
    name = part.partition("=")[0].strip().strip("\"'").strip()
    if "%" in name or "+" in name:
        name = unquote_plus(name, encoding="latin-1").strip()  # PHP decodes names
    name = name.lower()
    # PHP: `farebox.token[x]=T` is $_COOKIE["farebox_token"]["x"].
    base, bracket, _ = name.partition("[")
    return name.translate(_PHP_NAME) == CREDENTIAL_COOKIE or (
        bool(bracket) and base.translate(_PHP_NAME) == CREDENTIAL_COOKIE
    )
