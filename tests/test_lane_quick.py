"""The lane's known answers (Gateway.quick): an unpaid request that can only get
the JSON 402 challenge() rendered a moment ago is answered at once, byte for
byte as the pipeline answers it; anything that could change the decision goes
through the pipeline."""

from __future__ import annotations

import asyncio
import logging
import re
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from gateway.edge import metrics
from gateway.edge.protocol import ProblemServer
from gateway.ledger.tally import Tally, today
from gateway.pipeline.gateway import Gateway
from gateway.policy.reload import PolicyHolder
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store.memory import MemoryStore
from tests.conftest import SERVER_KEY
from tests.listeners import listening

POLICY = """\
services:
  archive:
    upstream: {upstream}
    routes:
      - path: /pages/{{n}}
        price: 25
        grant: {{lasts: 1h}}
      - path: /fares/{{n}}
        price: {{usd_cents: 2}}
        grant: {{lasts: 1h}}
      - path: /quota/{{n}}
        price: 25
        free_quota: {{requests: 1, per: 1h}}
      - path: /free/**
        price: free
"""


@dataclass
class Pair:
    gateway: Gateway
    folder: Path
    quick: int  # port with known answers
    plain: int  # the same gateway, every request through the pipeline
    answered: list[bool]  # what quick() returned, per call: an answer or not
    server: ProblemServer  # the one with known answers


@pytest.fixture
async def pair(tmp_path: Path, upstream) -> AsyncIterator[Pair]:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(textwrap.dedent(POLICY.format(upstream=upstream.url)))
    proxy = Proxy(connect_timeout=2, read_timeout=5)
    await proxy.start()
    store = MemoryStore()
    services = Services(PolicyHolder.load(folder), SERVER_KEY, store=store, tally=Tally(store))
    gateway = assemble_gateway(services, proxy)
    answered: list[bool] = []

    def spy(request):  # type: ignore[no-untyped-def]
        known = gateway.quick(request)
        answered.append(known is not None)
        return known

    runners = []
    ports = []
    servers = []
    for quick in (spy, None):
        server = ProblemServer(gateway.handle, lane=gateway.takes, quick=quick, access_log=None)
        servers.append(server)
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        ports.append(runner.addresses[0][1])
    yield Pair(gateway, folder, ports[0], ports[1], answered, servers[0])
    for runner in runners:
        await runner.cleanup()
    await proxy.close()


async def exchange(port: int, data: bytes, answers: int) -> bytes:
    """Send `data`; what came back until the close or 0.3 s of quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.3)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    assert got.count(b"HTTP/1.") == answers, got
    return got


def same(data: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*", b"Date: -", data)


REQUESTS = [
    (b"GET /pages/1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r1\r\n\r\n", 1),
    (b"HEAD /pages/1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r2\r\n\r\n", 1),
    (b"GET /pages/1 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nX-Request-Id: r3\r\n\r\n", 1),
    (b"GET /pages/1 HTTP/1.0\r\nHost: a\r\nX-Request-Id: r4\r\n\r\n", 1),
    (b"GET /pages/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Request-Id: r5\r\n\r\n", 1),
    (
        b"GET /pages/1?q=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r6\r\n\r\n"
        b"GET /pages/1?q=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r7\r\n\r\n"
        b"HEAD /pages/1?q=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r8\r\n\r\n",
        3,
    ),
    (b"GET /pages/1 HTTP/1.1\r\nHost: b.example\r\nAccept: application/json\r\n"
     b"User-Agent: x\r\nX-Forwarded-Host: evil\r\nX-Request-Id: r9\r\n\r\n", 1),
]  # fmt: skip


async def test_known_402s_are_the_pipeline_s_byte_for_byte(pair: Pair) -> None:
    for data, answers in REQUESTS:
        await exchange(pair.quick, data, answers)  # the first renders, and keeps
        pair.answered.clear()
        quick = await exchange(pair.quick, data, answers)
        assert any(pair.answered), data  # answered at once indeed
        plain = await exchange(pair.plain, data, answers)
        assert same(quick) == same(plain), data
        assert quick.count(b" 402 Payment Required") == answers


@pytest.mark.parametrize(
    "header",
    [
        "Authorization: Bearer forged.x.y",
        "Cookie: farebox_token=forged",
        "Origin: https://elsewhere.example",
        "x-bsv-beef: AAAA",
        "x-bsv-auth-version: 0.1",
        "payment-signature: e30=",
        "X-Payment: e30=",
        "X-Farebox-Eligibility: x",
        "Accept: text/html",
        "X-Anything-Else: 1",
    ],
)
async def test_whatever_could_change_the_answer_goes_through_the_pipeline(
    pair: Pair, header: str
) -> None:
    data = f"GET /pages/2 HTTP/1.1\r\nHost: a\r\n{header}\r\nX-Request-Id: z\r\n\r\n".encode()
    await exchange(pair.quick, b"GET /pages/2 HTTP/1.1\r\nHost: a\r\n\r\n", 1)  # kept
    pair.answered.clear()
    quick = await exchange(pair.quick, data, 1)
    assert not any(pair.answered)
    plain = await exchange(pair.plain, data, 1)
    assert same(quick).split(b"\r\n")[0] == same(plain).split(b"\r\n")[0]


@pytest.mark.parametrize("path", ["/fares/1", "/quota/1", "/free/x", "/nothing"])
async def test_routes_not_sold_plainly_in_satoshis_are_never_known(pair: Pair, path: str) -> None:
    data = f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
    for _ in range(2):
        await exchange(pair.quick, data, 1)
    assert not any(pair.answered)


async def test_a_store_failing_lately_sends_requests_through_the_pipeline(pair: Pair) -> None:
    data = b"GET /pages/3 HTTP/1.1\r\nHost: a\r\n\r\n"
    await exchange(pair.quick, data, 1)
    pair.gateway._store_failed = time.monotonic()
    pair.answered.clear()
    await exchange(pair.quick, data, 1)
    assert not any(pair.answered)  # the pipeline pings the store before inviting a payment


async def test_known_402s_are_counted_as_the_pipeline_counts_them(pair: Pair) -> None:
    """The transparency report's counters and the Prometheus metrics see a
    known 402 as they see the pipeline's: a request, a challenge."""
    requests = metrics.REQUESTS.labels("archive", "/pages/{n}", "402")
    metrics.flush()
    before = requests._value.get()
    data = b"GET /pages/4 HTTP/1.1\r\nHost: a\r\n\r\n"
    for port in (pair.quick, pair.quick, pair.quick, pair.plain):
        await exchange(port, data, 1)
    assert sum(pair.answered) == 2  # the first rendered it
    metrics.flush()  # counted in the worker, handed to prometheus-client once a second
    assert requests._value.get() - before == 4
    services = pair.gateway.services
    assert services.tally is not None and services.store is not None
    await services.tally.flush()
    [day] = await services.store.stats(since_day=today(), until_day=today(), service="archive")
    assert (day.route, day.counters["requests"], day.counters["challenges"]) == ("/pages/{n}", 4, 4)


