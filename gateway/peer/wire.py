"""The bytes BRC-104 signs: a request or an answer written as one payload.

BRC-104 (bitcoin-sv/BRCs peer-to-peer/0104.md) carries BRC-103 general
messages over plain HTTP: the signature in `x-bsv-auth-signature` covers a
payload rebuilt from the HTTP message itself. Written as @bsv/sdk 2.1.0's
AuthFetch and SimplifiedFetchTransport write it, which is what clients sign
and check (the reference express middleware differs for empty answers: it
signs -1 where the client checks a zero length, so its empty answers fail):

request:  request id (32 bytes) | varint+method | varint+path or -1 |
          varint+query ("?..." ) or -1 | varint count | per signed header
          varint+name varint+value | varint+body or -1
answer:   request id (32 bytes) | varint status | varint count | per signed
          header varint+name varint+value | varint+body (0 when empty)

Signed headers: `x-bsv-*` except `x-bsv-auth-*`, `authorization`, and on
requests `content-type` without its parameters; names lower-case, sorted as
JavaScript's `localeCompare` sorts them (`collation_key`). Varints are
Bitcoin's; -1 is 2^64-1.
"""

from __future__ import annotations

from collections.abc import Iterable

NONE = -1  # "absent" in a varint slot
# ICU root collation (what Node's localeCompare uses) puts ASCII punctuation
# before digits and digits before letters, in this order; header names are
# lower-case, so this key sorts them as the client does.
_ORDER = "_-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$0123456789abcdefghijklmnopqrstuvwxyz"
_RANK = {c: i for i, c in enumerate(_ORDER)}


def varint(n: int) -> bytes:
    """Bitcoin's variable-length integer; negative numbers as their 2^64 complement."""
    if n < 0:
        n += 1 << 64
    if n < 0xFD:
        return bytes((n,))
    if n < 0x10000:
        return b"\xfd" + n.to_bytes(2, "little")
    if n < 0x100000000:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def _field(value: bytes | None) -> bytes:
    return varint(NONE) if value is None else varint(len(value)) + value


def collation_key(name: str) -> tuple[int, ...]:
    """A sort key matching JavaScript's `a.localeCompare(b)` for header names."""
    return tuple(_RANK.get(c, 1000 + ord(c)) for c in name)


def signed_request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The request headers BRC-104 signs, as the client lists them (sorted)."""
    chosen = []
    for name, value in headers:
        low = name.lower()
        if low.startswith("x-bsv-auth"):
            continue
        if low.startswith("x-bsv-") or low == "authorization":
            chosen.append((low, value))
        elif low == "content-type":
            chosen.append((low, value.split(";")[0].strip()))
    chosen.sort(key=lambda item: collation_key(item[0]))
    return chosen


def signed_answer_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The answer headers BRC-104 signs: `x-bsv-*` but `x-bsv-auth-*`, and `authorization`."""
    chosen = [
        (name.lower(), value)
        for name, value in headers
        if (name.lower().startswith("x-bsv-") or name.lower() == "authorization")
        and not name.lower().startswith("x-bsv-auth")
    ]
    chosen.sort(key=lambda item: collation_key(item[0]))
    return chosen


def _headers(pairs: list[tuple[str, str]]) -> bytes:
    out = [varint(len(pairs))]
    for name, value in pairs:
        # aiohttp reads header bytes as UTF-8 with surrogateescape: this gives
        # back the bytes sent, so an odd value fails the signature, not the server.
        out.append(_field(name.encode("utf-8", "surrogateescape")))
        out.append(_field(value.encode("utf-8", "surrogateescape")))
    return b"".join(out)


def request_payload(
    request_id: bytes,
    method: str,
    raw_path: str,
    headers: Iterable[tuple[str, str]],
    body: bytes | None,
) -> bytes:
    """The payload a client signed for this request (`body` None: no body was signed).

    `raw_path` is the request target as sent (path and query, still
    percent-encoded): the client signs the WHATWG URL's pathname and search,
    which is what it sends.
    """
    path, mark, query = raw_path.partition("?")
    return b"".join(
        (
            request_id,
            _field(method.encode()),
            _field(path.encode() if path else None),
            _field(("?" + query).encode() if mark and query else None),
            _headers(signed_request_headers(headers)),
            _field(body),
        )
    )


def answer_payload(
    request_id: bytes, status: int, headers: Iterable[tuple[str, str]], body: bytes
) -> bytes:
    """The payload the client checks for our answer (an empty body is length 0)."""
    return b"".join(
        (request_id, varint(status), _headers(signed_answer_headers(headers)), _field(body))
    )
