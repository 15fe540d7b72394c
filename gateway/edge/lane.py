"""The lane: HTTP/1.1 connections that answer the common request without aiohttp's server.

aiohttp's request and response machinery (its protocol, request objects,
payload writer, per-request bookkeeping) costs about 40 us of CPU per
request on the development machine, more than the gateway's own decision
and the proxying together: on a free or token-paid GET it was most of the
difference to nginx. The lane reads the request head itself (llhttp, via
httptools, the parser aiohttp uses too), builds a small request object with
the attributes the pipeline reads (`LaneRequest`), hands it to the very same
handler (`Gateway.handle`: one admission decision for every way in), and
writes the answer the handler returns: a whole `web.Response`; a streamed
one (a large or metered upstream answer) the proxy writes through the
connection itself (`start`, `write`, `end`: the proxy's Sink).

It takes a request only when its head says it can be answered from the head
alone: GET or HEAD, HTTP/1.0 or 1.1, an origin-form target, one non-empty
Host, no Content-Length, Transfer-Encoding, Upgrade or Expect, within the
header limits; and when the handler's own `takes(request)` agrees (the
gateway refuses, for one, Farebox's own URLs, rewarded routes, BRC-104
signed requests and https upstreams). The handler may return a `Ready`
(an answer encoded whole: the gateway's express path) instead of a
response. Anything else is handed to
aiohttp's handler on the same connection with the bytes exactly as
received, and the connection stays with aiohttp from then on. A request
without a body ends at its blank line, so where the lane stops reading is
where any HTTP/1.1 parser would start the next message: the two parsers
never disagree on framing (no request smuggling between them), and the
lane never forwards raw bytes (the upstream request is written anew).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.tcp_helpers import tcp_nodelay
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.edge import logs
from gateway.edge.problems import problem

log = logging.getLogger("farebox.lane")

# Statuses that never carry a body (RFC 9110 15.2, 15.3.5, 15.4.5).
_EMPTY = frozenset((204, 304, *range(100, 200)))
# Request headers that mean the head is not the whole request, or that the
# answer is not a plain HTTP answer: aiohttp's handler takes those.
_NOT_LANE = frozenset(
    {b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"http2-settings"}
)
_METHODS = frozenset({b"GET", b"HEAD"})
HEAD_KEPT = 2048  # bytes: longer heads are parsed every time
HEADS_KEPT = 1024  # heads remembered per listener before starting over

Takes = Callable[["LaneRequest"], bool]
# An answer the handler knows at once (`Known`), or None: see Gateway.quick.
# Written here without a task, a response object or the pipeline.
Quick = Callable[["LaneRequest"], "Known | None"]
Handler = Callable[[Any], Awaitable["web.StreamResponse | Ready"]]


class LaneRequest:
    """The parts of `web.BaseRequest` the pipeline reads, for a request without a body.

    `headers` decode as aiohttp's do (UTF-8, undecodable bytes kept as
    surrogates), `raw_path` is the request target as sent.
    """

    __slots__ = (
        "_path",
        "conn",
        "head",
        "headers",
        "host",
        "keep_alive",
        "method",
        "names",
        "raw_path",
        "remote",
        "routed",
        "transport",
        "version",
    )

    scheme = "http"  # the lane serves plain-HTTP listeners only (TLS ends in front)
    body_exists = False
    can_read_body = False

    def __init__(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        version: str,
        keep_alive: bool,
        remote: str | None,
        transport: asyncio.Transport,
        conn: Lane,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.host = headers.get("Host", "")
        self.version = version
        self.keep_alive = keep_alive
        self.remote = remote
        self.transport = transport
        self.conn = conn  # the connection: the sink a streamed answer is written to
        # What the handler's `takes` found (its canonical target and match),
        # for the handler to use again instead of looking twice.
        self.routed: Any = None
        self.names: list[bytes] = []  # the header names in lower case, as sent
        self.head = b""  # the head's bytes, when the lane keeps them (LaneServer.heads)
        self._path: str | None = None

    @property
    def path(self) -> str:
        """The target's path, percent-decoded (as aiohttp's `request.path`)."""
        if self._path is None:
            self._path = URL.build(path=self.raw_path.partition("?")[0], encoded=True).path
        return self._path


class Written(web.StreamResponse):
    """An answer already written to the lane's connection (streamed through it
    as a `Sink`): nothing is left to send, and its headers are spent."""

    @property
    def prepared(self) -> bool:
        return True


class Ready:
    """An answer encoded whole, head and body (the gateway's express path):
    the lane writes `data` as it is. `keep`: whether the connection may
    carry another request; `status` as sent; `rid` the request id it
    carries (X-Request-Id), for the access log."""

    __slots__ = ("data", "keep", "rid", "status")

    def __init__(self, data: bytes, keep: bool, status: int, rid: str) -> None:
        self.data = data
        self.keep = keep
        self.status = status
        self.rid = rid

    @property
    def headers(self) -> dict[str, str]:
        """What the access log reads of an answer's headers: its request id."""
        return {logs.HEADER: self.rid}


class Known:
    """A 402 the handler knows at once (`Quick`), for the lane to write whole:
    its header lines (with its request id; the lane adds Content-Length, Date
    and Connection) and body, and for the access log its request id and the
    service and route pattern that answered."""

    __slots__ = ("body", "lines", "rid", "served")
    status = 402

    def __init__(self, lines: bytes, body: bytes, rid: str, served: tuple[str, str]) -> None:
        self.lines = lines
        self.body = body
        self.rid = rid
        self.served = served

    @property
    def headers(self) -> dict[str, str]:
        """What the access log reads of an answer's headers: its request id."""
        return {logs.HEADER: self.rid}


def status_line(version: str, status: int, reason: str | None) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n`, as `_head` begins an answer."""
    return f"HTTP/{version} {status} {reason}\r\n".encode("utf-8", "surrogateescape")


def connection_line(version: str, keep: bool) -> bytes:
    """The Connection field line an answer needs (as `_head` adds it), or b""."""
    said = _connection(version, keep)
    return b"Connection: %s\r\n" % said.encode() if said else b""


class LaneServer:
    """What every lane connection of one listener shares.

    `handler` answers a request (the gateway), `takes` says whether the lane
    may answer it, `fallback()` makes aiohttp's handler protocol for a
    connection handed over, `access_log` logs one line per answer as
    aiohttp's would.
    """

    def __init__(
        self,
        handler: Handler,
        takes: Takes,
        fallback: Callable[[], asyncio.Protocol],
        *,
        quick: Quick | None = None,
        access_log: AbstractAccessLogger | None,
        max_head: int,
        max_line: int,
        max_field: int,
        keepalive_timeout: float,
    ) -> None:
        self.handler = handler
        self.takes = takes
        self.fallback = fallback
        self.quick = quick
        self.access_log = access_log
        self.max_head = max_head
        self.max_line = max_line
        self.max_field = max_field
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[Lane] = set()
        # Heads parsed lately, by their bytes: clients send the same head again
        # and again (a poll, a script, a crawler), and parsing it is a fifth
        # of a known answer's cost. The request an entry makes is the one
        # parsing would: a head is the whole of a bodiless request.
        self.heads: dict[bytes, tuple[Any, ...]] = {}
        self.closing = False

    def __call__(self) -> Lane:
        return Lane(self)

    def close_idle(self) -> None:
        """Stop taking requests; close connections with no request in flight."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()

    async def wait_busy(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for answers in flight, then close what is left."""
        deadline = time.monotonic() + timeout
        while any(c.task is not None for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()


class _Head:
    """What the request parser reports of one head (its httptools callbacks).

    Kept apart from the Lane because a parser holds its callbacks' object:
    were that the Lane, each connection would be a reference cycle, freed
    only by the cyclic collector, which a worker runs rarely
    (serve/worker.py `_tune_gc`), and every closed connection would keep
    its buffers until then. Apart, a closed connection is freed at once.
    """

    __slots__ = ("complete", "fields", "url")

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_message_complete(self) -> None:
        self.complete = True


class Lane(asyncio.Protocol):
    """One client connection, until it is handed to aiohttp or closed."""

    def __init__(self, server: LaneServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.idle_since: float | None = None  # loop time the last answer ended; None: busy
        self.writable: asyncio.Future[None] | None = None
        self.head = _Head()
        self.parser = HttpRequestParser(self.head)
        self.eof = False
        self.paused = False  # reading stopped while an answer is in flight
        self.chunked = False  # the answer being streamed is chunk-framed
        self.keep = True  # the answer being streamed leaves the connection open
        self.pending = b""  # the streamed answer's head, not written yet

    # --- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        tcp_nodelay(self.transport, True)  # as aiohttp: an answer's last segment leaves at once
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) and peer else None
        self.server.connections.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None and self.writable is None:
            self._next()
        elif len(self.buffer) > self.server.max_head and not self.paused:
            # An answer is in flight, or answers wait for the client to read
            # them: hold what comes next to one head's worth (aiohttp would
            # refuse a longer line anyway), not to memory's end.
            self.paused = True
            self._transport().pause_reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.task is None:
            self.close()
        return True  # half-closed: an answer in flight may still be written

    def connection_lost(self, exc: Exception | None) -> None:
        # An answer in flight runs to its end, as aiohttp's handlers do
        # (no handler cancellation): a payment half taken is worse than an
        # answer nobody reads. Its writes go nowhere.
        self.server.connections.discard(self)
        self._disarm()
        self._wake()

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake()
        if self.task is None:  # known answers stopped for a client that was not reading
            if self.paused:
                self.paused = False
                self._transport().resume_reading()
            if self.buffer:
                self._next()

    # --- the connection's work --------------------------------------------------------
    def _next(self) -> None:
        """Take the next heads off the buffer: answer them, or hand the connection over."""
        while True:
            if self.transport is None or self.transport.is_closing():
                return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > self.server.max_head or b"\n\n" in self.buffer:
                    self._hand_over()  # too long, or bare-LF framing: aiohttp decides
                return
            if self.server.closing:
                self.close()
                return
            request = self._parse(bytes(self.buffer[: end + 4]))
            started = time.perf_counter()
            try:
                taken = request is not None and self.server.takes(request)
                known = self._known(request) if taken else None  # type: ignore[arg-type]
            except Exception:  # a bug in `takes`: aiohttp's handler answers instead
                log.exception("the lane could not look at a request")
                taken, known = False, None
            if request is None or not taken:
                self._hand_over()
                return
            del self.buffer[: end + 4]
            if known is None:
                self._busy()
                self.task = asyncio.get_running_loop().create_task(self._answer(request))
                return
            keep = self._write_known(request, known.lines, known.body)
            access = self.server.access_log
            if access is not None and access.enabled:
                # No task runs for it: its service and route are this call's only.
                served = logs.SERVED.set(known.served)
                try:
                    access.log(request, known, time.perf_counter() - started)  # type: ignore[arg-type]
                finally:
                    logs.SERVED.reset(served)
            if not keep:
                self.close()
                return
            self._arm()
            if self.writable is not None:
                # A client that sends and does not read: stop answering (and
                # reading) until its answers drain (resume_writing goes on).
                if not self.paused:
                    self.paused = True
                    self._transport().pause_reading()
                return

    def _known(self, request: LaneRequest) -> Known | None:
        """The handler's answer known at once (Quick)."""
        quick = self.server.quick
        if quick is None:
            return None
        return quick(request)

    def _write_known(self, request: LaneRequest, lines: bytes, body: bytes) -> bool:
        """Write a 402 known at once (as `_write` would write it); whether the
        connection may carry another request."""
        keep = request.keep_alive
        connection = connection_line(request.version, keep)
        head = b"HTTP/%s 402 Payment Required\r\n%bContent-Length: %d\r\nDate: %s\r\n%b\r\n" % (
            request.version.encode(),
            lines,
            len(body),
            rfc822_formatted_time().encode(),
            connection,
        )
        self._transport().write(head if request.method == "HEAD" else head + body)
        return keep and not self.eof  # half-closed: answered, then closed (as _answer does)

    def _parse(self, head: bytes) -> LaneRequest | None:
        """The head as a request the lane may take, or None."""
        seen = self.server.heads.get(head)
        if seen is not None:  # the same bytes as a head parsed lately: the same request
            method, target, headers, version, keep_alive, names = seen
            request = LaneRequest(
                method, target, headers, version, keep_alive, self.remote, self._transport(), self
            )
            request.names, request.head = names, head
            return request
        request = self._parse_anew(head)
        if request is not None and len(head) <= HEAD_KEPT:
            heads = self.server.heads
            if len(heads) >= HEADS_KEPT:
                heads.clear()
            heads[head] = (
                request.method, request.raw_path, request.headers, request.version,
                request.keep_alive, request.names,
            )  # fmt: skip
            request.head = head
        return request

    def _parse_anew(self, head: bytes) -> LaneRequest | None:
        if len(head) > self.server.max_head or not head.startswith((b"GET /", b"HEAD /")):
            return None
        parts = self.head
        parts.url, parts.fields, parts.complete = b"", [], False
        try:
            self.parser.feed_data(head)
        except (HttpParserError, HttpParserUpgrade):
            self.parser = HttpRequestParser(parts)
            return None
        if not parts.complete:  # a body follows after all
            self.parser = HttpRequestParser(parts)
            return None
        method = self.parser.get_method()
        version = self.parser.get_http_version()
        if (
            method not in _METHODS
            or version not in ("1.1", "1.0")
            or len(parts.url) > self.server.max_line
        ):
            return None
        fields = parts.fields
        lowers = [name.lower() for name, _ in fields]
        limit = self.server.max_field
        if not _NOT_LANE.isdisjoint(lowers) or lowers.count(b"host") != 1:
            return None
        # No field is longer than the head: only a long head needs each one measured.
        if len(head) > limit and any(len(n) + len(v) > limit for n, v in fields):
            return None
        headers = CIMultiDict(
            [(n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
             for n, v in fields]
        )  # fmt: skip
        if not headers["Host"].strip():
            return None
        # RFC 9112 9.3: 1.1 persists unless told to close; 1.0 only when asked to keep alive.
        if b"connection" in lowers:
            tokens = {t.strip().lower() for t in ",".join(headers.getall("Connection")).split(",")}
            keep_alive = "close" not in tokens if version == "1.1" else "keep-alive" in tokens
        else:
            keep_alive = version == "1.1"
        request = LaneRequest(
            method.decode("ascii"),
            parts.url.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(headers),
            version,
            keep_alive,
            self.remote,
            self._transport(),
            self,
        )
        request.names = lowers
        return request

    async def _answer(self, request: LaneRequest) -> None:
        logs.begin()  # this task's context is a copy of the request before's
        started = time.perf_counter()
        try:
            response = await self.server.handler(request)
        except Exception:  # the handler maps its own errors: this is a bug
            log.exception("the gateway failed on %s %s", request.method, request.path)
            response = problem(500, "internal-error", "Internal server error", "the gateway failed")
            response.force_close()
        try:
            keep = await self._write(request, response)
        except ConnectionError:
            keep = False  # the client left, or the upstream broke mid-body
        except Exception:
            log.exception("could not write the answer to %s %s", request.method, request.path)
            keep = False
        access = self.server.access_log
        if access is not None and access.enabled:
            access.log(request, response, time.perf_counter() - started)  # type: ignore[arg-type]
        self.task = None
        if not keep or self.eof or self.server.closing:
            self.close()
            return
        self._arm()
        if self.paused:
            self.paused = False
            self._transport().resume_reading()
        if self.buffer:
            self._next()

    async def _write(self, request: LaneRequest, response: web.StreamResponse | Ready) -> bool:
        """Write the answer; whether the connection may carry another request."""
        transport = self._transport()
        if type(response) is Ready:  # encoded whole already (the express path)
            if transport.is_closing():
                return False
            if response.data:  # else written already (put_whole)
                transport.write(response.data)
            return response.keep
        if isinstance(response, Written):  # streamed already, through this connection
            return self.keep and not transport.is_closing()
        if transport.is_closing():
            return False
        keep = response.keep_alive if response.keep_alive is not None else request.keep_alive
        status = response.status
        headers = response.headers
        bodiless = status in _EMPTY or request.method == "HEAD"
        body = response.body if isinstance(response, web.Response) else None
        if not isinstance(body, bytes | bytearray):
            body = b""
        if "Content-Length" in headers:
            if status in _EMPTY:
                del headers["Content-Length"]
        elif body or (status != 304 and request.method != "HEAD"):
            headers["Content-Length"] = str(len(body))
        if not bodiless and headers.get("Content-Length", "0") != "0":
            headers.setdefault("Content-Type", "application/octet-stream")
        head = _head(request.version, status, response.reason, headers, keep)
        transport.write(head + body if body and not bodiless else head)
        return keep

    # --- a streamed answer (gateway/proxy/forward.py's Sink) -------------------------
    async def start(
        self,
        request: LaneRequest,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        *,
        close: bool = False,
    ) -> None:
        """Write the head of an answer whose body follows in `write` calls."""
        bodiless = status in _EMPTY or request.method == "HEAD"
        keep = request.keep_alive and not close
        if status in _EMPTY:
            headers.popall("Content-Length", None)
        if "Content-Length" not in headers and not bodiless:
            if request.version == "1.1":
                headers["Transfer-Encoding"] = "chunked"
            else:
                keep = False  # the end of the body is the end of the connection
        self.chunked = not bodiless and "Transfer-Encoding" in headers
        if not bodiless and headers.get("Content-Length") != "0":
            headers.setdefault("Content-Type", "application/octet-stream")  # as aiohttp
        self.keep = keep
        if self._transport().is_closing():
            raise ConnectionResetError("the client went away")
        head = _head(request.version, status, reason, headers, keep)
        if self.eof:
            # The client half-closed, and may be gone: the head alone goes
            # first, so a reset shows before any body is handed over (and
            # charged, on a metered route).
            self._transport().write(head)
            return
        # Held until the first body bytes (one write, one segment, for a body
        # in hand) or the end of this loop turn (a body still to come: the
        # client sees the head at once, as before).
        self.pending = head
        asyncio.get_running_loop().call_soon(self._flush_head)

    def put_whole(self, data: bytes) -> bool:
        """Write a whole answer (head and body) at once; whether to `drain()`
        now, as `write` does, before the answer counts as delivered (the
        client is slower, or the connection is closing: then drain raises).
        Raises ConnectionResetError when the connection is closing before.
        Not a coroutine: the metered express path awaits only when it must."""
        transport = self._transport()
        if transport.is_closing():
            raise ConnectionResetError("the client went away")
        if self.eof:
            # Half-closed: as `start` and `write`, the head goes first on its
            # own, so a reset shows before the body is handed over (and charged).
            end = data.index(b"\r\n\r\n") + 4
            transport.write(data[:end])
            if transport.is_closing():
                raise ConnectionResetError("the client went away")
            data = data[end:]
        transport.write(data)
        return self.writable is not None or transport.is_closing()

    def _flush_head(self) -> None:
        if self.pending:
            head, self.pending = self.pending, b""
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(head)

    async def write(self, chunk: bytes) -> None:
        """Write body bytes; wait while the client is slower than the upstream.

        Raises ConnectionResetError once the connection is closing (as aiohttp's writer)."""
        transport = self._transport()
        if transport.is_closing():
            raise ConnectionResetError("the client went away")
        if not chunk:
            return
        framed = b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked else chunk
        if self.pending:
            framed, self.pending = self.pending + framed, b""
        transport.write(framed)
        await self.drain()

    async def drain(self) -> None:
        """Wait while the client is slower than the upstream. Raises
        ConnectionResetError once the connection is closing (as aiohttp's
        drain), so a meter is not told of another chunk for a client gone."""
        transport = self._transport()
        if not transport.is_closing() and self.writable is not None:
            await self.writable
        if transport.is_closing():
            raise ConnectionResetError("the client went away")

    async def end(self) -> None:
        """The body is complete."""
        transport = self._transport()
        last = b"0\r\n\r\n" if self.chunked else b""
        if self.pending:
            last, self.pending = self.pending + last, b""
        if last and not transport.is_closing():
            transport.write(last)

    def abort(self) -> None:
        """Cut the connection: the client sees the answer is incomplete."""
        self.pending = b""
        self._transport().abort()
        self.keep = False

    def closing(self) -> bool:
        return self._transport().is_closing()

    def _hand_over(self) -> None:
        """Give the connection, and every byte not yet answered, to aiohttp."""
        transport = self._transport()
        self._disarm()
        self.server.connections.discard(self)
        protocol = self.server.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            protocol.data_received(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    def _arm(self) -> None:
        """Close an idle connection (and a head that never ends) after the keep-alive timeout.

        One timer per connection, not one per request: it checks when it
        fires how long the connection has been idle, and waits the rest."""
        loop = asyncio.get_running_loop()
        self.idle_since = loop.time()
        if self.timer is None:
            self.timer = loop.call_at(self.idle_since + self.server.keepalive_timeout, self._idle)

    def _busy(self) -> None:
        """An answer is in flight: the idle clock stops (the timer stays)."""
        self.idle_since = None

    def _idle(self) -> None:
        self.timer = None
        if self.idle_since is None:
            return  # busy: the answer's end arms it again
        due = self.idle_since + self.server.keepalive_timeout
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            self.close()
        else:
            self.timer = loop.call_at(due, self._idle)

    def _disarm(self) -> None:
        """The lane is done with this connection: no timer of its own closes it."""
        self.idle_since = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _wake(self) -> None:
        if self.writable is not None:
            if not self.writable.done():
                self.writable.set_result(None)
            self.writable = None


def _head(
    version: str, status: int, reason: str | None, headers: CIMultiDict[str], keep: bool
) -> bytes:
    """The status line and headers as aiohttp writes them (Date, Connection added)."""
    if "Date" not in headers:
        headers["Date"] = rfc822_formatted_time()
    if "Connection" not in headers:
        said = _connection(version, keep)
        if said:
            headers["Connection"] = said
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    text = f"HTTP/{version} {status} {reason}\r\n{fields}\r\n"
    lines = len(headers) + 2
    # One CR and one LF per line, or a value would smuggle in a header (as aiohttp refuses).
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("CR or LF in a response header")
    return text.encode("utf-8", "surrogateescape")


def _connection(version: str, keep: bool) -> str | None:
    """The Connection field an answer needs, if any (RFC 9112 9.3): HTTP/1.0
    persists only when told keep-alive, 1.1 unless told close."""
    if keep:
        return "keep-alive" if version == "1.0" else None
    return "close" if version == "1.1" else None
