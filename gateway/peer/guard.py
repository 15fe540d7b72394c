"""Authenticated requests in, signed answers out (BRC-104 general messages).

A request with `x-bsv-auth-*` headers is checked before anything else sees
it: its session nonce must be one this deployment issued to that identity
key (nonces.py, no shared session table), its signature must cover the
request as sent (wire.py: method, path, query, the signed headers and the
whole body), and its nonce must not have been seen before (the store
remembers each for the session's lifetime, across workers and instances).
A request failing any of these gets a 401 problem with its reason,
unsigned: AuthFetch takes such a 401 as a stale session and handshakes
again. The request is then served as any other, with `PEER` set.

Signing needs the whole answer, so while an authenticated request is
served its body and answer are held in memory up to `limit` bytes
(edge/bodies.py tells the proxy); a longer answer becomes a clear problem
instead of a broken signature. Unsigned clients keep streaming.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from aiohttp import web
from bsv import PrivateKey
from multidict import CIMultiDict

from gateway.edge import bodies
from gateway.edge.problems import problem
from gateway.peer import PEER, VERSION, Peer
from gateway.peer.handshake import HandshakeError, answer, identity_key
from gateway.peer.nonces import BadNonce, Nonces
from gateway.peer.signatures import sign, verify
from gateway.peer.wire import answer_payload, request_payload
from gateway.store import StoreUnavailable, Window

log = logging.getLogger("farebox.peer")

PREFIX = "x-bsv-auth-"
HEADERS = ("version", "identity-key", "nonce", "your-nonce", "request-id", "signature")
_NAMES = tuple(PREFIX + name for name in HEADERS)
MAX_HANDSHAKE = 16 * 1024  # bytes: an initialRequest is a few hundred
DEFAULT_LIMIT = 8 * 1024 * 1024  # bytes of an authenticated request's body or answer

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Seen(Protocol):
    """What replay detection needs of the store: a counter that expires."""

    async def hit(self, key: str, window: int) -> Window: ...


class Authenticator:
    """BRC-103/104 for one server key: the handshake and the guard around requests."""

    def __init__(
        self,
        server: PrivateKey,
        seen: Seen | None,
        *,
        lifetime: int = 600,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.server = server
        self.identity = server.public_key().serialize().hex()
        self.nonces = Nonces(server, lifetime)
        self.seen = seen
        self.limit = limit  # bytes held of one request body, and of one answer

    @staticmethod
    def asks(request: web.BaseRequest) -> bool:
        """Whether a request claims to be authenticated (any of BRC-104's request headers).

        Asked of every request: a few keyed lookups, not a walk over its headers.
        """
        headers = request.headers
        return any(name in headers for name in _NAMES)

    async def handshake(self, request: web.BaseRequest) -> web.Response:
        """POST /.well-known/auth: answer an initialRequest (BRC-103, 0104.md)."""
        raw = await bodies.read_body(request, MAX_HANDSHAKE)
        try:
            if len(raw) > MAX_HANDSHAKE:
                raise HandshakeError("bad-auth-message", "the handshake body is too large")
            try:
                message = json.loads(raw)
            except (ValueError, RecursionError):
                raise HandshakeError(
                    "bad-auth-message", "the handshake body must be JSON"
                ) from None
            reply = answer(self.server, self.nonces, message)
        except HandshakeError as exc:
            return problem(400, exc.reason, "Bad handshake", exc.detail)
        return web.json_response(
            reply,
            headers={
                "x-bsv-auth-version": VERSION,
                "x-bsv-auth-message-type": "initialResponse",
                "x-bsv-auth-identity-key": self.identity,
                "x-bsv-auth-nonce": reply["initialNonce"],
                "x-bsv-auth-your-nonce": reply["yourNonce"],
                "x-bsv-auth-signature": bytes(reply["signature"]).hex(),
            },
        )

    async def serve(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        """Check a request's signature, serve it with `PEER` set, sign the answer."""
        try:
            peer, client_nonce, request_id, body = await self._open(request)
        except _Refused as refused:
            if refused.session is None:
                return refused.answer()
            # The session is ours and the refusal is not about the signature:
            # signed, so the client reads it as an answer, not a broken one.
            return _seal(refused.answer(), partial(self._sign, *refused.session))
        signer = partial(self._sign, peer, client_nonce, request_id)
        reset = (
            PEER.set(peer),
            bodies.BUFFERED.set(body),
            bodies.WHOLE_ANSWER.set(self.limit),
            bodies.SIGNER.set(signer),
        )
        try:
            response = await handler(request)
        finally:
            PEER.reset(reset[0])
            bodies.BUFFERED.reset(reset[1])
            bodies.WHOLE_ANSWER.reset(reset[2])
            bodies.SIGNER.reset(reset[3])
        return _seal(response, signer)

    async def _open(self, request: web.BaseRequest) -> tuple[Peer, str, bytes, bytes | None]:
        """(peer, client session nonce, request id, body read) of a good request; _Refused."""
        headers = request.headers
        values = {name: headers.get(PREFIX + name, "") for name in HEADERS}
        missing = [PREFIX + n for n, v in values.items() if not v]
        if missing:
            raise _Refused("auth-malformed", f"missing {', '.join(missing)}", 400)
        if values["version"] != VERSION:
            raise _Refused(
                "unsupported-auth-version", f"this server speaks BRC-103 version {VERSION}", 400
            )
        try:
            key = identity_key(values["identity-key"])
        except HandshakeError as exc:
            raise _Refused(exc.reason, exc.detail, 400) from None
        peer = Peer(key.serialize().hex(), key)
        try:
            session = self.nonces.open_session(key.serialize(), values["your-nonce"])
        except BadNonce as exc:
            raise _Refused("auth-session-unknown", str(exc), 401) from None
        try:
            request_id = base64.b64decode(values["request-id"], validate=True)
            signature = bytes.fromhex(values["signature"])
        except (binascii.Error, ValueError):
            raise _Refused(
                "auth-malformed", "request id must be base64, signature hex", 400
            ) from None
        if not 1 <= len(request_id) <= 64 or not 1 <= len(signature) <= 80:
            raise _Refused("auth-malformed", "request id or signature of a wrong size", 400)
        body: bytes | None = None
        if request.body_exists:
            if headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await bodies.read_body(request, self.limit)
            if len(body) > self.limit:
                raise _Refused(
                    "body-too-large",
                    f"authenticated request bodies are signed whole: at most {self.limit} bytes",
                    413,
                    session=(peer, session.client_nonce, request_id),
                )
        key_id = f"{values['nonce']} {values['your-nonce']}"
        items = list(headers.items())
        signed = verify(
            self.server,
            key,
            key_id,
            request_payload(request_id, request.method, request.raw_path, items, body or None),
            signature,
        )
        if not signed and not body:
            # An empty body is signed as absent (-1) by AuthFetch, or as zero
            # bytes by a client that passed an empty buffer: either is honest.
            signed = verify(
                self.server,
                key,
                key_id,
                request_payload(request_id, request.method, request.raw_path, items, b""),
                signature,
            )
        if not signed:
            raise _Refused(
                "auth-bad-signature",
                "the request signature does not cover this request from this identity key",
                401,
            )
        if self.seen is not None:
            digest = hashlib.sha256(key.serialize() + values["nonce"].encode()).hexdigest()[:32]
            try:
                window = await self.seen.hit(f"peer-nonce:{digest}", self.nonces.lifetime + 60)
            except StoreUnavailable:
                raise _Refused(
                    "store-unavailable",
                    "authenticated requests are paused: replays cannot be refused now",
                    503,
                ) from None
            if window.count > 1:
                raise _Refused("auth-replayed", "this signed request was received before", 401)
        return peer, session.client_nonce, request_id, body

    def _sign(
        self,
        peer: Peer,
        client_nonce: str,
        request_id: bytes,
        status: int,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> None:
        """Sign an answer as the client will read it: add the x-bsv-auth-* headers.

        A signed answer is one client's: no shared cache may keep it. An
        `Authorization` header in an answer (an upstream's; Farebox sends
        none) would be signed but read merged or mangled by a fetch client.
        """
        headers.popall("Authorization", None)
        headers["Cache-Control"] = "no-store"
        nonce = base64.b64encode(os.urandom(32)).decode()
        payload = answer_payload(request_id, status, headers.items(), body)
        signature = sign(self.server, peer.key, f"{nonce} {client_nonce}", payload)
        headers.update(
            {
                "x-bsv-auth-version": VERSION,
                "x-bsv-auth-identity-key": self.identity,
                "x-bsv-auth-nonce": nonce,
                "x-bsv-auth-your-nonce": client_nonce,
                "x-bsv-auth-request-id": base64.b64encode(request_id).decode(),
                "x-bsv-auth-signature": signature.hex(),
            }
        )


def _seal(response: web.StreamResponse, signer: bodies.Signer) -> web.StreamResponse:
    """The answer signed, unless it was written (and signed) already by the proxy."""
    if response.prepared:
        if "x-bsv-auth-signature" not in response.headers:
            # Written unsigned (a bug): nothing can be signed now.
            log.error("an authenticated request was answered unsigned (%s)", response.status)
        return response
    assert isinstance(response, web.Response)
    body = response.body
    if body is None:
        body = b""
    if not isinstance(body, bytes | bytearray):
        response = problem(
            500, "answer-unsignable", "Cannot sign this answer", "its body is not in memory"
        )
        body = response.body
        assert isinstance(body, bytes)
    signer(response.status, response.headers, bytes(body))
    return response


class _Refused(Exception):
    def __init__(
        self,
        reason: str,
        detail: str,
        status: int,
        *,
        session: tuple[Peer, str, bytes] | None = None,  # to sign the refusal with
    ) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.status = reason, detail, status
        self.session = session

    def answer(self) -> web.Response:
        titles = {400: "Bad authentication", 401: "Not authenticated", 413: "Body too large"}
        response = problem(
            self.status, self.reason, titles.get(self.status, "Not available"), self.detail
        )
        if self.status == 503:
            response.headers["Retry-After"] = "5"
        return response
