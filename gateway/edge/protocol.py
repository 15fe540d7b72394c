"""The HTTP/1.1 layer: requests too malformed to reach a handler, as problem+json.

aiohttp answers a message it cannot parse (an unknown method, a header over
`max_field_size`, bad framing) before any handler runs, in text/plain. Every
error Farebox gives is RFC 9457 problem+json with a `reason`, these too:
`ProblemServer` is aiohttp's low-level server whose connections answer them
that way (and, as aiohttp does, close the connection).

aiohttp bounds each header field and their number, not their sum: 128 fields
of 64 KiB would be 8 MiB to carry to the upstream. `ProblemServer` refuses
request headers over `MAX_HEADERS_TOTAL` in all with 431 before its handler
sees the request, on every path (Farebox's own URLs too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler

from gateway.edge import logs
from gateway.edge.lane import LaneServer, Quick, Takes
from gateway.edge.problems import CONTENT_TYPE, problem, problem_body

# The most request header bytes (each field counted as `name: value` and its
# CRLF) a request may carry: what nginx's template lets through in front
# (`large_client_header_buffers 4 64k`), so Farebox alone is no laxer.
MAX_HEADERS_TOTAL = 256 * 1024

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# What Farebox's own answers say in `Server`: no product versions to look up
# advisories by (aiohttp would send "Python/3.11 aiohttp/<version>").
SERVER = "farebox"
log = logging.getLogger("farebox.edge")


class _ProblemHandler(RequestHandler):
    __slots__ = ()  # the same layout as aiohttp's handler, so a connection can switch to it

    async def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Handler,
    ) -> tuple[web.StreamResponse, bool]:
        # Every request of aiohttp's side comes through here, those answered
        # before a handler runs too, in the connection's one task.
        logs.begin()
        return await super()._handle_request(request, start_time, request_handler)

    def log_access(
        self, request: web.BaseRequest, response: web.StreamResponse, time_: float | None
    ) -> None:
        # aiohttp times by loop.time(), which uvloop moves in whole
        # milliseconds: the duration is taken from `begin`'s clock instead.
        if self._logging_enabled and self.access_logger is not None:
            self.access_logger.log(request, response, time.perf_counter() - logs.STARTED.get())

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            super().handle_error(
                request, status, exc, message
            )  # logs; raises once a response began
        else:
            # A client's malformed message (a header too long, a control
            # character): one line, not a traceback at ERROR that anyone could
            # fill the log with. As aiohttp does, nothing more once bytes went out.
            log.info("bad HTTP message from %s: %s", request.remote, message or exc)
            if request.writer.output_size > 0:
                raise ConnectionError("the answer began already: no problem can follow")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        reason = "internal-error" if status >= 500 else "bad-http-message"
        detail = "the gateway failed" if status >= 500 else (message or phrase)
        answer = web.Response(
            status=status,
            body=json.dumps(problem_body(status, reason, phrase, detail)).encode(),
            content_type=CONTENT_TYPE,
            headers={"Server": SERVER},
        )
        answer.force_close()  # as aiohttp does: the stream may be out of step
        return answer


class ProblemServer(web.Server):
    """`web.Server` whose connections answer unparseable requests as problem+json,
    and requests whose headers add up to more than `max_headers_total` with 431.

    With `lane` (the handler's `takes`), connections start on the lane
    (edge/lane.py), which answers the requests `lane` accepts itself and
    hands every other to aiohttp's handler; `quick` (the handler's) gives
    the answers the lane may write at once.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_headers_total: int = MAX_HEADERS_TOTAL,
        lane: Takes | None = None,
        quick: Quick | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(capped(handler, max_headers_total), **kwargs)
        self.lane: LaneServer | None = None
        if lane is not None:
            logger = kwargs.get("access_log")
            log_class = kwargs.get("access_log_class", AccessLogger)
            log_format = kwargs.get("access_log_format", AccessLogger.LOG_FORMAT)
            self.lane = LaneServer(
                handler,
                lane,
                self.handler_protocol,
                quick=quick,
                access_log=log_class(logger, log_format) if logger is not None else None,
                max_head=max_headers_total,
                max_line=kwargs.get("max_line_size", 8190),
                max_field=kwargs.get("max_field_size", 8190),
                keepalive_timeout=kwargs.get("keepalive_timeout", 75.0),
            )

    def __call__(self) -> asyncio.Protocol:
        if self.lane is not None:
            return self.lane()
        return self.handler_protocol()

    def handler_protocol(self) -> RequestHandler:
        """aiohttp's protocol for one connection (one handed over by the lane, too)."""
        handler = super().__call__()
        handler.__class__ = _ProblemHandler
        return handler

    async def shutdown(self, timeout: float | None = None) -> None:
        if self.lane is None:
            await super().shutdown(timeout)
            return
        self.lane.close_idle()
        await asyncio.gather(super().shutdown(timeout), self.lane.wait_busy(timeout or 0.0))


def capped(handler: Handler, limit: int) -> Handler:
    """`handler`, behind a cap on the total size of a request's headers.

    One pass over the parsed fields' lengths, no extra coroutine: the
    handler's own awaitable is returned as it is.
    """

    def check(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        raw = request.raw_headers
        size = 4 * len(raw)  # ": " and CRLF
        for name, value in raw:
            size += len(name) + len(value)
        if size > limit:
            return _too_large(size, limit)
        return handler(request)

    return check


async def _too_large(size: int, limit: int) -> web.StreamResponse:
    answer = problem(
        431,
        "headers-too-large",
        "Request header fields too large",
        f"the request's headers are {size} bytes; at most {limit} are taken",
        headers={"Server": SERVER},
    )
    answer.force_close()  # its body, if any, is not read
    return answer
