"""The access log on uvloop, as `farebox serve` runs: each line names its own
request (service, route, id), however requests share a connection, and its
duration is finer than uvloop's clock, which moves in whole milliseconds.
Reuses tests/test_lane.py's `pair` (one gateway behind a listener with the
lane and one without)."""

# ruff: noqa: F811  (the `pair` fixture is imported, and requested by name)

from __future__ import annotations

import asyncio
import logging

import pytest
import uvloop

from tests.test_lane import Pair, exchange, pair, split  # noqa: F401


@pytest.fixture(scope="module")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy()


@pytest.mark.parametrize("side", ["lane", "plain"])
async def test_each_access_log_line_names_its_own_request(
    pair: Pair, caplog: pytest.LogCaptureFixture, side: str
) -> None:
    """Pipelined on one connection, through the lane's express path, its
    hand-over and aiohttp's side: a request no route answers is logged with
    no service, not the one before it, and durations are finer than the
    whole milliseconds of uvloop's clock."""
    own = b"GET /.well-known/farebox/nothing HTTP/1.1\r\nHost: a\r\n\r\n"
    data = (
        b"GET /free/a HTTP/1.1\r\nHost: a\r\n\r\n"
        + own
        + b"POST /free/b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        + own
        + b"GET /free/c HTTP/1.1\r\nHost: a\r\n\r\n"
        + own.replace(b"Host: a\r\n", b"Host: a\r\nConnection: close\r\n")
    )
    port = pair.lane if side == "lane" else pair.plain
    with caplog.at_level(logging.INFO, logger="farebox.access"):
        answers = split(await exchange(port, data))
    assert len(answers) == 6
    records = [r for r in caplog.records if r.name == "farebox.access"]
    served = [(r.method, r.path, r.service, r.route) for r in records]  # type: ignore[attr-defined]
    assert served == [
        ("GET", "/free/a", "svc", "/**"),
        ("GET", "/.well-known/farebox/nothing", "", ""),
        ("POST", "/free/b", "svc", "/**"),
        ("GET", "/.well-known/farebox/nothing", "", ""),
        ("GET", "/free/c", "svc", "/**"),
        ("GET", "/.well-known/farebox/nothing", "", ""),
    ]
    durations = [r.duration_ms for r in records]  # type: ignore[attr-defined]
    assert all(0 < d < 5000 for d in durations), durations
    assert any(d != int(d) for d in durations[1::2]), durations  # aiohttp's side too
