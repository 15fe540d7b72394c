"""A lean keep-alive HTTP/1.1 client for the proxy's common case.

On small answers aiohttp's ClientSession machinery (request and response
objects, connector, timeout contexts) was about a third of the proxy's CPU.
This client covers one shape only, plain http:// and a request without a
body, with one `asyncio.Protocol` per connection and llhttp (httptools) for
parsing; the proxy keeps ClientSession for everything else.

An answer up to `whole_limit` bytes (or one without a body) comes back whole;
a larger, chunked or close-delimited one comes back as a stream read through
the same protocol object, which stops reading from the socket while more than
`HIGH_WATER` bytes wait for the client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import MultiMapping

log = logging.getLogger("farebox.upstream")

HIGH_WATER = 256 * 1024
IDLE_TIMEOUT = 60.0
# RFC 9110 9.2.2: only these may be sent again after a connection failed.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

Header = tuple[str, str]


class UpstreamError(Exception):
    """The upstream broke off, or answered with something that is not HTTP/1.x."""


class UnreachableError(UpstreamError):
    """No connection could be made: refused, unresolvable, unroutable."""


@dataclass(frozen=True, slots=True)
class Origin:
    host: str  # as given to connect(): IPv6 without brackets
    port: int
    host_header: str  # what the Host header says: default port left out


class Reply:
    """One answer. `body` is the whole body, or None for a streamed one: then
    read it with `chunks()` and call `release()` when done, whatever happened."""

    __slots__ = ("_conn", "body", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[Header],
        body: bytes | None,
        conn: _Connection | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self._conn = conn

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._conn is not None, "not a streamed reply"
        while chunk := await self._conn.read():
            yield chunk

    def release(self) -> None:
        if self._conn is not None:
            self._conn.release()
            self._conn = None


class _Connection(asyncio.Protocol):
    """One upstream connection, carrying one exchange at a time."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._transport: asyncio.Transport | None = None
        self._parser = HttpResponseParser(self)
        self.closed = False
        self.reused = False  # has answered before, so it may have gone stale
        self.got_bytes = False  # of the current exchange
        self.idle_since = 0.0
        # The current exchange.
        self._active = False  # request sent, answer not complete
        self._method = ""
        self._whole_limit = 0
        self._reply: asyncio.Future[Reply] | None = None
        self._informational = False
        self._reason = b""
        self._headers: list[Header] = []
        self._body: list[bytes] = []
        self._keep_alive = False
        self._until_close = False  # the body ends when the connection does
        # Streaming state.
        self._streaming = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        # Read timeout: one timer per exchange, pushed back lazily from the
        # time of the last byte instead of re-armed on every read.
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the methods but not the base class.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self._active:
            # Bytes nobody asked for (a 408 before closing, a body after a
            # HEAD answer): whatever comes next on this connection is suspect.
            self.close()
            return
        self.got_bytes = True
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(UpstreamError("upstream switched protocols unasked"))
        except HttpParserError as exc:
            self._fail(UpstreamError(f"bad response from upstream: {exc.__context__ or exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.lost(self)
        try:
            if not self._active:
                return
            if self._streaming and self._until_close and self._error is None:
                self._finish_stream()
            elif self.got_bytes:
                self._fail(UpstreamError("upstream closed the connection mid-response"))
            else:
                self._fail(UpstreamError("upstream closed the connection without answering"))
        finally:
            self._forget()

    def _forget(self) -> None:
        """Drop what refers back to this closed connection: its parser (which
        holds it as its callbacks' object), transport, timer and the last
        exchange's future (whose streamed Reply holds it). Reference counting
        then frees it once its last reader lets go, not the cyclic collector,
        which a worker runs rarely (serve/worker.py `_tune_gc`): an upstream
        closing its keep-alive connections every thousand requests, as nginx
        does, would otherwise leave each one's buffers in memory until then."""
        self._stop_timer()
        self._parser = None  # type: ignore[assignment]  # no byte comes after the loss
        self._transport = None
        self._reply = None

    # --- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._active:
            self._keep_alive = False  # a second answer to one request
        self._reason = b""
        self._headers = []

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # Same decoding as aiohttp's client, so bytes pass through unchanged.
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if not self._active:
            return
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamError("upstream switched protocols unasked")
            self._informational = True  # 100, 103...: the real answer follows
            return
        length, chunked = _framing(self._headers)
        # HTTP/1.0 answers are not reused even when they offer keep-alive.
        self._keep_alive = parser.should_keep_alive() and parser.get_http_version() == "1.1"
        no_body = self._method == "HEAD" or status in (204, 304)
        self._until_close = not no_body and length is None and not chunked
        if self._method == "HEAD":
            # llhttp cannot be told a HEAD answer has no body: end it here and
            # give this connection a fresh parser on release.
            self._answer(b"")
        elif not no_body and (length is None or length > self._whole_limit):
            self._streaming = True
            self._resolve(Reply(status, self._reason_text(), self._headers, None, self))

    def on_body(self, body: bytes) -> None:
        if self._streaming:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > HIGH_WATER and not self._paused:
                self._paused = True
                assert self._transport is not None
                self._transport.pause_reading()
            self._wake()
        elif self._active:
            self._body.append(body)
        else:
            self._keep_alive = False  # a body after a HEAD answer

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        elif self._streaming:
            self._finish_stream()
        elif self._active:
            self._answer(b"".join(self._body))

    # --- the exchange -----------------------------------------------------------

    def send(
        self, head: bytes, method: str, read_timeout: float, whole_limit: int
    ) -> asyncio.Future[Reply]:
        assert self._transport is not None
        self._active = True
        self._method = method
        self._whole_limit = whole_limit
        self._reply = self._loop.create_future()
        self.got_bytes = False
        self._informational = False
        self._body = []
        self._streaming = False
        self._eof = False
        self._error = None
        self._read_timeout = read_timeout
        self._last_read = self._loop.time()
        # One timer per connection, not one per request: a pending one that
        # fires no later than this request's deadline checks it when it fires.
        deadline = self._last_read + read_timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
        self._transport.write(head)
        return self._reply

    async def read(self) -> bytes:
        """The next part of a streamed body, b"" at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._last_read = self._loop.time()
            if self._transport is not None:  # else lost meanwhile: nothing more to read
                self._transport.resume_reading()
        return data

    def release(self) -> None:
        """The caller is done with the answer: reuse the connection if it can be."""
        if self.closed:
            return
        if self._active or not self._keep_alive or self._chunks:
            self.close()
            return
        if self._method == "HEAD":
            self._parser = HttpResponseParser(self)
        self._pool.put(self)

    def close(self) -> None:
        """Close: a plain FIN when idle, a reset when an answer is still coming."""
        self.closed = True
        self._stop_timer()
        if self._transport is not None:
            if self._active:
                self._transport.abort()
            else:
                self._transport.close()
        self._active = False  # so losing the connection is not taken for a failure

    def _answer(self, body: bytes) -> None:
        self._active = False  # the timer, when it fires, finds nothing to wait for
        self._resolve(
            Reply(self._parser.get_status_code(), self._reason_text(), self._headers, body)
        )

    def _finish_stream(self) -> None:
        self._active = False
        self._eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._active:
            return
        self.close()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(exc)
        else:
            self._error = exc
            self._wake()

    def _resolve(self, reply: Reply) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(reply)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _reason_text(self) -> str:
        return self._reason.decode("utf-8", "surrogateescape")

    def _on_timer(self) -> None:
        self._timer = None
        if not self._active:
            return  # answered: the next send arms it again
        now = self._loop.time()
        if self._paused:
            self._last_read = now  # waiting for our client, not for the upstream
        deadline = self._last_read + self._read_timeout
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._fail(TimeoutError(f"no bytes from the upstream for {self._read_timeout:g} s"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _framing(headers: list[Header]) -> tuple[int | None, bool]:
    """Content-Length (llhttp has checked it) and whether the body is chunked."""
    length = None
    chunked = False
    for name, value in headers:
        if len(name) == 14 and name.lower() == "content-length":
            length = int(value)
        elif len(name) == 17 and name.lower() == "transfer-encoding":
            # Only a final "chunked" delimits the body (RFC 9112 6.3).
            chunked = value.rsplit(",", 1)[-1].strip().lower() == "chunked"
    return length, chunked


class _Pool:
    """Connections to one origin: at most `limit`, the rest of the callers wait."""

    def __init__(self, origin: Origin, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.limit = limit
        self.loop = loop
        self.idle: list[_Connection] = []  # a stack: the oldest at the bottom
        self.open: set[_Connection] = set()
        self.connecting = 0
        # A waiter gets a connection, or None: a slot is free, connect yourself.
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()

    async def acquire(self, connect_timeout: float, *, fresh: bool = False) -> _Connection:
        """An idle connection (unless `fresh`), a new one, or the next one freed."""
        while True:
            while self.idle and not fresh:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn
            if len(self.open) + self.connecting < self.limit:
                return await self._connect(connect_timeout)
            if fresh and self.idle:
                # Make room: its slot is handed on once the close is reported.
                self.idle.pop(0).close()
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                # Pass on whatever was handed to us just before the cancel.
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()
                    if handed is None:
                        self._hand(None)
                    else:
                        self.put(handed)
                raise
            if conn is not None and not conn.closed:
                return conn

    async def _connect(self, timeout: float) -> _Connection:
        self.connecting += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.origin.host, self.origin.port
                )
        except BaseException as exc:
            self.connecting -= 1
            self._hand(None)  # the slot we held is free again
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                raise UnreachableError(
                    f"cannot connect to {self.origin.host_header}: {exc}"
                ) from exc
            raise
        self.connecting -= 1
        if conn.closed:
            self._hand(None)
            raise UpstreamError("upstream closed the connection on accepting it")
        self.open.add(conn)
        return conn

    def put(self, conn: _Connection) -> None:
        """An idle connection: to the first waiter, else onto the stack."""
        conn.reused = True
        if self._hand(conn):
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            if conn in self.idle:
                self.idle.remove(conn)
            self._hand(None)

    def sweep(self, now: float) -> None:
        while self.idle and now - self.idle[0].idle_since > IDLE_TIMEOUT:
            self.idle.pop(0).close()

    def close(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamError("the proxy is shutting down"))
        self.waiters.clear()
        for conn in list(self.open):
            conn.close()

    def _hand(self, conn: _Connection | None) -> bool:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False


class Client:
    """Pools of keep-alive connections, one per origin."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pools: dict[Origin, _Pool] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: MultiMapping[str],
        *,
        connect_timeout: float,
        read_timeout: float,
        whole_limit: int,
    ) -> Reply:
        """Send a bodiless request. Raises UnreachableError, UpstreamError or
        TimeoutError; retries once, for idempotent methods, when a reused
        connection turns out to have been closed before any answer came."""
        return await self.exchange(
            origin,
            method,
            encode_head(method, target, origin, headers),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            whole_limit=whole_limit,
        )

    async def exchange(
        self,
        origin: Origin,
        method: str,
        head: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
        whole_limit: int,
    ) -> Reply:
        """`request` with its head encoded already (`encode_head`): the bytes
        a bodiless request is. Raises as `request` does."""
        pool = self._pools.get(origin) or self._pool(origin)
        retry = method in IDEMPOTENT
        fresh = False
        while True:
            conn = await pool.acquire(connect_timeout, fresh=fresh)
            try:
                reply = await conn.send(head, method, read_timeout, whole_limit)
            except UpstreamError:
                if retry and conn.reused and not conn.got_bytes:
                    retry = False
                    fresh = True  # the other idle ones may be as stale
                    log.debug("stale keep-alive connection to %s; retrying", origin.host_header)
                    continue
                raise
            except BaseException:
                conn.close()  # cancelled mid-exchange: the answer is unwanted
                raise
            if reply.body is not None:
                conn.release()
            return reply

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        await asyncio.sleep(0)  # let the transports report themselves closed

    def _pool(self, origin: Origin) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools[origin] = _Pool(origin, self.limit, loop)
        if self._sweeper is None:
            self._sweeper = loop.call_later(IDLE_TIMEOUT / 6, self._sweep)
        return pool

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for pool in self._pools.values():
            pool.sweep(now)
        self._sweeper = loop.call_later(IDLE_TIMEOUT / 6, self._sweep)


def encode_head(method: str, target: str, origin: Origin, headers: MultiMapping[str]) -> bytes:
    parts = [f"{method} {target} HTTP/1.1\r\n"]
    if "Host" not in headers:
        parts.append(f"Host: {origin.host_header}\r\n")
    parts.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    parts.append("\r\n")
    text = "".join(parts)
    # One CR and one LF per line, or a value would smuggle in a header.
    if text.count("\n") != len(parts) or text.count("\r") != len(parts):
        raise ValueError("CR or LF in a request header or target")
    # surrogateescape: the bytes the client sent, even when not UTF-8.
    return text.encode("utf-8", "surrogateescape")
