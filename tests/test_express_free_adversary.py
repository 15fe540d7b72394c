"""The express path on free routes attacked: key ring and policy reloads while
heads are kept, broken upstreams, odd headers; each answered as the pipeline
answers it, and Farebox's own token never sent upstream."""

# ruff: noqa: F811  (the `lanes` and `raw` fixtures are imported, and requested by name)

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import pytest

from gateway.tokens import KeyRing, Tokens
from tests.test_express import (  # noqa: F401  (fixtures)
    POLICY,
    Lanes,
    Raw,
    exchange,
    free_request,
    lanes,
    masked,
    raw,
    serve_raw,
    tab_grant,
)


def mint_with(tokens: Tokens) -> str:
    return tokens.mint(tab_grant("t" * 32))


def bearer_free(token: str, name: str = "plain") -> bytes:
    return f"GET /f/{name} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n".encode()


async def test_a_token_of_a_key_brought_by_a_ring_reload_is_no_longer_sent_upstream(
    lanes: Lanes, raw: Raw, tmp_path: Path
) -> None:
    """Another instance rotated first: its token's kid is unknown here, so a
    free route passes it upstream (both paths). After this instance reloads
    the ring the token is ours and both paths strip it: the express path
    keeps no upstream head for a free route's request with an Authorization
    (whether its token is ours is the ring's to say, and the ring reloads)."""
    folder = tmp_path / "ring"
    time.sleep(0.02)
    KeyRing.add_key(folder)
    elsewhere = Tokens(KeyRing.load(folder))
    token = mint_with(elsewhere)
    assert not lanes.tokens.issued_here(token)
    data = bearer_free(token)
    assert (await exchange(lanes.express, data)).startswith(b"HTTP/1.1 200 ")
    assert token.encode() in raw.heads[-1]  # unknown key: not ours yet (as before the commit)
    lanes.tokens.reload(folder)
    assert lanes.tokens.issued_here(token)
    raw.heads.clear()
    assert (await exchange(lanes.slow, data)).startswith(b"HTTP/1.1 200 ")
    slow_head = raw.heads[-1]
    assert token.encode() not in slow_head  # the pipeline strips it now
    raw.heads.clear()
    assert (await exchange(lanes.express, data)).startswith(b"HTTP/1.1 200 ")
    fast_head = raw.heads[-1]
    assert lanes.taken[-1] is True
    assert masked(fast_head) == masked(slow_head), "express sent a different upstream request"
    assert token.encode() not in fast_head, "express still sends our token upstream"


async def test_a_pruned_key_turns_the_other_way(lanes: Lanes, raw: Raw, tmp_path: Path) -> None:
    """The converse: a key pruned from the ring; both paths now forward the
    (no longer ours) token, byte for byte alike."""
    folder = tmp_path / "ring"
    time.sleep(0.02)
    KeyRing.add_key(folder)
    lanes.tokens.reload(folder)
    old = [p for p in folder.glob("*.pem")]
    token = mint_with(lanes.tokens)  # signed with the newest key
    data = bearer_free(token)
    assert (await exchange(lanes.express, data)).startswith(b"HTTP/1.1 200 ")
    assert token.encode() not in raw.heads[-1]
    # prune the key that signed it
    kid = lanes.tokens.ring.active
    for p in old:
        if p.stem == kid:
            p.unlink()
    lanes.tokens.reload(folder)
    assert not lanes.tokens.issued_here(token)
    raw.heads.clear()
    await exchange(lanes.slow, data)
    await exchange(lanes.express, data)
    slow_head, fast_head = raw.heads
    assert masked(fast_head) == masked(slow_head)


FREE_TO_PRICED = POLICY.replace(
    "      - path: /f/{{name}}\n        price: free\n",
    "      - path: /f/{{name}}\n        price: 100\n        grant: {{lasts: 10m, covers: route}}\n",
)
FREE_TO_QUOTA = POLICY.replace(
    "      - path: /f/{{name}}\n        price: free\n",
    "      - path: /f/{{name}}\n        price: free\n        free_quota: {{requests: 5, per: 1d}}\n",
)


