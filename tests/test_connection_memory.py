"""A closed connection is freed at once, by reference counting alone.

A worker runs the cyclic garbage collector rarely (serve/worker.py
`_tune_gc`: its young generation every 100,000 net allocations, the old
never in practice). A connection that is a reference cycle - a parser
holding its protocol, a future holding a reply holding the connection -
outlives its close until a collection, buffers and all: under an upstream
that closes its keep-alive connections every thousand requests (nginx's
default) a worker grew by ~2 MiB every 270,000 requests. These tests run
with the collector off and count what is still alive after the close.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import textwrap
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

from gateway.edge import logs
from gateway.edge.lane import Lane
from gateway.edge.protocol import ProblemServer
from gateway.policy.reload import PolicyHolder
from gateway.proxy import upstream as upstream_module
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store.memory import MemoryStore
from tests.conftest import SERVER_KEY

pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')

POLICY = """\
services:
  svc:
    upstream: http://127.0.0.1:{port}
    routes:
      - path: /**
        price: free
"""

BODY = b'{"ok": true}'


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    # The gateway runs on uvloop, whose transports differ from asyncio's.
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


async def _upstream(every: int) -> asyncio.Server:
    """Answers 200; closes the connection after every `every`-th answer
    (nginx's keepalive_requests), the last answer saying Connection: close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                n += 1
                last = n % every == 0
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n%b\r\n%b"
                    % (len(BODY), b"Connection: close\r\n" if last else b"", BODY)
                )
                await writer.drain()
                if last:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@contextlib.contextmanager
def tracked(cls: type, attribute: str = "__init__") -> Iterator[list[weakref.ref[object]]]:
    """Every instance of `cls` made meanwhile, weakly."""
    refs: list[weakref.ref[object]] = []
    original = getattr(cls, attribute)

    def init(self: object, *args: object, **kwargs: object) -> None:
        refs.append(weakref.ref(self))
        original(self, *args, **kwargs)

    setattr(cls, attribute, init)
    try:
        yield refs
    finally:
        setattr(cls, attribute, original)


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[int, Proxy]]:
    upstream = await _upstream(every=2)
    port = upstream.sockets[0].getsockname()[1]
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(textwrap.dedent(POLICY.format(port=port)))
    proxy = Proxy(connect_timeout=2, read_timeout=5)
    await proxy.start()
    services = Services(PolicyHolder.load(policies), SERVER_KEY, store=MemoryStore())
    gw = assemble_gateway(services, proxy)
    server = ProblemServer(
        gw.handle,
        lane=gw.takes,
        access_log=logging.getLogger("farebox.access"),
        access_log_class=logs.AccessLog,
        keepalive_timeout=2.0,
    )
    runner = web.ServerRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1], proxy
    await runner.cleanup()
    await proxy.close()
    upstream.close()
    await upstream.wait_closed()


async def _client(port: int, requests: int, *, leave_early: bool = False) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(requests):
            writer.write(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            if leave_early:
                return  # gone before the answer
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            await reader.readexactly(len(BODY))
    finally:
        writer.close()


async def _settled() -> None:
    """Let the closes be reported and the answers in flight end."""
    for _ in range(20):
        await asyncio.sleep(0.02)


def _alive(refs: list[weakref.ref[object]]) -> list[object]:
    return [obj for ref in refs if (obj := ref()) is not None]


async def test_closed_client_and_upstream_connections_are_freed_without_the_collector(
    gateway: tuple[int, Proxy], collector_off: None
) -> None:
    port, _ = gateway
    with (
        tracked(Lane) as lanes,
        tracked(upstream_module._Connection) as upstreams,
    ):
        # Sequential clients: each upstream connection answers two requests
        # and is closed by the upstream; each client connection closes too.
        for _ in range(6):
            await _client(port, 3)
        await asyncio.gather(*(_client(port, 2) for _ in range(8)))
        await asyncio.gather(*(_client(port, 1, leave_early=True) for _ in range(4)))
        await _settled()
        assert len(lanes) >= 18 and len(upstreams) >= 10  # the traffic did what it should
        assert _alive(lanes) == []
        # Only connections the pool still keeps open may live.
        closed = [c for c in _alive(upstreams) if c.closed]  # type: ignore[attr-defined]
        assert closed == []


async def test_upstream_connections_closed_by_the_proxy_are_freed(
    gateway: tuple[int, Proxy], collector_off: None
) -> None:
    port, proxy = gateway
    with tracked(upstream_module._Connection) as upstreams:
        await asyncio.gather(*(_client(port, 1) for _ in range(6)))
        assert _alive(upstreams)  # kept open in the pool
        await proxy.close()  # closes every pooled connection
        await _settled()
        assert _alive(upstreams) == []
