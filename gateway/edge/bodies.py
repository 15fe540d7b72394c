"""Request bodies read whole, up to a limit.

`StreamReader.read(n)` answers with what has arrived so far, not `n` bytes:
a body that comes in several TCP segments would be cut. `read_body` reads
until the end of the body or one byte past `limit` (so the caller can refuse
an oversized body without holding more of it).
"""

from __future__ import annotations

from aiohttp import web


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The body, whole, or its first `limit + 1` bytes when it is longer."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        part = await request.content.read(limit + 1 - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)
