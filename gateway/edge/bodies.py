"""Request bodies read whole, up to a limit.

`StreamReader.read(n)` answers with what has arrived so far, not `n` bytes:
a body that comes in several TCP segments would be cut. `read_body` reads
until the end of the body or one byte past `limit` (so the caller can refuse
an oversized body without holding more of it).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The body, whole, or its first `limit + 1` bytes when it is longer."""
    held = BUFFERED.get()
    if held is not None:  # read already, to check its signature (gateway/peer/)
        return held[: limit + 1]
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        part = await request.content.read(limit + 1 - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


# While an authenticated (BRC-104) request is served: its body, read whole to
# check its signature, for the proxy to send on (None: stream it as usual).
BUFFERED: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("buffered", default=None)
# ... and the most bytes of answer that may be held to be signed whole (None:
# stream answers; an int: the proxy reads the answer whole, or refuses it).
WHOLE_ANSWER: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "whole_answer", default=None
)
# ... and how to sign an answer (status, headers to add to, body) for the
# client: the proxy signs and writes a metered answer itself, so that it is
# charged only once it reached the client.
Signer = Callable[[int, CIMultiDict[str], bytes], None]
SIGNER: contextvars.ContextVar[Signer | None] = contextvars.ContextVar("signer", default=None)
