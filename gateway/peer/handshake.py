"""The BRC-103 handshake: an initialRequest answered with a signed initialResponse.

peer-to-peer/0103.md: the client sends its identity key and a fresh nonce;
the server answers its own session nonce and signs client nonce ‖ server
nonce (both base64-decoded) under keyID "<client nonce> <server nonce>"
for the client. Farebox requests no certificates and offers none.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from bsv import PrivateKey, PublicKey

from gateway.peer import VERSION
from gateway.peer.nonces import BadNonce, Nonces
from gateway.peer.signatures import sign

_PUBKEY = re.compile(r"0[23][0-9a-fA-F]{64}")
NO_CERTIFICATES: dict[str, Any] = {"certifiers": [], "types": {}}


class HandshakeError(ValueError):
    """A handshake message that cannot be answered (400, with its machine-readable reason)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def identity_key(value: object) -> PublicKey:
    """A compressed public key in hex -> PublicKey; raises HandshakeError."""
    if not isinstance(value, str) or not _PUBKEY.fullmatch(value):
        raise HandshakeError(
            "bad-identity-key", "identityKey must be a compressed public key (hex)"
        )
    try:
        return PublicKey(value)
    except Exception:  # bsv-sdk raises assorted types for points off the curve
        raise HandshakeError("bad-identity-key", "identityKey is not a valid public key") from None


def answer(server: PrivateKey, nonces: Nonces, message: object) -> dict[str, Any]:
    """The initialResponse to an initialRequest (a parsed JSON object); raises HandshakeError."""
    if not isinstance(message, dict):
        raise HandshakeError("bad-auth-message", "the handshake body must be a JSON object")
    if message.get("version") != VERSION:
        raise HandshakeError(
            "unsupported-auth-version", f"this server speaks BRC-103 version {VERSION}"
        )
    kind = message.get("messageType")
    if kind != "initialRequest":
        raise HandshakeError(
            "unsupported-auth-message",
            f"{kind!r} is not answered here: Farebox takes an initialRequest and asks no certificates",
        )
    client = identity_key(message.get("identityKey"))
    client_nonce = message.get("initialNonce")
    try:
        session = nonces.session(client.serialize(), client_nonce)  # type: ignore[arg-type]
    except BadNonce:
        raise HandshakeError(
            "bad-nonce", "initialNonce must be base64 of at most 96 bytes"
        ) from None
    assert isinstance(client_nonce, str)
    data = base64.b64decode(client_nonce) + base64.b64decode(session)
    signature = sign(server, client, f"{client_nonce} {session}", data)
    return {
        "version": VERSION,
        "messageType": "initialResponse",
        "identityKey": server.public_key().serialize().hex(),
        "initialNonce": session,
        "yourNonce": client_nonce,
        "requestedCertificates": NO_CERTIFICATES,
        "signature": list(signature),
    }
