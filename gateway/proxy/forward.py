"""Streaming reverse proxy to the upstream services.

Bodies stream both ways in bounded chunks (a 1 GiB download holds no more
than a few chunks in memory). Which header fields pass, both ways, is
proxy/headers.py's: hop-by-hop ones dropped, `X-Forwarded-*` set by us,
nothing under `X-Farebox-` or with an underscore in its name, the
credential cookie never, priced answers private to shared caches.
Bodiless requests to http:// upstreams go through proxy/upstream.py's
pooled client; `express` and `express_metered` are the short ways of a
token-paid request and of one drawn on a tab (the gateway's express path).
Upstream failures become problem+json: 502 when it refuses or breaks, 504
when it is too slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Protocol

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.helpers import rfc822_formatted_time
from multidict import CIMultiDict
from yarl import URL

from gateway.edge import bodies, logs, metrics
from gateway.edge.forwarded import Network
from gateway.edge.lane import LaneRequest, Ready, Written, connection_line, status_line
from gateway.edge.problems import problem
from gateway.policy import Match
from gateway.pricing.tabs import TAB, Metering
from gateway.proxy.headers import (
    Encoded,
    answer_encoded,
    answer_headers,
    caching,
    is_websocket,
    keep_private,
    response_headers,
    upstream_headers,
)
from gateway.proxy.upstream import (
    Client,
    Origin,
    Reply,
    UnreachableError,
    UpstreamError,
    encode_head,
)

log = logging.getLogger("farebox.proxy")

CHUNK = 64 * 1024
# Read small bodies whole: one write instead of several, which is most of the
# proxy's cost on typical API answers.
SMALL_BODY = 256 * 1024
# Bodiless requests to plain http:// upstreams go through gateway.upstream,
# far cheaper than ClientSession; the rest (bodies, https, WebSocket) do not.
FAST_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

_WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class Metered(Protocol):
    """What a metered request learns as its answer passes (gateway.tabs.Metering)."""

    async def answered(self, status: int) -> None:
        """The upstream answered `status`; nothing has gone to the client yet
        (a reward is owed here, before its headers promise it)."""

    def begin(self, status: int, headers: CIMultiDict[str]) -> None:
        """Headers are about to go: read what is needed, add what is owed."""

    def owed(self, status: int, headers: CIMultiDict[str]) -> list[tuple[str, str]]:
        """`begin` without adding to `headers`: the header fields it would add."""
        ...

    @property
    def by_bytes(self) -> bool:
        """Charged by the bytes delivered: keep the buffers small (HANG_UP_BOUND)."""
        ...

    def allow(self, size: int) -> int:
        """How many of the next `size` body bytes may be delivered."""
        ...

    def end(self) -> None:
        """The whole answer reached the client."""

    def withdraw(self) -> None:
        """Nothing of the answer reached the client after all: charge nothing."""


class Sink(Protocol):
    """Where a streamed answer is written: aiohttp's response, or the lane's
    connection (edge/lane.py). `write` raises ConnectionError once the
    client is gone."""

    async def start(
        self,
        request: LaneRequest,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        *,
        close: bool = False,
    ) -> None: ...
    async def write(self, chunk: bytes) -> None: ...
    async def drain(self) -> None: ...
    async def end(self) -> None: ...
    def abort(self) -> None: ...
    def closing(self) -> bool: ...


class _Prepared:
    """aiohttp's side of a Sink: a StreamResponse prepared on the request."""

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    async def start(
        self,
        request: object,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        *,
        close: bool = False,
    ) -> None:
        self.response = web.StreamResponse(status=status, reason=reason, headers=headers)
        if close:
            self.response.force_close()
        await self.response.prepare(self.request)

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def drain(self) -> None:
        await self.request.writer.drain()

    async def end(self) -> None:
        assert self.response is not None
        await self.response.write_eof()

    def abort(self) -> None:
        if self.request.transport is not None:
            self.request.transport.abort()

    def closing(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()


class Proxy:
    def __init__(
        self, *, connect_timeout: float, read_timeout: float, connections: int = 256
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[int | None, int | None], aiohttp.ClientTimeout] = {}
        self._client = Client(connections)
        self._origins: dict[str, tuple[Origin, str]] = {}
        # Says whether a bearer token is one Farebox issued (set by the server).
        self.own_token: Callable[[str], bool] | None = None
        self.trusted: tuple[Network, ...] = ()  # proxies whose X-Forwarded-* we keep
        # Upstream request heads made by `express`: (client head, address,
        # extra values) -> (the service it was made for, the head's bytes).
        self._heads: dict[tuple[object, ...], tuple[object, tuple[bytes, bytes]]] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=0, ttl_dns_cache=60, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # pass bytes through as the upstream encoded them
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
        )

    async def close(self) -> None:
        await self._client.close()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Proxy.start() was not awaited"
        return self._session

    def _timeout(self, match: Match) -> aiohttp.ClientTimeout:
        svc = match.service.service
        key = (svc.connect_timeout, svc.read_timeout)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None,
                sock_connect=svc.connect_timeout or self.connect_timeout,
                sock_read=svc.read_timeout or self.read_timeout,
            )
        return timeout

    def _origin(self, upstream: str) -> tuple[Origin, str]:
        """Where a plain-http upstream base URL connects, and its base path."""
        found = self._origins.get(upstream)
        if found is None:
            url = URL(upstream)
            assert url.raw_host is not None and url.port is not None
            origin = Origin(url.raw_host, url.port, url.host_port_subcomponent or url.raw_host)
            base = "" if url.raw_path == "/" else url.raw_path
            found = self._origins[upstream] = (origin, base)
        return found

    async def forward(
        self,
        request: web.BaseRequest,
        match: Match,
        extra: dict[str, str] | None = None,
        reply: CIMultiDict[str] | None = None,
        meter: Metered | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and stream the answer back.

        `extra` headers go upstream; `reply` headers are added to the answer
        (before it is sent, so streamed answers carry them too). With a
        `meter` the answer is always written here, not after the handler
        returns, so that what reached the client is known.
        """
        headers = upstream_headers(request, match, extra, self.own_token, self.trusted)
        whole = bodies.WHOLE_ANSWER.get()
        if whole is not None:
            # The answer is signed as the client will read it, and a client's
            # fetch decodes gzip itself: ask the upstream for plain bytes.
            headers.popall("Accept-Encoding", None)
        rid = logs.REQUEST_ID.get()
        if rid:
            # One id from the client through Farebox to the upstream and back.
            headers[logs.HEADER] = rid
            reply = _with_id(reply, rid)
        if meter is not None and is_websocket(request):
            return problem(
                400, "not-metered", "WebSocket not metered", "metered routes take plain HTTP"
            )
        if is_websocket(request):
            if whole is not None:
                return problem(
                    400,
                    "not-signable",
                    "WebSocket not signed",
                    "a WebSocket cannot be answered signed (BRC-104): connect without x-bsv-auth",
                )
            return await self._websocket(request, match, headers)
        buffered = bodies.BUFFERED.get()
        if buffered is None and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if _fast_path(request, match):
            return await self._forward_fast(request, match, headers, reply, meter)
        body: AsyncIterable[bytes] | bytes | None = None
        if buffered is not None:
            body = buffered
        elif request.body_exists:
            body = _stream(request.content)
        try:
            upstream = await self.session.request(
                request.method,
                URL(match.upstream_url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=self._timeout(match),
                compress=None,
            )
        except Exception as exc:
            if body is not None and not isinstance(body, bytes) and request.transport is None:
                # The client left while its body was streamed upstream: the
                # upstream did not fail, and nobody is left to answer.
                log.info("client left before sending all its request body: %s", _brief(exc))
                left = problem(
                    CLIENT_CLOSED_REQUEST,
                    "client-left",
                    "Client closed request",
                    "the client closed the connection before its request body was sent",
                )
                if reply:  # as _upstream_problem keeps them: a token just bought stands
                    left.headers.extend(reply)
                return left
            return _upstream_problem(exc, match, reply)
        try:
            return await self._relay(request, upstream, match, reply, meter)
        finally:
            upstream.release()

    async def _forward_fast(
        self,
        request: web.BaseRequest,
        match: Match,
        headers: CIMultiDict[str],
        reply_extra: CIMultiDict[str] | None,
        meter: Metered | None,
    ) -> web.StreamResponse:
        origin, target = self._target(match)
        timeout = self._timeout(match)
        try:
            reply = await self._client.request(
                origin,
                request.method,
                target,
                headers,
                connect_timeout=timeout.sock_connect or self.connect_timeout,
                read_timeout=timeout.sock_read or self.read_timeout,
                whole_limit=SMALL_BODY,
            )
        except Exception as exc:
            return _upstream_problem(exc, match, reply_extra)
        return await self._answer(request, match, reply, reply_extra, meter)

    def _target(self, match: Match) -> tuple[Origin, str]:
        """Where a plain-http upstream's request goes: its origin and request target."""
        upstream = match.service.upstream
        origin, base = self._origin(upstream)
        target = base + match.upstream_url[len(upstream) :]
        if not target.startswith("/"):
            target = "/" + target
        return origin, target

    async def express(
        self, request: LaneRequest, match: Match, extra: dict[str, str], *, rid: str
    ) -> Ready | web.StreamResponse:
        """`forward` for the gateway's express path (a lane request on a free
        route, or on a priced one admitted by a grant; no CORS, no signing): the same upstream
        request and the same answer, byte for byte. A whole answer to a GET
        comes back encoded (`Ready`), made from header lines kept per
        upstream header list; any other is answered as `forward` answers it.

        The upstream request's head is kept per client head, address and
        `extra` (the grant statement), with the request id put in each time.
        """
        try:
            got = await self._express_exchange(request, match, extra, rid)
        except Exception as exc:
            return _upstream_problem(exc, match, _with_id(None, rid))
        body, status = got.body, got.status
        if body is None or request.method != "GET" or status in _BODILESS:
            return await self._answer(request, match, got, _with_id(None, rid), None)
        encoded = answer_encoded(got.headers, not match.route.route.price.free)
        if not encoded.sound:
            return await self._answer(request, match, got, _with_id(None, rid), None)
        keep = request.keep_alive
        parts = [status_line(request.version, status, got.reason), encoded.lines]
        parts.append(b"%s: %s\r\n" % (logs.HEADER.encode(), rid.encode()))
        length = encoded.length
        if length is None:
            length = str(len(body))
            parts.append(b"Content-Length: %d\r\n" % len(body))
        if not encoded.typed and length != "0":
            parts.append(b"Content-Type: application/octet-stream\r\n")
        if not encoded.dated:
            parts.append(b"Date: %s\r\n" % rfc822_formatted_time().encode())
        parts.append(connection_line(request.version, keep))
        parts.append(b"\r\n")
        parts.append(body)
        return Ready(b"".join(parts), keep, status, rid)

    async def express_metered(
        self,
        request: LaneRequest,
        match: Match,
        extra: dict[str, str],
        tab: str,
        meter: Metering,
        *,
        rid: str,
    ) -> Ready | web.StreamResponse:
        """`express` for a metered request held on `tab` (pipeline/metering.py
        `express`): `forward`'s answer with the tab's id among its `reply`
        headers, told to `meter`, byte for byte. A whole answer to a GET is
        written here in one go (`_metered_whole`, then the connection's
        `put_whole`), awaiting only the upstream and, when the client is
        slower, the connection; any other goes the way `forward` answers it.
        """
        try:
            got = await self._express_exchange(request, match, extra, rid)
        except Exception as exc:
            return _upstream_problem(exc, match, _tab_reply(tab, rid))
        body, status = got.body, got.status
        if (
            body is None
            or request.method != "GET"
            or status in _BODILESS
            or meter.by_bytes  # streamed with small buffers (not an express route anyway)
        ):
            return await self._answer(request, match, got, _tab_reply(tab, rid), meter)
        encoded = answer_encoded(got.headers, not match.route.route.price.free)
        if not encoded.sound:
            return await self._answer(request, match, got, _tab_reply(tab, rid), meter)
        # The reply headers `forward` adds: X-Farebox-Tab and the request id,
        # neither one keep_private rewrites (headers.py `caching`), so the
        # upstream's lines stand as encoded.
        data, keep = _metered_whole(request, status, got.reason, encoded, tab, rid, meter, body)
        conn = request.conn
        # Written here: nothing left for the lane to write (its keep is
        # the connection's, as after a streamed answer).
        written = Ready(b"", keep, status, rid)
        try:
            if conn.put_whole(data):
                await conn.drain()
        except ConnectionError:
            log.debug("client left before its metered answer was written")
            written.keep = False
            return written
        meter.end()  # the last bytes went somewhere
        return written

    def _express_exchange(
        self, request: LaneRequest, match: Match, extra: dict[str, str], rid: str
    ) -> Awaitable[Reply]:
        """The express path's upstream exchange (its awaitable, so no frame is
        added on the hot path): the kept head with `rid` put in, a whole
        answer up to SMALL_BODY. Raises as `Client.exchange` does."""
        origin, _ = self._origin(match.service.upstream)
        timeout = self._timeout(match)
        return self._client.exchange(
            origin,
            request.method,
            rid.encode().join(self._express_head(request, match, extra)),
            connect_timeout=timeout.sock_connect or self.connect_timeout,
            read_timeout=timeout.sock_read or self.read_timeout,
            whole_limit=SMALL_BODY,
        )

    def _express_head(
        self, request: LaneRequest, match: Match, extra: dict[str, str]
    ) -> tuple[bytes, bytes]:
        """The upstream request's head before and after its request id's value.

        Kept per client head, address and `extra`, except on a free route
        for a request with an Authorization: whether its bearer token is
        stripped depends on whether it is ours (`own_token`), which the key
        ring decides, and the ring reloads.
        """
        key = (request.head, request.remote, *extra.values())
        keep = request.head and not (
            match.route.route.price.free and b"authorization" in request.names
        )
        kept = self._heads.get(key) if keep else None
        if kept is not None and kept[0] is match.service:  # not a service of a policy reloaded
            return kept[1]
        headers = upstream_headers(request, match, extra, self.own_token, self.trusted)
        # Where `forward` puts the id: in place of the client's, or last. NUL
        # marks it: llhttp lets no NUL into a target or a header value.
        headers[logs.HEADER] = "\x00"
        origin, target = self._target(match)
        before, _, after = encode_head(request.method, target, origin, headers).partition(b"\x00")
        head = (before, after)
        if keep:
            if len(self._heads) >= _HEADS_KEPT:
                self._heads.clear()
            self._heads[key] = (match.service, head)
        return head

    async def _answer(
        self,
        request: web.BaseRequest,
        match: Match,
        reply: Reply,
        reply_extra: CIMultiDict[str] | None,
        meter: Metered | None,
    ) -> web.StreamResponse:
        """The answer to the client for the upstream's `reply`."""
        priced = not match.route.route.price.free
        out = answer_headers(reply.headers, priced)
        if reply_extra:
            out.extend(reply_extra)
            if priced and any(caching(name) for name in reply_extra):
                keep_private(out)  # once more, with what Farebox adds (CORS's Vary)
        if meter is not None or reply.body is None or bodies.WHOLE_ANSWER.get() is not None:
            chunks = reply.chunks() if reply.body is None else _once(reply.body)
            try:
                return await self._stream(
                    request, reply.status, reply.reason, out, chunks, match, meter
                )
            finally:
                reply.release()
        if request.method == "HEAD" or reply.status in (204, 304):
            return web.Response(status=reply.status, reason=reply.reason, headers=out)
        return web.Response(status=reply.status, reason=reply.reason, headers=out, body=reply.body)

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        match: Match,
        reply_extra: CIMultiDict[str] | None,
        meter: Metered | None,
    ) -> web.StreamResponse:
        headers = response_headers(upstream.headers)
        if reply_extra:
            headers.extend(reply_extra)
        if not match.route.route.price.free:
            keep_private(headers)
        chunks = upstream.content.iter_chunked(CHUNK)
        if meter is not None or bodies.WHOLE_ANSWER.get() is not None:
            return await self._stream(
                request, upstream.status, upstream.reason, headers, chunks, match, meter
            )
        length = upstream.content_length
        if request.method == "HEAD" or upstream.status in (204, 304):
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None and length <= SMALL_BODY:
            try:
                body = await upstream.read()
            except Exception as exc:
                return _upstream_problem(exc, match, reply_extra)
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        return await self._stream(request, upstream.status, upstream.reason, headers, chunks, match)

    async def _stream(
        self,
        request: web.BaseRequest,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        chunks: AsyncIterable[bytes],
        match: Match,
        meter: Metered | None = None,
    ) -> web.StreamResponse:
        """Write the answer here, chunk by chunk (a body too big to read whole,
        or a metered one: then `meter` is told what reached the client)."""
        whole = bodies.WHOLE_ANSWER.get()
        if whole is not None:
            return await self._whole(request, status, reason, headers, chunks, match, meter, whole)
        by_bytes = meter is not None and meter.by_bytes
        if meter is not None:
            await meter.answered(status)
            meter.begin(status, headers)
        if by_bytes:
            _small_buffers(request)
        sink: Sink | _Prepared = (
            request.conn if isinstance(request, LaneRequest) else _Prepared(request)
        )
        try:
            # The small buffers stay with the socket: no later answer on this
            # connection should inherit them.
            await sink.start(request, status, reason, headers, close=by_bytes)  # type: ignore[arg-type]
            if request.method != "HEAD" and status not in (204, 304):
                async for chunk in chunks:
                    allowed = len(chunk) if meter is None else meter.allow(len(chunk))
                    if allowed:
                        await sink.write(chunk if allowed == len(chunk) else chunk[:allowed])
                        if by_bytes:
                            await sink.drain()  # keep the buffers small (HANG_UP_BOUND)
                    if allowed < len(chunk):
                        # Cut at what the tab held: close so the client sees it.
                        sink.abort()
                        return _written(sink, status, headers)
            await sink.end()
        except ConnectionError:
            # The client went away; releasing the upstream response (in
            # forward) drops that connection instead of reusing it.
            log.debug("client left before %s finished its response", match.service.name)
            return _written(sink, status, headers)
        except (TimeoutError, aiohttp.ClientError, UpstreamError) as exc:
            # Headers are gone already: the only honest signal left is to cut
            # the connection so the client sees a truncated response.
            log.warning("upstream %s broke mid-response: %s", match.service.name, _brief(exc))
            sink.abort()
            return _written(sink, status, headers)
        if meter is not None and not sink.closing():
            meter.end()  # the last bytes went somewhere
        return _written(sink, status, headers)

    async def _whole(
        self,
        request: web.BaseRequest,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        chunks: AsyncIterable[bytes],
        match: Match,
        meter: Metered | None,
        limit: int,
    ) -> web.StreamResponse:
        """The answer read whole, up to `limit` bytes, to be signed (BRC-104).

        Nothing reaches the client before the end, so an answer that is too
        long, cut by its meter, or broken midway is refused as a whole and
        charged nothing (`meter.withdraw`).
        """
        if meter is not None:
            await meter.answered(status)
            meter.begin(status, headers)
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        parts: list[bytes] = []
        size = 0
        refusal: web.Response | None = None
        if encoding != "identity":
            refusal = problem(
                502,
                "answer-encoded",
                "Answer cannot be signed",
                f"{match.service.name} answered {encoding}-encoded although asked for plain bytes",
            )
        elif request.method != "HEAD" and status not in (204, 304):
            try:
                async for chunk in chunks:
                    allowed = len(chunk) if meter is None else meter.allow(len(chunk))
                    size += allowed
                    if allowed < len(chunk) or size > limit:
                        refusal = problem(
                            502,
                            "answer-too-large",
                            "Answer too large to sign",
                            f"answers to authenticated requests are signed whole, at most "
                            f"{limit} bytes; ask without x-bsv-auth to have it streamed",
                        )
                        break
                    parts.append(chunk)
            except (TimeoutError, aiohttp.ClientError, UpstreamError) as exc:
                log.warning("upstream %s broke mid-response: %s", match.service.name, _brief(exc))
                refusal = problem(
                    502, "upstream-broken", "Bad gateway", f"{match.service.name} broke off"
                )
        if refusal is not None:
            if meter is not None:
                meter.withdraw()
            return refusal
        body = b"".join(parts)
        response = web.Response(status=status, reason=reason, headers=headers, body=body)
        signer = bodies.SIGNER.get()
        if meter is None or signer is None:
            return response  # signed by the caller (gateway/peer/guard.py)
        # Metered: sign and write it here, and charge only what reached the client.
        signer(status, response.headers, body)
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            log.debug("client left before %s finished its response", match.service.name)
            return response
        if request.transport is not None and not request.transport.is_closing():
            meter.end()
        return response

    async def _websocket(
        self, request: web.BaseRequest, match: Match, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
        try:
            upstream = await self.session.ws_connect(
                URL(match.upstream_url, encoded=True),
                headers=headers,
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10),
                max_msg_size=0,
                autoclose=False,
            )
        except Exception as exc:
            return _upstream_problem(exc, match)
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (), max_msg_size=0
        )
        try:
            await client.prepare(request)
            await _bridge(client, upstream)
        finally:
            await upstream.close()
        return client


