"""A gateway listening in a test as `farebox serve` has it listen
(gateway/serve/worker.py): aiohttp's low-level server answering malformed
requests as problems, with the lane, its known answers and the access log
each on or off, on a free port."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.edge import logs
from gateway.edge.protocol import ProblemServer
from gateway.pipeline.gateway import Gateway


@dataclass
class Listener:
    port: int
    server: ProblemServer


@contextlib.asynccontextmanager
async def listening(
    gateway: Gateway,
    *,
    lane: bool = True,
    quick: bool = False,
    access_log: bool = False,
    **kwargs: Any,
) -> AsyncIterator[Listener]:
    """Listen on 127.0.0.1 until the block ends; `kwargs` go to ProblemServer."""
    server = ProblemServer(
        gateway.handle,
        lane=gateway.takes if lane else None,
        quick=gateway.quick if quick else None,
        access_log=logging.getLogger("farebox.access") if access_log else None,
        access_log_class=logs.AccessLog,
        **kwargs,
    )
    runner = web.ServerRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Listener(runner.addresses[0][1], server)
    finally:
        await runner.cleanup()
