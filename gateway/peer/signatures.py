"""BRC-103 message signatures: ECDSA under keys both peers derive (BRC-42).

A BRC-100 wallet's `createSignature({data, protocolID: [2, "auth message
signature"], keyID, counterparty})` signs SHA-256(data) with the BRC-42
child of its identity key for the invoice number
`2-auth message signature-<keyID>`; the other peer checks it with the
matching child of the signer's public key. The keyID is
"<the signer's nonce> <the other peer's session nonce>" (peer-to-peer/0103.md).

Every signed request and answer derives two keys with a fresh keyID, so
the ECDH shared secret of (server key, peer key) — the costly point
multiplication, the same for every keyID — is cached per peer; what is left
per message is an HMAC, a tweak and the ECDSA itself (bsv-sdk's native
secp256k1). Without the native module it falls back to bsv-sdk's
`derive_child`, which computes the same keys.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from bsv import PrivateKey, PublicKey
from bsv.native import NATIVE_AVAILABLE
from bsv.native import NATIVE_MODULE as _native

INVOICE = "2-auth message signature-"
SHARED_CACHE = 16_384  # peers whose shared secret is kept (~100 bytes each)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@lru_cache(maxsize=SHARED_CACHE)
def _shared(secret: bytes, peer: bytes) -> bytes:
    """BRC-42's shared secret: the compressed point secret * peer."""
    return bytes(_native.pubkey_tweak_mul(peer, secret, True))


def _tweak(server: PrivateKey, peer: PublicKey, key_id: str) -> bytes:
    shared = _shared(server.serialize(), peer.serialize())
    return hmac.new(shared, (INVOICE + key_id).encode("utf-8"), hashlib.sha256).digest()


def sign(server: PrivateKey, peer: PublicKey, key_id: str, data: bytes) -> bytes:
    """A DER signature over `data` that `peer` can check (low-s, BRC-103)."""
    if NATIVE_AVAILABLE:
        try:
            child = _native.seckey_tweak_add(server.serialize(), _tweak(server, peer, key_id))
            return bytes(_native.ecdsa_sign(_sha256(data), child))
        except Exception:  # a tweak at or past the curve order (p ~ 2^-128): the slow way
            pass
    child_key = server.derive_child(peer, INVOICE + key_id)
    return child_key.sign(data, hasher=_sha256)


def verify(server: PrivateKey, peer: PublicKey, key_id: str, data: bytes, signature: bytes) -> bool:
    """Whether `signature` over `data` was made by `peer` for us under `key_id`."""
    try:
        if NATIVE_AVAILABLE:
            try:
                child = _native.pubkey_tweak_add(
                    peer.serialize(), _tweak(server, peer, key_id), True
                )
            except Exception:  # see sign: derive it the slow way
                child = peer.derive_child(server, INVOICE + key_id).serialize()
            return bool(_native.ecdsa_verify(signature, _sha256(data), bytes(child)))
        return bool(peer.derive_child(server, INVOICE + key_id).verify(signature, data, _sha256))
    except Exception:  # bsv-sdk raises assorted types for malformed DER
        return False