async def test_a_head_seen_before_is_looked_at_again_after_a_policy_change(
    pair: Pair, upstream
) -> None:
    """The lane keeps parsed heads and the gateway what takes() found for
    them, per policy: after a reload the same bytes meet the new policy."""
    data = b"GET /pages/5 HTTP/1.1\r\nHost: a\r\nX-Request-Id: same\r\n\r\n"
    for _ in range(2):
        assert b" 402 " in await exchange(pair.quick, data, 1)
    (pair.folder / "p.yaml").write_text(
        textwrap.dedent(POLICY.format(upstream=upstream.url)).replace(
            "      - path: /pages/{n}\n        price: 25\n        grant: {lasts: 1h}\n",
            "      - path: /pages/{n}\n        price: free\n",
        )
    )
    assert pair.gateway.services.policy.reload()
    answer = await exchange(pair.quick, data, 1)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert [seen.raw_path for seen in upstream.seen] == ["/pages/5"]


async def test_a_client_that_sends_and_never_reads_is_not_answered_into_memory(
    pair: Pair,
) -> None:
    """Known answers are written without a task: a client that pipelines
    heads and reads nothing must not make the worker buffer its answers
    without end (a 402 is ~40x its head); once it reads, every one comes."""
    head = b"GET /pages/6 HTTP/1.1\r\nHost: a\r\n\r\n"
    await exchange(pair.quick, head, 1)  # rendered and kept
    size = len(await exchange(pair.quick, head, 1))  # every answer as long (Date, id)
    count = 20_000
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.quick)
    writer.transport.set_write_buffer_limits(high=1 << 30)
    writer.write(head * count)
    await asyncio.sleep(1.0)
    assert pair.server.lane is not None
    [conn] = [c for c in pair.server.lane.connections if c.transport is not None]
    assert conn.transport is not None
    assert conn.transport.get_write_buffer_size() < 1 << 20  # held back, not ~30 MB
    received = 0
    while received < count * size:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert chunk, f"closed after {received // size} answers"
        received += len(chunk)
    assert received == count * size
    writer.close()


async def test_what_takes_found_is_dropped_with_the_policy_it_was_found_in(
    pair: Pair, upstream
) -> None:
    """Heads looked at under one policy are let go at the next reload (else up
    to 1,024 old compiled policies stay in memory per worker)."""
    for n in range(50):
        await exchange(pair.quick, f"GET /pages/old{n} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), 1)
    assert len(pair.gateway._looked) >= 50
    (pair.folder / "p.yaml").write_text(
        textwrap.dedent(POLICY.format(upstream=upstream.url)).replace("price: 25", "price: 26")
    )
    assert pair.gateway.services.policy.reload()
    await exchange(pair.quick, b"GET /pages/new HTTP/1.1\r\nHost: a\r\n\r\n", 1)
    assert len(pair.gateway._looked) == 1


async def test_known_402s_are_access_logged_as_the_pipeline_s(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """With --access-log the known 402 is still written at once, and has its
    line: status, id, service and route, as the pipeline's 402 has."""
    data = b"GET /pages/7 HTTP/1.1\r\nHost: a\r\n\r\n"
    known: list[bool] = []
    quick = pair.gateway.quick
    async with listening(pair.gateway, quick=True, access_log=True) as listener:
        await exchange(listener.port, data, 1)  # the first renders, and keeps
        lane = listener.server.lane
        assert lane is not None
        lane.quick = lambda r: known.append(bool(answer := quick(r))) or answer
        with caplog.at_level(logging.INFO, logger="farebox.access"):
            more = b"GET /free/a HTTP/1.1\r\nHost: a\r\n\r\n"
            got = await exchange(listener.port, data * 2 + more, 3)
    assert known[:2] == [True, True]
    records = [r for r in caplog.records if r.name == "farebox.access"]
    assert [(r.path, r.status, r.service, r.route) for r in records] == [  # type: ignore[attr-defined]
        ("/pages/7", 402, "archive", "/pages/{n}"),
        ("/pages/7", 402, "archive", "/pages/{n}"),
        ("/free/a", 200, "archive", "/free/**"),
    ]
    ids = re.findall(rb"X-Request-Id: ([^\r]*)", got)
    assert [r.request_id for r in records] == [i.decode() for i in ids]  # type: ignore[attr-defined]
