"""The HTTP/1.1 layer: requests too malformed to reach a handler, as problem+json.

aiohttp answers a message it cannot parse (an unknown method, a header over
`max_field_size`, bad framing) before any handler runs, in text/plain. Every
error Farebox gives is RFC 9457 problem+json with a `reason`, these too:
`ProblemServer` is aiohttp's low-level server whose connections answer them
that way (and, as aiohttp does, close the connection).
"""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.edge.problems import CONTENT_TYPE, problem_body

# What Farebox's own answers say in `Server`: no product versions to look up
# advisories by (aiohttp would send "Python/3.11 aiohttp/<version>").
SERVER = "farebox"


class _ProblemHandler(RequestHandler):
    __slots__ = ()  # the same layout as aiohttp's handler, so a connection can switch to it

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises once a response began
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
    """`web.Server` whose connections answer unparseable requests as problem+json."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _ProblemHandler
        return handler
