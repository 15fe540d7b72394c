"""The access log attacked: one line per request, its own id and service, on
every path (lane express, known 402, pipeline, hand-over, aiohttp's side);
no secret in it (query strings, cookies, a payout's ticket however its URL is
spelled, a fragment); no line a path can split or forge.

Runs on uvloop, as `farebox serve` does. Lines are captured through a handler
carrying logs._Tag and the text format of logs.configure, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop

from gateway.edge import logs, metrics, urls
from gateway.edge.paths import canonicalize
from gateway.pipeline.gateway import Gateway
from gateway.policy.reload import PolicyHolder
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store.memory import MemoryStore
from tests.conftest import SERVER_KEY, Upstream
from tests.listeners import listening
from tests.test_lane import POLICY, comparable, exchange, split

TEXT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s%(request_tag)s"


@pytest.fixture(scope="module")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(logs._Tag())
        self.setFormatter(logging.Formatter(TEXT))
        self.records: list[logging.LogRecord] = []
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.text.append(self.format(record))

    def access(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == "farebox.access"]

    def access_text(self) -> list[str]:
        return [
            t for r, t in zip(self.records, self.text, strict=True) if r.name == "farebox.access"
        ]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    access = logging.getLogger("farebox.access")
    access.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        access.setLevel(logging.NOTSET)


@dataclass
class Four:
    lane: int  # lane, access log on
    plain: int  # aiohttp only, access log on
    lane_quiet: int  # lane, access_log=None
    plain_quiet: int  # aiohttp only, access_log=None


@contextlib.asynccontextmanager
async def gateway_of(
    tmp_path: Path, upstream: Upstream, **services: object
) -> AsyncIterator[Gateway]:
    """tests/test_lane.py's policy on a gateway; `services` set on its Services."""
    path = tmp_path / "policies"
    path.mkdir()
    (path / "p.yaml").write_text(textwrap.dedent(POLICY.format(upstream=upstream.url)))
    proxy = Proxy(connect_timeout=2, read_timeout=5)
    await proxy.start()
    made = Services(PolicyHolder.load(path), SERVER_KEY, store=MemoryStore())
    for name, value in services.items():
        object.__setattr__(made, name, value)  # a frozen dataclass
    try:
        yield assemble_gateway(made, proxy)
    finally:
        await proxy.close()


@pytest.fixture
async def four(tmp_path: Path, upstream: Upstream) -> AsyncIterator[Four]:
    async with contextlib.AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(gateway_of(tmp_path, upstream))
        ports = []
        for lane, logged in ((True, True), (False, True), (True, False), (False, False)):
            listener = await stack.enter_async_context(
                listening(gateway, lane=lane, quick=lane, access_log=logged, keepalive_timeout=2.0)
            )
            ports.append(listener.port)
        yield Four(*ports)


# --- secrets -------------------------------------------------------------------------

TICKET = "SEKRETticket0123456789"
PAYOUT_SPELLINGS = [
    f"//.well-known/farebox/payouts/camp/digest/{TICKET}",
    f"/.well-known//farebox/payouts/camp/digest/{TICKET}",
    f"/.well-known/farebox//payouts/camp/digest/{TICKET}",
    f"/.well-known/farebox/./payouts/camp/digest/{TICKET}",
    f"/.well-known/farebox/x/../payouts/camp/digest/{TICKET}",
    f"/.well-known/farebox/payouts/camp/digest/{TICKET}/",
]


@pytest.mark.parametrize("target", PAYOUT_SPELLINGS)
async def test_a_payout_ticket_is_never_in_the_access_log(
    four: Four, lines: Lines, target: str
) -> None:
    """The router routes by the canonical path, so every spelling here
    reaches the payout endpoint (all but the trailing slash name the same
    payout): the log hides the ticket by the canonical path too."""
    canonical = canonicalize(target).path
    assert canonical.startswith(urls.PAYOUTS)  # it is the payout endpoint that answers
    data = f"GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
    await exchange(four.lane, data)
    await exchange(four.plain, data)
    text = lines.access_text()
    assert len(text) == 2, text
    leaked = [t for t in text if TICKET in t]
    assert not leaked, leaked


# --- log injection --------------------------------------------------------------------


