"""BRC-103 message signatures: ECDSA under keys both peers derive (BRC-42).

A BRC-100 wallet's `createSignature({data, protocolID: [2, "auth message
signature"], keyID, counterparty})` signs SHA-256(data) with the BRC-42
child of its identity key for the invoice number
`2-auth message signature-<keyID>`; the other peer checks it with the
matching child of the signer's public key. The keyID is
"<the signer's nonce> <the other peer's session nonce>" (peer-to-peer/0103.md).
"""

from __future__ import annotations

import hashlib

from bsv import PrivateKey, PublicKey

INVOICE = "2-auth message signature-"


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sign(server: PrivateKey, peer: PublicKey, key_id: str, data: bytes) -> bytes:
    """A DER signature over `data` that `peer` can check (low-s, BRC-103)."""
    child = server.derive_child(peer, INVOICE + key_id)
    return child.sign(data, hasher=_sha256)


def verify(server: PrivateKey, peer: PublicKey, key_id: str, data: bytes, signature: bytes) -> bool:
    """Whether `signature` over `data` was made by `peer` for us under `key_id`."""
    try:
        child = peer.derive_child(server, INVOICE + key_id)
        return bool(child.verify(signature, data, hasher=_sha256))
    except Exception:  # bsv-sdk raises assorted types for malformed DER
        return False
