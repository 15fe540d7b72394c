"""The keep-alive upstream client, against raw upstreams scripted byte by byte."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
import uvloop
from multidict import CIMultiDict

from gateway.proxy import upstream as upstream_module
from gateway.proxy.upstream import (
    HIGH_WATER,
    Client,
    Origin,
    Reply,
    UnreachableError,
    UpstreamError,
    encode_head,
)
from tests.conftest import GatewayFactory

# Overriding event_loop_policy is deprecated in favour of a conftest hook,
# pytest_asyncio_loop_factories; this module keeps it local until then.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    # The gateway runs on uvloop, whose transports differ in the details.
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


@dataclass
class Raw:
    """What a scripted upstream saw."""

    port: int = 0
    connections: int = 0
    open_now: int = 0
    peak: int = 0
    requests: list[bytes] = field(default_factory=list)

    @property
    def origin(self) -> Origin:
        return Origin("127.0.0.1", self.port, f"127.0.0.1:{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Answers the n-th request (from 1) on a connection; False closes the connection.
Answer = Callable[[Raw, bytes, int, asyncio.StreamWriter], Awaitable[bool]]
Serve = Callable[[Answer], Awaitable[Raw]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Raw:
        raw = Raw()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw.connections += 1
            raw.open_now += 1
            raw.peak = max(raw.peak, raw.open_now)
            n = 0
            try:
                while True:
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, ConnectionError):
                        break
                    raw.requests.append(head)
                    n += 1
                    if not await answer(raw, head, n, writer):
                        break
            finally:
                raw.open_now -= 1
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        raw.port = server.sockets[0].getsockname()[1]
        return raw

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client(limit=8)
    yield c
    await c.close()


def ok(body: bytes = b"hello", headers: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


async def answer_ok(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
    writer.write(ok())
    return True


async def get(
    client: Client,
    raw: Raw,
    method: str = "GET",
    *,
    read_timeout: float = 5,
    whole_limit: int = 1 << 16,
) -> Reply:
    return await client.request(
        raw.origin,
        method,
        "/x",
        CIMultiDict(),
        connect_timeout=2,
        read_timeout=read_timeout,
        whole_limit=whole_limit,
    )


async def read_all(reply: Reply) -> bytes:
    if reply.body is not None:
        return reply.body
    try:
        return b"".join([chunk async for chunk in reply.chunks()])
    finally:
        reply.release()


# --- reuse and when not to -----------------------------------------------------


async def test_keep_alive_connection_is_reused(serve: Serve, client: Client) -> None:
    raw = await serve(answer_ok)
    for _ in range(5):
        reply = await get(client, raw)
        assert (reply.status, reply.reason, reply.body) == (200, "OK", b"hello")
    assert raw.connections == 1
    assert len(raw.requests) == 5


async def test_request_head_has_host_and_headers_in_order(serve: Serve, client: Client) -> None:
    raw = await serve(answer_ok)
    headers = CIMultiDict([("Accept", "*/*"), ("X-Forwarded-For", "1.2.3.4")])
    await client.request(
        raw.origin, "GET", "/a?b=1", headers, connect_timeout=2, read_timeout=2, whole_limit=10
    )
    assert raw.requests == [
        f"GET /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:{raw.port}\r\n"
        "Accept: */*\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n".encode()
    ]


def test_request_head_keeps_given_host_and_refuses_line_breaks() -> None:
    origin = Origin("127.0.0.1", 80, "127.0.0.1")
    head = encode_head("GET", "/", origin, CIMultiDict([("Host", "records.example")]))
    assert head == b"GET / HTTP/1.1\r\nHost: records.example\r\n\r\n"
    with pytest.raises(ValueError, match="CR or LF"):
        encode_head("GET", "/", origin, CIMultiDict([("X-A", "1\r\nX-Evil: 2")]))


async def test_connection_close_answer_is_not_reused(serve: Serve, client: Client) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(headers="Connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(0.05)  # keep it open: the client must not wait for the close
        return False

    raw = await serve(answer)
    for _ in range(3):
        assert (await get(client, raw)).body == b"hello"
    assert raw.connections == 3


async def test_http_1_0_answer_is_not_reused(serve: Serve, client: Client) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi")
        return True

    raw = await serve(answer)
    assert (await get(client, raw)).body == b"hi"
    assert (await get(client, raw)).body == b"hi"
    assert raw.connections == 2


async def test_head_answer_ends_at_its_headers_and_connection_is_reused(
    serve: Serve, client: Client
) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
        else:
            writer.write(ok())
        return True

    raw = await serve(answer)
    reply = await get(client, raw, "HEAD")
    assert reply.status == 200 and reply.body == b""
    assert ("Content-Length", "5000") in reply.headers
    assert (await get(client, raw)).body == b"hello"
    assert raw.connections == 1


# --- stale keep-alive connections ------------------------------------------------


async def test_upstream_closing_an_idle_connection_is_noticed(serve: Serve, client: Client) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())  # keep-alive offered, then closed anyway
        await writer.drain()
        return False

    raw = await serve(answer)
    assert (await get(client, raw)).body == b"hello"
    await asyncio.sleep(0.1)
    assert (await get(client, raw)).body == b"hello"
    assert raw.connections == 2


async def close_on_second_request(
    raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter
) -> bool:
    # The race a keep-alive timeout causes: our request crosses the close.
    if n == 2:
        return False
    writer.write(ok())
    return True


async def test_stale_connection_is_retried_once_for_get(serve: Serve, client: Client) -> None:
    raw = await serve(close_on_second_request)
    assert (await get(client, raw)).body == b"hello"
    assert (await get(client, raw)).body == b"hello"
    assert raw.connections == 2
    assert len(raw.requests) == 3


async def test_stale_connection_is_not_retried_for_post(serve: Serve, client: Client) -> None:
    raw = await serve(close_on_second_request)
    assert (await get(client, raw, "POST")).body == b"hello"
    with pytest.raises(UpstreamError, match="without answering"):
        await get(client, raw, "POST")
    assert raw.connections == 1
    assert len(raw.requests) == 2


async def test_no_retry_once_part_of_an_answer_came(serve: Serve, client: Client) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 2:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Len")
            await writer.drain()
            return False
        writer.write(ok())
        return True

    raw = await serve(answer)
    await get(client, raw)
    with pytest.raises(UpstreamError, match="mid-response"):
        await get(client, raw)
    assert len(raw.requests) == 2


async def test_fresh_connection_closing_unanswered_is_not_retried(
    serve: Serve, client: Client
) -> None:
    async def hang_up(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        return False

    raw = await serve(hang_up)
    with pytest.raises(UpstreamError):
        await get(client, raw)
    assert len(raw.requests) == 1


# --- framing ---------------------------------------------------------------------


async def test_chunked_answer_streams_and_connection_is_reused(
    serve: Serve, client: Client
) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        return True

    raw = await serve(answer)
    for _ in range(2):
        reply = await get(client, raw)
        assert reply.body is None
        assert await read_all(reply) == b"hello world"
    assert raw.connections == 1


async def test_answer_without_length_ends_with_the_connection(serve: Serve, client: Client) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"the end")
        await writer.drain()
        return False

    raw = await serve(answer)
    for _ in range(2):
        reply = await get(client, raw)
        assert reply.body is None
        assert await read_all(reply) == b"until the end"
    assert raw.connections == 2


async def test_large_answer_streams(serve: Serve, client: Client) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"z" * 100_000))
        return True

    raw = await serve(answer)
    reply = await get(client, raw, whole_limit=99_999)
    assert reply.body is None
    assert await read_all(reply) == b"z" * 100_000
    assert (await get(client, raw, whole_limit=100_000)).body == b"z" * 100_000
    assert raw.connections == 1


async def test_streaming_stops_reading_while_the_reader_lags(serve: Serve, client: Client) -> None:
    total = 64 << 20
    sent = 0

    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        nonlocal sent
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        block = b"b" * (1 << 20)
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)
        return True

    raw = await serve(answer)
    reply = await get(client, raw)
    await asyncio.sleep(0.5)
    # Kernel buffers hold a few MiB; without the pause we would take it all.
    assert sent < total / 2
    assert reply._conn is not None and reply._conn._buffered <= HIGH_WATER + (1 << 20)
    assert len(await read_all(reply)) == total


async def test_informational_answers_are_skipped(serve: Serve, client: Client) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(ok(headers="X-Final: 1\r\n"))
        return True

    raw = await serve(answer)
    reply = await get(client, raw)
    assert reply.status == 200 and reply.body == b"hello"
    assert [name for name, _ in reply.headers] == ["Content-Length", "X-Final"]
    assert (await get(client, raw)).body == b"hello"
    assert raw.connections == 1


async def test_garbage_status_line_fails(serve: Serve, client: Client) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTPT/1.1 200 OK\r\n\r\n")
        return True

    raw = await serve(answer)
    with pytest.raises(UpstreamError, match="bad response"):
        await get(client, raw)


# --- timeouts, limits, lifecycle -----------------------------------------------------


async def test_read_timeout_counts_from_the_last_byte(serve: Serve, client: Client) -> None:
    async def trickle(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        for byte in b"slow":
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))
        return True

    raw = await serve(trickle)
    # 0.8 s in all, but never 0.5 s without a byte.
    assert (await get(client, raw, read_timeout=0.5)).body == b"slow"
    with pytest.raises(TimeoutError):
        await get(client, raw, read_timeout=0.1)


async def test_a_reused_connection_keeps_each_request_s_own_read_timeout(
    serve: Serve, client: Client
) -> None:
    """A long read timeout on one request does not stretch a short one's on
    the same connection after it, nor does a request still pending wait on
    the timer of one answered before it."""

    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 2:
            await asyncio.sleep(3)  # the second request: far too slow for 0.2 s
        writer.write(ok())
        return True

    raw = await serve(answer)
    assert (await get(client, raw, read_timeout=30)).status == 200
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await get(client, raw, read_timeout=0.2)
    assert loop.time() - started < 1.5


async def test_connect_refused_is_unreachable(client: Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UnreachableError):
        await get(client, Raw(port=port))


async def test_pool_limit_makes_callers_wait(serve: Serve) -> None:
    async def slow(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(ok())
        return True

    raw = await serve(slow)
    client = Client(limit=2)
    try:
        replies = await asyncio.gather(*(get(client, raw) for _ in range(10)))
    finally:
        await client.close()
    assert [r.body for r in replies] == [b"hello"] * 10
    assert raw.connections == 2 and raw.peak == 2


async def test_cancelled_caller_frees_its_connection(serve: Serve) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        if head.startswith(b"GET /x"):
            await asyncio.sleep(10)
        writer.write(ok())
        return True

    raw = await serve(answer)
    client = Client(limit=1)
    try:
        stuck = asyncio.ensure_future(get(client, raw))
        waiting = asyncio.ensure_future(get(client, raw))
        await asyncio.sleep(0.1)
        waiting.cancel()
        stuck.cancel()
        reply = await client.request(
            raw.origin, "GET", "/y", CIMultiDict(), connect_timeout=2, read_timeout=2, whole_limit=9
        )
        assert reply.body == b"hello"
    finally:
        await client.close()


async def test_idle_connections_are_closed(
    serve: Serve, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream_module, "IDLE_TIMEOUT", 0.2)
    raw = await serve(answer_ok)
    await get(client, raw)
    assert raw.open_now == 1
    await asyncio.sleep(0.5)
    assert raw.open_now == 0
    await get(client, raw)
    assert raw.connections == 2


async def test_close_closes_every_connection(serve: Serve) -> None:
    raw = await serve(answer_ok)
    client = Client(limit=8)
    await asyncio.gather(*(get(client, raw) for _ in range(4)))
    assert raw.open_now == 4
    await client.close()
    await asyncio.sleep(0.1)
    assert raw.open_now == 0


# --- through the gateway ------------------------------------------------------------

POLICY = """\
services:
  raw:
    upstream: {url}
    routes: [{{path: /**, methods: "*", price: free}}]
"""


async def test_gateway_passes_duplicate_set_cookie(serve: Serve, gateway: GatewayFactory) -> None:
    async def answer(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        hop = "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        writer.write(ok(headers=f"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n{hop}"))
        return True

    raw = await serve(answer)
    base = await gateway(POLICY.format(url=raw.url))
    async with aiohttp.ClientSession() as http, http.get(f"{base}/c") as r:
        assert r.status == 200
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        for hop in ("X-Hop", "Keep-Alive"):
            assert hop not in r.headers
        assert await r.read() == b"hello"


async def problem_of(base: str, path: str = "/p") -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}{path}") as r:
        return r.status, (await r.json(content_type=None))["reason"]


async def test_gateway_maps_failures_to_problems(serve: Serve, gateway: GatewayFactory) -> None:
    async def silent(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async def garbage(raw: Raw, head: bytes, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        return True

    quiet = await serve(silent)
    base = await gateway(POLICY.format(url=quiet.url), read_timeout=0.3)
    assert await problem_of(base) == (504, "upstream-timeout")

    bad = await serve(garbage)
    base = await gateway(POLICY.format(url=bad.url))
    assert await problem_of(base) == (502, "upstream-failed")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = await gateway(POLICY.format(url=f"http://127.0.0.1:{port}"))
    assert await problem_of(base) == (502, "upstream-unreachable")