async def _bridge(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    async def pump(src: _WebSocket, dst: _WebSocket) -> None:
        async for msg in src:
            if msg.type is WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
        await dst.close(code=src.close_code or 1000)

    tasks = [
        asyncio.ensure_future(pump(client, upstream)),
        asyncio.ensure_future(pump(upstream, client)),
    ]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


_HEADS_KEPT = 1024
_BODILESS = frozenset((204, 304, *range(100, 200)))  # RFC 9110 15.2, 15.3.5, 15.4.5


def _fast_path(request: web.BaseRequest, match: Match) -> bool:
    headers = request.headers
    return (
        request.method in FAST_METHODS
        and not request.body_exists
        and "Content-Length" not in headers
        and "Transfer-Encoding" not in headers
        and match.service.upstream.startswith("http://")
    )


def _with_id(reply: CIMultiDict[str] | None, rid: str) -> CIMultiDict[str]:
    """What `forward` adds to an answer: `reply`, and the request id (`express`
    makes it only for the answers it does not encode itself)."""
    out = CIMultiDict(reply or {})
    out[logs.HEADER] = rid
    return out


def _tab_reply(tab: str, rid: str) -> CIMultiDict[str]:
    """The reply headers `forward` adds to a metered answer drawn on `tab`."""
    return CIMultiDict(((TAB, tab), (logs.HEADER, rid)))


def _metered_whole(
    request: LaneRequest,
    status: int,
    reason: str,
    encoded: Encoded,
    tab: str,
    rid: str,
    meter: Metering,
    body: bytes,
) -> tuple[bytes, bool]:
    """A whole metered answer as one write, byte for byte as `_stream` writes
    it through the lane (`Lane.start`, `write`, `end`) with `forward`'s reply
    headers (the tab's id, the request id): chunked when the upstream gave
    no length (closed after, to an HTTP/1.0 client); and whether the
    connection stays open. The meter is told as `_stream` tells it, but for
    `answered`, which a tab's Metering does nothing on (an express route has
    no reward), and `allow`, which cuts only a meter by bytes (never here)."""
    # Metering.owed: two fields, the charge and the balance left.
    (charge, owed), (left, balance) = meter.owed(status, encoded.headers)
    text = f"{TAB}: {tab}\r\n{logs.HEADER}: {rid}\r\n{charge}: {owed}\r\n{left}: {balance}\r\n"
    if text.count("\n") != 4 or text.count("\r") != 4:
        raise ValueError("CR or LF in a response header")  # as _head refuses it
    keep = request.keep_alive
    version = request.version
    key = (version, status, reason)
    head = _status_lines.get(key)
    if head is None:
        if len(_status_lines) >= _STATUS_LINES_KEPT:
            _status_lines.clear()
        head = _status_lines[key] = status_line(version, status, reason)
    # as _head encodes them
    parts = [head, encoded.lines, text.encode("utf-8", "surrogateescape")]
    chunked = False
    if encoded.length is None:
        if version == "1.1":
            parts.append(b"Transfer-Encoding: chunked\r\n")
            chunked = True
        else:
            keep = False  # the end of the body is the end of the connection
    if not encoded.typed and encoded.length != "0":
        parts.append(b"Content-Type: application/octet-stream\r\n")
    if not encoded.dated:
        parts.append(b"Date: %s\r\n" % rfc822_formatted_time().encode())
    parts.append(connection_line(version, keep))
    parts.append(b"\r\n")
    if body:
        parts.append(b"%x\r\n%b\r\n" % (len(body), body) if chunked else body)
    if chunked:
        parts.append(b"0\r\n\r\n")
    return b"".join(parts), keep


# Status lines of metered express answers, per (version, status, reason).
_status_lines: dict[tuple[str, int, str], bytes] = {}
_STATUS_LINES_KEPT = 256


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


# A metered answer is charged for the bytes handed to the connection. With
# small buffers, a client that hangs up pays for little beyond what reached
# its machine (what it read, plus what its own receive buffer acknowledged);
# with the defaults it was megabytes. Measured on loopback: typically 35 kB,
# at most about 560 kB; HANG_UP_BOUND is the documented ceiling.
METERED_SEND_BUFFER = 32 * 1024  # SO_SNDBUF asked (Linux doubles it)
METERED_WRITE_BUFFER = 16 * 1024  # the transport's high-water mark
HANG_UP_BOUND = 768 * 1024  # bytes charged beyond what reached the client, at most


def _written(sink: Sink | _Prepared, status: int, headers: CIMultiDict[str]) -> web.StreamResponse:
    """The answer `_stream` wrote: aiohttp's prepared response, or the lane's record of it."""
    if isinstance(sink, _Prepared):
        assert sink.response is not None
        return sink.response
    return Written(status=status, headers=headers)


def _small_buffers(request: web.BaseRequest) -> None:
    """Keep little between the meter and the client on a metered answer."""
    transport = request.transport
    if transport is None:
        return
    with contextlib.suppress(OSError, AttributeError, ValueError):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, METERED_SEND_BUFFER)
        transport.set_write_buffer_limits(high=METERED_WRITE_BUFFER)