@pytest.mark.parametrize("side", ["lane", "plain"])
async def test_a_text_access_line_cannot_be_split_by_the_path(
    four: Four, lines: Lines, side: str
) -> None:
    """A percent-encoded CR/LF in the path stays encoded in the line: one
    request cannot forge a second, complete line with a request id of its
    choosing."""
    forged = (
        "/free/a%0D%0A2026-12-02 05:00:00,000 INFO [1] farebox.access: "
        "GET /admin/payouts 200 0.10ms svc /** (request victim-id)"
    ).replace(" ", "%20")
    data = f"GET {forged} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
    await exchange(four.lane if side == "lane" else four.plain, data)
    text = lines.access_text()
    assert len(text) == 1, text
    assert "\n" not in text[0] and "\r" not in text[0], text[0].splitlines()


async def test_lane_and_aiohttp_log_the_same_path_for_a_fragment(four: Four, lines: Lines) -> None:
    """A '#fragment' sent in the target is logged by neither side."""
    data = b"GET /free/a#access_token=SEKRET HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    lane = await exchange(four.lane, data)
    plain = await exchange(four.plain, data)
    assert comparable(split(lane)) == comparable(split(plain))
    paths = [r.path for r in lines.access()]  # type: ignore[attr-defined]
    assert len(paths) == 2, paths
    assert paths[0] == paths[1], paths
    assert all("SEKRET" not in t for t in lines.access_text()), lines.access_text()


class _Payout:
    campaign, satoshis, status, recipient, txid, vout, reason = (
        "camp",
        500,
        "owed",
        "02ab",
        None,
        None,
        "",
    )
    ticket = TICKET


class _Ledger:
    async def get(self, key: str) -> _Payout | None:
        return _Payout() if key == "camp:digest" else None


@pytest.mark.parametrize("target", PAYOUT_SPELLINGS[:5])
async def test_a_payout_served_at_any_spelling_keeps_its_ticket_out_of_the_log(
    tmp_path: Path, upstream: Upstream, lines: Lines, target: str
) -> None:
    """With a payout at camp/digest/TICKET, each non-canonical spelling is
    answered 200 with the payout (the router reads the canonical path), and
    the access log still leaves the ticket out."""
    data = f"GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
    async with (
        gateway_of(tmp_path, upstream, payouts=_Ledger()) as gateway,
        listening(gateway, quick=True, access_log=True) as listener,
    ):
        ((status, _, body),) = split(await exchange(listener.port, data))
    assert status == b"HTTP/1.1 200 OK" and b'"status": "owed"' in body
    text = lines.access_text()
    assert len(text) == 1
    assert TICKET not in text[0], text[0]


# --- bursts on one connection ---------------------------------------------------


OWN = b"GET /.well-known/farebox/nothing HTTP/1.1\r\nHost: a\r\n\r\n"
BURST = (
    b"GET /paid HTTP/1.1\r\nHost: a\r\nX-Request-Id: k1\r\n\r\n"  # 402 (pipeline, then known)
    b"GET /paid HTTP/1.1\r\nHost: a\r\nX-Request-Id: k1\r\n\r\n"
    b"GET /free/x?token=SEKRET HTTP/1.1\r\nHost: a\r\n\r\n"
    b"GET /free/%0a HTTP/1.1\r\nHost: a\r\n\r\n"  # 400 from the pipeline
    b"GET /paid HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    + OWN
    + b"POST /free/y HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
    + b"GET /paid HTTP/1.1\r\nHost: a\r\nCookie: farebox_token=SEKRET\r\n\r\n"
    + b"GET /free/z HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
)
SERVED = [
    ("/paid", 402, "svc"), ("/paid", 402, "svc"), ("/free/x", 200, "svc"),
    ("/free/%0a", 400, ""), ("/paid", 402, "svc"),
    ("/.well-known/farebox/nothing", 404, ""), ("/free/y", 200, "svc"),
    ("/paid", 402, "svc"), ("/free/z", 200, "svc"),
]  # fmt: skip


def norm(data: bytes) -> bytes:
    return re.sub(rb"(Date|X-Request-Id|Ratelimit[^:]*): [^\r]*", rb"\1: -", data, flags=re.I)


