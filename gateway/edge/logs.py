"""Logging: plain text or one JSON object per line, each tagged with its request id.

Every request gets an id (the client's X-Request-Id when it is a short plain
token, else a new one); it goes upstream and back to the client in
X-Request-Id and into every log line written while the request is handled,
so one request can be followed through Farebox and the upstream's logs.

What is never logged: tokens, keys, cookies, payment headers (BEEF), query
strings. The access log (`AccessLog`, on `farebox.access`) names method,
path, status, duration, the service and route that answered, and (in JSON)
the client; a text line ends with `(request ID)`, a JSON object has a
`request_id` field.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import time
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.edge import urls
from gateway.edge.paths import PathError, canonicalize

# Characters a percent-encoded path keeps as they are: RFC 3986 pchar and "/",
# and "%" (what was sent encoded stays so).
_SHOWN = "/!$&'()*+,;=:@~%-._"
# Farebox's URLs whose last segments are secrets (whoever holds one takes what
# it opens), and how many segments after the prefix are not: a payout's
# campaign and digest before its ticket; nothing of a checkout's id or ticket
# (once paid, its status answer carries the grant's token).
_SECRET_AFTER = ((urls.PAYOUTS, 2), (urls.CHECKOUT, 0))

HEADER = "X-Request-Id"
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# The policy's service and route pattern that answered this request, for the
# access log ("" for Farebox's own URLs and unmatched paths).
SERVED: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("served", default=("", ""))
# When this request began (time.perf_counter()), for the access log's duration.
STARTED: contextvars.ContextVar[float] = contextvars.ContextVar("started", default=0.0)
_PLAIN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def begin() -> None:
    """Start a request's context afresh: no id, no service or route yet, its
    clock (`STARTED`) started now. Called where requests start, at the edge
    (the lane's `_answer`, protocol.py's `_handle_request`). Contexts outlive
    requests: a connection's requests share one task on aiohttp's side, and
    the lane's task for a request takes a copy of the context of the one
    before it, so without this a request would be logged with the service
    of the one before."""
    REQUEST_ID.set("")
    SERVED.set(("", ""))
    STARTED.set(time.perf_counter())


def request_id(request: web.BaseRequest) -> str:
    """This request's id (`id_for`), set as the id its log lines carry."""
    rid = id_for(request.headers.get(HEADER, ""))
    REQUEST_ID.set(rid)
    return rid


def id_for(given: str) -> str:
    """The id of a request that sent `given` as X-Request-Id: that, if it is
    plain and short, else a new one (16 hex digits)."""
    if given and _PLAIN.fullmatch(given):
        return given
    return f"{_ids.prefix}{next(_ids.count) & 0xFFFFFFFF:08x}"


class _Ids:
    """New request ids: 8 random hex digits per process, then a counter. Unique
    enough to find a request's lines, without a getrandom() call per request;
    a forked worker draws its own prefix."""

    def __init__(self) -> None:
        self.prefix = os.urandom(4).hex()
        self.count = itertools.count()


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.__init__)


class _Tag(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = REQUEST_ID.get()
        rid = record.request_id
        record.request_tag = f" (request {rid})" if rid else ""  # for the text format
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            entry["request_id"] = rid
        for name in (
            "method", "path", "status", "duration_ms", "service", "route", "client",
            "satoshis", "txid", "vout", "reason", "repeated",
        ):  # fmt: skip
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_Tag())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s%(request_tag)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def logged_path(target: str) -> str:
    """A request target (as sent, `raw_path`) as a log may show it: its
    canonical path (paths.canonicalize: dot segments resolved, slashes
    collapsed), percent-encoded, so that no control character it decodes
    to can split a log line; no query string or fragment. The secret in a
    payout's or a checkout's URL is left out however the URL was spelled
    (`_SECRET_AFTER`): `PAYOUTS` + campaign/digest/…, `CHECKOUT` + …. A
    target that is no valid path is shown percent-encoded as sent, up to
    its query (all of it after such a prefix left out if it names one)."""
    try:
        found = canonicalize(target)
    except PathError:
        shown = quote(target.partition("?")[0].partition("#")[0], safe=_SHOWN)
        named = unquote(shown).lower()
        for prefix, _ in _SECRET_AFTER:
            if prefix.removeprefix("/.well-known/") in named:
                return prefix + "…"
        return shown
    for prefix, kept in _SECRET_AFTER:
        if found.path.startswith(prefix):
            after = found.forward[len(prefix) :].strip("/").split("/")
            return prefix + "/".join([*after[:kept], "…"] if len(after) > kept else after)
    return found.forward


class AccessLog(AbstractAccessLogger):
    """One line per request: method, path (no query string, no payout
    ticket), status, duration in milliseconds to 0.01 ms, and the policy's
    service and route pattern that answered; no headers.

    `response` is anything with a `status` and `headers` holding the
    request id: aiohttp's responses, and the lane's `Ready`."""

    @property
    def enabled(self) -> bool:
        # As aiohttp's own AccessLogger: a line nobody keeps costs nothing.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        path = logged_path(request.raw_path)
        service, route = SERVED.get()
        self.logger.info(
            "%s %s %s %.2fms%s",
            request.method,
            path,
            response.status,
            duration * 1000,
            f" {service} {route}" if service else "",
            extra={
                "method": request.method,
                "path": path,
                "status": response.status,
                "duration_ms": round(duration * 1000, 2),
                "service": service,
                "route": route,
                "client": request.remote,
                "request_id": response.headers.get(HEADER, ""),
            },
        )
