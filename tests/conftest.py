"""Shared fixtures: a real recording upstream and a real gateway on free ports."""

from __future__ import annotations

import asyncio
import hashlib
import os
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey

from gateway.chain import Broadcaster, BroadcastResult
from gateway.devnet import Devnet
from gateway.devnet import start as start_devnet
from gateway.edge.protocol import ProblemServer
from gateway.payments.cashier import Cashier
from gateway.peer.guard import Authenticator
from gateway.pipeline.credentials import Revocations
from gateway.policy.reload import PolicyHolder
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens

SERVER_KEY = "02" + "11" * 32


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body_sha256: str
    body_len: int


@dataclass
class Upstream:
    url: str
    seen: list[Seen] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [s.raw_path for s in self.seen]


# Headers only Farebox may send a client, as an upstream might forge them.
FORGED = {
    "X-Farebox-Token": "forged.by.upstream",
    "X-Farebox-Balance": "999999",
    "x-bsv-sats": "1",
    "x-bsv-server": "02" + "11" * 32,
    "PAYMENT-REQUIRED": "e30=",
}


def recording_app(record: Upstream) -> web.Application:
    """An upstream that remembers exactly what reached it."""

    async def any_request(request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        record.seen.append(
            Seen(request.method, request.raw_path, dict(request.headers), digest.hexdigest(), size)
        )
        return web.json_response(
            {
                "path": request.raw_path,
                "method": request.method,
                "sha256": digest.hexdigest(),
                "size": size,
            },
            headers={
                "X-Upstream": "yes",
                "Connection": "keep-alive, X-Secret-Hop",
                "X-Secret-Hop": "1",
                # ?forge: an upstream speaking Farebox's own headers to clients
                **(FORGED if "forge" in request.query else {}),
            },
        )

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late")

    async def broken(request: web.Request) -> web.StreamResponse:
        # Promise 1 MiB, send 10 bytes, then drop the connection.
        response = web.StreamResponse(headers={"Content-Length": str(1 << 20)})
        await response.prepare(request)
        await response.write(b"0123456789")
        assert request.transport is not None
        request.transport.abort()
        return response

    async def hangup(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async def ranged(request: web.Request) -> web.Response:
        data = bytes(range(256)) * 4
        rng = request.http_range
        part = data[rng] if request.headers.get("Range") else data
        status = 206 if request.headers.get("Range") else 200
        headers = {"Accept-Ranges": "bytes"}
        if status == 206:
            start = rng.start or 0
            headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
        return web.Response(body=part, status=status, headers=headers)

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        block = b"x" * 65536
        left = size
        try:
            while left > 0:
                await response.write(block[: min(left, len(block))])
                left -= len(block)
            await response.write_eof()
        except ConnectionError:
            pass  # the gateway let go of us: expected when its client hangs up
        return response

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        record.seen.append(Seen("WS", request.raw_path, dict(request.headers), "", 0))
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application(client_max_size=1 << 31)
    app.router.add_get("/slow", slow)
    app.router.add_get("/broken", broken)
    app.router.add_get("/hangup", hangup)
    app.router.add_get("/ranged", ranged)
    app.router.add_get("/big/{size}", big)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", any_request)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    record = Upstream("")
    runner = web.AppRunner(recording_app(record), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    record.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield record
    await runner.cleanup()


GatewayFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Start a real gateway for a policy text; returns its base URL."""
    runners: list[web.BaseRunner] = []
    proxies: list[Proxy] = []

    async def start(
        policy: str, *, read_timeout: float = 5, connect_timeout: float = 2, **extra: object
    ) -> str:
        path = tmp_path / "policies"
        path.mkdir(exist_ok=True)
        (path / "test.yaml").write_text(textwrap.dedent(policy))
        proxy = Proxy(connect_timeout=connect_timeout, read_timeout=read_timeout)
        await proxy.start()
        proxies.append(proxy)
        extra.setdefault("store", MemoryStore())
        # As `farebox serve` builds it (serve/worker.py): revocations asked
        # through the cache over the store, unless the test says otherwise.
        extra.setdefault("revocations", Revocations(extra["store"]))  # type: ignore[arg-type]
        if extra.get("tokens") is not None:
            proxy.own_token = extra["tokens"].issued_here  # type: ignore[attr-defined]
        services = Services(PolicyHolder.load(path), extra.pop("server_key", SERVER_KEY), **extra)
        handler = assemble_gateway(services, proxy)
        # As `farebox serve` runs it: connections start on the lane (edge/lane.py).
        runner = web.ServerRunner(
            ProblemServer(handler.handle, lane=handler.takes, quick=handler.quick, access_log=None)
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()
    for proxy in proxies:
        await proxy.close()


async def raw_request(
    base: str, target: str, method: str = "GET", headers: str = "", host: str | None = None
) -> tuple[int, bytes]:
    """Send a request target byte-for-byte (HTTP clients would normalise it);
    `host` is the Host header sent exactly (default: the gateway's address)."""
    address, port = base.removeprefix("http://").split(":")
    host = address if host is None else host
    reader, writer = await asyncio.open_connection(address, int(port))
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode(
                "utf-8", "surrogateescape"
            )
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


# --- a gateway that takes payments ------------------------------------------------------

PAID_SERVER = PrivateKey(0x5E_12_7E_12)
PAID_POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    routes:
      - path: /pages/{{n}}
        price: 25
        grant: {{lasts: 1h, covers: resource}}
      - path: /datasets/**
        price: 100
        grant: {{lasts: 1h, covers: route}}
      - path: /big/{{size}}
        price: 10
        grant: {{lasts: 1h, covers: resource}}
      - path: /**
        price: free
"""


@dataclass
class Recording:
    """Wraps a broadcaster and remembers everything it was asked to send."""

    inner: Broadcaster
    seen: list[bytes] = field(default_factory=list)

    async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
        self.seen.append(tx if isinstance(tx, bytes) else bytes.fromhex(tx))
        return await self.inner.broadcast(tx, txid=txid)


@dataclass
class Paid:
    base: str
    tokens: Tokens
    store: MemoryStore
    cashier: Cashier


PaidGatewayFactory = Callable[..., Awaitable[Paid]]


@pytest.fixture
async def paid_gateway(
    gateway: GatewayFactory, upstream: Upstream, tmp_path: Path
) -> PaidGatewayFactory:
    """Start a gateway over PAID_POLICY whose cashier uses this tracker and broadcaster."""

    async def start(
        tracker: object,
        broadcaster: object,
        *,
        announce: str | None = None,
        peer_lifetime: int = 600,
        peer_limit: int = 1024 * 1024,
    ) -> Paid:
        store = MemoryStore()
        tokens = Tokens(KeyRing.load(tmp_path / f"ring-{os.urandom(4).hex()}"))
        cashier = Cashier(
            PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
        )  # type: ignore[arg-type]
        base = await gateway(
            PAID_POLICY.format(upstream=upstream.url),
            server_key=announce or PAID_SERVER.public_key().hex(),
            tokens=tokens,
            cashier=cashier,
            cookie_secure=False,
            store=store,
            peers=Authenticator(PAID_SERVER, store, lifetime=peer_lifetime, limit=peer_limit),
        )
        return Paid(base, tokens, store, cashier)

    return start


@pytest.fixture
async def devnet_http() -> AsyncIterator[tuple[str, Devnet]]:
    """A devnet served over HTTP on a free port: (its URL, the chain itself)."""
    runner, chain = await start_devnet("127.0.0.1", 0, devnet=Devnet())
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", chain
    await runner.cleanup()