@pytest.mark.parametrize("side", ["lane", "plain"])
async def test_a_burst_gets_one_line_each_with_its_own_id_and_the_same_bytes(
    four: Four, lines: Lines, side: str
) -> None:
    for _ in range(2):  # twice: the second time the 402s are known answers
        lines.records.clear()
        lines.text.clear()
        logged = await exchange(four.lane if side == "lane" else four.plain, BURST)
        quiet = await exchange(four.lane_quiet if side == "lane" else four.plain_quiet, BURST)
        assert norm(logged) == norm(quiet)
        answers = split(logged)
        assert len(answers) == len(SERVED)
        records = lines.access()
        got = [(r.path, r.status, r.service) for r in records]  # type: ignore[attr-defined]
        assert got == SERVED
        ids = [h.get("x-request-id", [""])[0] for _, h, _ in answers]
        assert [r.request_id for r in records] == ids  # type: ignore[attr-defined]
        assert all(0 < r.duration_ms < 1000 for r in records)  # type: ignore[attr-defined]
        assert not [t for t in lines.text if "SEKRET" in t]


async def test_a_client_that_does_not_read_gets_one_line_per_answer(
    four: Four, lines: Lines
) -> None:
    """Known 402s and free GETs to a client that stops reading (the lane pauses),
    then reads everything: one line per answer, ids in order."""
    one = b"GET /paid?x=" + b"a" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    await exchange(four.lane, one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    lines.records.clear()
    lines.text.clear()
    n = 400
    data = (one + b"GET /free/q HTTP/1.1\r\nHost: a\r\n\r\n") * n
    data += b"GET /free/end HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", four.lane, limit=1 << 24)
    writer.transport.set_write_buffer_limits(1 << 24)
    writer.write(data)
    await asyncio.sleep(1.0)  # nothing read: the server's writes back up
    got = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    answers = split(got)
    assert len(answers) == 2 * n + 1
    records = lines.access()
    assert len(records) == len(answers)
    ids = [h.get("x-request-id", [""])[0] for _, h, _ in answers]
    assert [r.request_id for r in records] == ids  # type: ignore[attr-defined]
    assert [r.service for r in records] == ["svc"] * len(answers)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "target",
    [
        f"/.well-known/farebox/checkout/{TICKET}",
        f"//.well-known/farebox/checkout/{TICKET}?poll=1",
        f"/.well-known/farebox/x/../checkout/{TICKET}/",
    ],
)
async def test_a_checkout_id_is_never_in_the_access_log(
    four: Four, lines: Lines, target: str
) -> None:
    """Whoever holds a checkout's URL collects its grant once it is paid (the
    status answer sets the token's cookie): its id is left out like a ticket."""
    for method in ("GET", "POST"):
        data = f"{method} {target} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        await exchange(four.lane, data.encode())
    text = lines.access_text()
    assert len(text) == 2, text
    assert not [t for t in text if TICKET in t], text
    assert all("/.well-known/farebox/checkout/…" in t for t in text), text


@pytest.mark.parametrize("side", ["lane", "plain"])
async def test_a_client_leaving_mid_body_is_not_an_upstream_failure(
    four: Four, lines: Lines, side: str
) -> None:
    """A POST whose client closes after 10 of its 100,000 body bytes: logged
    499 (nginx's "client closed request"), no warning that the upstream
    failed, not counted as an upstream error."""
    errors = metrics.UPSTREAM_ERRORS.labels("svc", "upstream-failed")
    metrics.flush()
    before = errors._value.get()
    _, writer = await asyncio.open_connection(
        "127.0.0.1", four.lane if side == "lane" else four.plain
    )
    writer.write(b"POST /free/y HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789")
    await writer.drain()
    await asyncio.sleep(0.2)  # the body is on its way upstream
    writer.close()
    for _ in range(100):
        if lines.access():
            break
        await asyncio.sleep(0.02)
    assert [(r.path, r.status) for r in lines.access()] == [("/free/y", 499)]  # type: ignore[attr-defined]
    # Farebox's own lines (the test upstream, in this process, logs its lost body)
    farebox = [r for r in lines.records if r.name.startswith("farebox")]
    assert not [r for r in farebox if r.levelno >= logging.WARNING], lines.text
    metrics.flush()
    assert errors._value.get() == before