@pytest.mark.parametrize("auth", ["", "Authorization: Bearer not.ours.atall\r\n"])
async def test_free_turned_priced_on_reload_is_charged_for_though_heads_are_kept(
    lanes: Lanes, raw: Raw, auth: str
) -> None:
    assert FREE_TO_PRICED != POLICY
    data = f"GET /f/plain HTTP/1.1\r\nHost: a\r\n{auth}\r\n".encode()
    assert (await exchange(lanes.express, data * 2)).count(b"HTTP/1.1 200 ") == 2
    n = len(raw.heads)
    (lanes.folder / "p.yaml").write_text(textwrap.dedent(FREE_TO_PRICED.format(upstream=raw.url)))
    assert lanes.gateway.services.policy.reload()
    got = await exchange(lanes.express, data * 2)
    assert got.startswith(b"HTTP/1.1 402 "), got[:200]
    assert len(raw.heads) == n


async def test_free_given_a_quota_on_reload_is_counted(lanes: Lanes, raw: Raw) -> None:
    data = b"GET /f/plain HTTP/1.1\r\nHost: a\r\n\r\n"
    assert (await exchange(lanes.express, data * 2)).count(b"HTTP/1.1 200 ") == 2
    (lanes.folder / "p.yaml").write_text(textwrap.dedent(FREE_TO_QUOTA.format(upstream=raw.url)))
    assert lanes.gateway.services.policy.reload()
    got = await exchange(lanes.express, data * 7)
    assert got.count(b"HTTP/1.1 200 ") == 5 and got.count(b"HTTP/1.1 429 ") == 2, got[:500]
    assert b"RateLimit-Remaining: 4" in got


GARBAGE = {
    "garbage": b"NOT HTTP AT ALL\r\n\r\n",
    "close-early": b"",
    "half-head": b"HTTP/1.1 200 OK\r\nContent-Le",
    "short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "1xx": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "huge-header": b"HTTP/1.1 200 OK\r\nX-Big: "
    + b"a" * 100_000
    + b"\r\nContent-Length: 2\r\n\r\nok",
    "slow": None,
}


async def garbage_upstream(kind: str):  # type: ignore[no-untyped-def]
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            answer = GARBAGE[kind]
            if answer is None:
                await asyncio.sleep(5)
                return
            writer.write(answer)
            await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize("accept", ["", "Accept: text/html\r\n"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("kind", sorted(GARBAGE))
async def test_a_broken_upstream_on_a_free_route_is_answered_as_the_pipeline_answers(
    lanes: Lanes, kind: str, method: str, accept: str
) -> None:
    server = await garbage_upstream(kind)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        (lanes.folder / "p.yaml").write_text(textwrap.dedent(POLICY.format(upstream=url)))
        assert lanes.gateway.services.policy.reload()
        data = f"{method} /f/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{accept}\r\n".encode()
        fast, slow = await asyncio.gather(
            exchange(lanes.express, data, quiet=3.0), exchange(lanes.slow, data, quiet=3.0)
        )
    finally:
        server.close()
    assert masked(fast) == masked(slow)
    assert lanes.taken == [True]


async def test_a_deeply_nested_header_is_refused_not_a_500(lanes: Lanes, raw: Raw) -> None:
    """A header of 768 nested '[' (1024 characters, as much as `unverified_kid`
    reads) in a bearer token or cookie on each kind of route: refused, never
    a 500, however deep the stack is when `verify` runs."""
    import sys as _sys

    depths: list[int] = []
    real = lanes.tokens.verify

    def counting(token: str):  # type: ignore[no-untyped-def]
        f, n = _sys._getframe(), 0
        while f is not None:
            f, n = f.f_back, n + 1
        depths.append(n)
        return real(token)

    lanes.tokens.verify = counting  # type: ignore[method-assign]
    header = "W1tb" * 256  # base64url of 768 '['
    token = f"{header}.e30.AAAA"
    for path in ("/r/plain", "/f/plain", "/m/plain"):
        for cookie in (False, True):
            auth = f"Cookie: farebox_token={token}" if cookie else f"Authorization: Bearer {token}"
            data = f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth}\r\n\r\n".encode()
            got = await exchange(lanes.express, data)
            assert not got.startswith(b"HTTP/1.1 500"), (path, got[:300])
    print("stack depths at verify:", depths, "recursion limit", _sys.getrecursionlimit())
