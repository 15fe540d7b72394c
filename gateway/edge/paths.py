"""Canonical request targets.

Policy matching and upstream forwarding must see the *same* path, or a request
could be priced as one resource and served as another (`/free/..%2fpaid`).
`canonicalize` turns a raw HTTP request target into one normal form:

- `path`: percent-decoded, dot segments resolved, empty segments collapsed;
  this is what policies match against;
- `forward`: that same path re-encoded with one fixed rule; this is what the
  upstream receives, so it decodes to exactly `path`.

Input that different servers read differently is refused rather than guessed:
encoded slashes and backslashes (some upstreams treat them as separators),
`;` path parameters (Tomcat and friends strip them), control characters, NUL,
malformed percent-escapes, invalid UTF-8 and dot segments above the root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

# RFC 3986 pchar without ';' (refused) and '%' (always re-encoded).
_SAFE = "!$&'()*+,=:@~"
# A path made only of these characters, with no '//' and no '/.', is already
# canonical: the common case skips the slow path entirely.
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_HEX_PAIR = re.compile(rb"[0-9A-Fa-f]{2}")


class PathError(ValueError):
    """A request target Farebox refuses (answered with 400)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # decoded canonical path, matched against policies
    forward: str  # the same path, canonically encoded, sent upstream
    query: str  # raw query string (without '?'), passed through untouched


def canonicalize(raw: str) -> Target:
    """Return the canonical form of a raw origin-form request target."""
    path, _, query = raw.partition("?")
    if not path.startswith("/"):
        raise PathError("not-origin-form", "request target must start with '/'")
    if _PLAIN.fullmatch(path) and "//" not in path and "/." not in path:
        return Target(path, path, query)
    try:
        segments = _resolve(_decode_segments(path))
        trailing = path.endswith("/") or _ends_with_dot_segment(path)
    except UnicodeEncodeError:  # a lone surrogate: no bytes a client could have sent
        raise PathError("invalid-utf8", "path is not valid UTF-8") from None
    decoded = "/" + "/".join(segments)
    forward = "/" + "/".join(quote(s, safe=_SAFE) for s in segments)
    if trailing and segments:
        decoded += "/"
        forward += "/"
    return Target(decoded, forward, query)


def _decode_segments(path: str) -> list[str]:
    # Raw bytes: aiohttp hands non-ASCII octets over as surrogate escapes.
    raw = path.encode("utf-8", "surrogateescape")
    if b"#" in raw:
        raise PathError("fragment", "request target must not contain '#'")
    if b"\\" in raw:
        raise PathError("backslash", "backslash in path")
    segments = []
    for part in raw.split(b"/")[1:]:
        data = _unquote(part)
        if b"/" in data:
            raise PathError("encoded-slash", "encoded '/' (%2F) in path")
        if b"\\" in data:
            raise PathError("backslash", "encoded backslash (%5C) in path")
        if b";" in data:
            raise PathError("path-parameter", "';' path parameters are not accepted")
        if _CONTROL.search(data):
            raise PathError("control-character", "NUL or control character in path")
        try:
            segments.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise PathError("invalid-utf8", "path is not valid UTF-8") from None
    return segments


def _unquote(part: bytes) -> bytes:
    if b"%" not in part:
        return part
    out = bytearray()
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        if c == 0x25:  # '%'
            pair = part[i + 1 : i + 3]
            # int(..., 16) alone would accept " f", "+f" and "_f".
            if not _HEX_PAIR.fullmatch(pair):
                raise PathError("invalid-percent-encoding", "malformed %-escape in path")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _resolve(segments: list[str]) -> list[str]:
    out: list[str] = []
    rfc: list[str] = []  # RFC 3986 section 5.2.4 keeps empty segments ('//')
    for seg in segments:
        if seg == ".":
            continue
        if seg == "..":
            if rfc:
                rfc.pop()
            if not out:
                raise PathError("escapes-root", "'..' climbs above the root")
            out.pop()
            continue
        rfc.append(seg)
        if seg:
            out.append(seg)
    if [s for s in rfc if s] != out:
        # '/a//../b' is /b here but /a/b to RFC 3986 and WHATWG resolvers (an
        # upstream behind nginx auth_request may be one): no one normal form.
        raise PathError("ambiguous-dot-segment", "'..' after an empty segment ('//') is ambiguous")
    return out


def _ends_with_dot_segment(path: str) -> bool:
    last = path.rsplit("/", 1)[-1]
    return _unquote(last.encode("utf-8", "surrogateescape")).decode("latin-1") in (".", "..")
