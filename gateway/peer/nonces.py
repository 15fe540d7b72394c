"""Nonces this deployment issues and can check again anywhere, without state.

Every instance holding the server key derives the same secret, so a nonce
issued by one worker or instance is checked by any other by its HMAC
(BRC-103 leaves the nonce's form to its issuer; @bsv/sdk's own are 16
random bytes and an HMAC). Two kinds:

- a BRC-103 session nonce: the client's initial nonce rides inside it, so an
  authenticated request alone tells which session it belongs to and what to
  answer in `x-bsv-auth-your-nonce` — no session table to share. It also
  carries when it was issued: sessions end after `lifetime` seconds, and the
  client (AuthFetch) handshakes again on the 401 that follows.
- a BRC-105 derivation prefix: issued in a 402 to one identity key, with its
  issue time, so a payment is held to the freshness window from the moment
  it was asked for, and a prefix from elsewhere is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from dataclasses import dataclass

from bsv import PrivateKey

_SESSION, _PREFIX = b"\x01", b"\x02"
_TAG = 16  # bytes of HMAC-SHA256 kept: 128 bits
MAX_CLIENT_NONCE = 96  # bytes; @bsv/sdk sends 48


class BadNonce(ValueError):
    """A nonce this deployment did not issue, or one that has expired."""


@dataclass(frozen=True, slots=True)
class Session:
    """What an authenticated request's session nonce says."""

    client_nonce: str  # base64, as the client sent it in its initialRequest
    issued: int  # unix seconds


class Nonces:
    """Issue and check session nonces and payment prefixes for one server key."""

    def __init__(self, server_key: PrivateKey, lifetime: int = 600) -> None:
        self._secret = hmac.new(
            server_key.serialize(), b"farebox brc-103 nonces v1", hashlib.sha256
        ).digest()
        self.lifetime = lifetime  # seconds a session lasts

    def _tag(self, *parts: bytes) -> bytes:
        return hmac.new(self._secret, b"".join(parts), hashlib.sha256).digest()[:_TAG]

    def session(self, identity: bytes, client_nonce: str, now: float | None = None) -> str:
        """A session nonce for `identity` (compressed key bytes) and its client nonce.

        Raises BadNonce when the client nonce is not base64 of 1-96 bytes.
        """
        raw = _decode(client_nonce, MAX_CLIENT_NONCE)
        issued = int(time.time() if now is None else now).to_bytes(8, "big")
        body = _SESSION + issued + raw
        return base64.b64encode(body + self._tag(body, identity)).decode()

    def open_session(self, identity: bytes, nonce: str, now: float | None = None) -> Session:
        """The session behind `nonce`, presented by `identity`; raises BadNonce."""
        raw = _decode(nonce, 1 + 8 + MAX_CLIENT_NONCE + _TAG)
        body, tag = raw[:-_TAG], raw[-_TAG:]
        if len(body) < 10 or body[:1] != _SESSION:
            raise BadNonce("not a session nonce of this server")
        if not hmac.compare_digest(tag, self._tag(body, identity)):
            raise BadNonce("not a session nonce this server issued to this identity key")
        issued = int.from_bytes(body[1:9], "big")
        age = (time.time() if now is None else now) - issued
        if age > self.lifetime or age < -60:
            raise BadNonce("the session has expired: authenticate again")
        return Session(base64.b64encode(body[9:]).decode(), issued)

    def prefix(self, identity: bytes, now: float | None = None) -> str:
        """A BRC-105 derivation prefix for `identity`, stamped with the time (ms)."""
        ms = int((time.time() if now is None else now) * 1000)
        body = _PREFIX + ms.to_bytes(8, "big") + os.urandom(8)
        return base64.b64encode(body + self._tag(body, identity)).decode()

    def open_prefix(self, identity: bytes, prefix: str) -> int:
        """When (unix ms) `prefix` was issued to `identity`; raises BadNonce."""
        raw = _decode(prefix, 1 + 8 + 8 + _TAG)
        body, tag = raw[:-_TAG], raw[-_TAG:]
        if len(raw) != 1 + 8 + 8 + _TAG or body[:1] != _PREFIX:
            raise BadNonce("not a derivation prefix of this server")
        if not hmac.compare_digest(tag, self._tag(body, identity)):
            raise BadNonce("not a derivation prefix this server issued to this identity key")
        return int.from_bytes(body[1:9], "big")


def _decode(text: object, most: int) -> bytes:
    if not isinstance(text, str) or not text or len(text) > (most + 2) // 3 * 4:
        raise BadNonce("a nonce must be base64 text")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadNonce("a nonce must be base64 text") from None
    if not raw or len(raw) > most:
        raise BadNonce("a nonce must be base64 text")
    if base64.b64encode(raw).decode() != text:
        # One text per nonce: it is echoed and signed as text (keyIDs).
        raise BadNonce("a nonce must be canonical base64")
    return raw