# nginx's status for a request its client closed before it was answered: never
# sent (nobody reads it), it tells the access log and metrics what happened.
CLIENT_CLOSED_REQUEST = 499


async def _stream(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    async for chunk in content.iter_chunked(CHUNK):
        yield chunk


def _upstream_problem(
    exc: BaseException, match: Match, reply: CIMultiDict[str] | None = None
) -> web.Response:
    """The problem answer for an upstream failure; `reply` headers (a token
    just bought) are kept on it: the purchase stands though the upstream failed."""
    status, reason, title, detail = _failure(exc, match.service.name)
    metrics.UPSTREAM_ERRORS.labels(match.service.name, reason).inc()
    response = problem(status, reason, title, detail)
    if reply:
        response.headers.extend(reply)
    return response


def _failure(exc: BaseException, name: str) -> tuple[int, str, str, str]:
    """Log an upstream failure; its status, reason, title and detail."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        log.warning("upstream %s timed out: %s", name, _brief(exc))
        return (
            504,
            "upstream-timeout",
            "Upstream timed out",
            f"service {name!r} did not answer in time",
        )
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        detail = f"service {name!r} refused the WebSocket upgrade (status {exc.status})"
        log.warning("upstream %s: %s", name, detail)
        return 502, "upstream-refused-upgrade", "Upstream refused WebSocket", detail
    if isinstance(exc, (aiohttp.ClientConnectorError, UnreachableError)):
        log.warning("upstream %s unreachable: %s", name, _brief(exc))
        return (
            502,
            "upstream-unreachable",
            "Upstream unreachable",
            f"service {name!r} refused the connection",
        )
    if isinstance(exc, (aiohttp.ClientError, OSError, UpstreamError)):
        log.warning("upstream %s failed: %s", name, _brief(exc))
        return (
            502,
            "upstream-failed",
            "Upstream failed",
            f"service {name!r} broke off or sent a bad response",
        )
    raise exc


def _brief(exc: BaseException) -> str:
    # aiohttp's messages can quote kilobytes of the upstream's bytes.
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:200] + "..."
