"""BRC-29 payee keys: where a client must pay for one particular payment.

The client and the server each derive the same one-off key (BRC-42) from
their own private key and the other's public key, for the invoice number
`2-3241645161d8-<prefix> <suffix>`. The client pays P2PKH to that key; the
server recognises the output and can later spend it. No address is reused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from bsv import PrivateKey, PublicKey
from bsv.curve import curve
from bsv.native import NATIVE_AVAILABLE
from bsv.native import NATIVE_MODULE as _native

PROTOCOL_ID = "3241645161d8"  # BRC-29, security level 2


def invoice_number(prefix: str, suffix: str) -> str:
    return f"2-{PROTOCOL_ID}-{prefix} {suffix}"


def p2pkh_script(public_key: PublicKey) -> bytes:
    # OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG
    return b"\x76\xa9\x14" + public_key.hash160() + b"\x88\xac"


def _has_ripemd160() -> bool:
    try:
        hashlib.new("ripemd160", b"")
    except ValueError:  # OpenSSL 3 without its legacy provider
        return False
    return True


_FAST = NATIVE_AVAILABLE and _has_ripemd160()


def payee_key(server: PrivateKey, sender: PublicKey, prefix: str, suffix: str) -> PublicKey:
    """The server's view: the public key the sender was to pay."""
    return server.derive_child(sender, invoice_number(prefix, suffix)).public_key()


def payee_key_for_sender(
    server: PublicKey, sender: PrivateKey, prefix: str, suffix: str
) -> PublicKey:
    """The sender's view of the same key (used by the client and tests)."""
    return server.derive_child(sender, invoice_number(prefix, suffix))


def spending_key(server: PrivateKey, sender: PublicKey, prefix: str, suffix: str) -> PrivateKey:
    """The private key that spends what was paid (for sweeping)."""
    return server.derive_child(sender, invoice_number(prefix, suffix))


class PayeeScripts:
    """`p2pkh_script(payee_key(server, sender, prefix, suffix))` for one server key, faster.

    The same BRC-42 arithmetic as bsv-sdk's `PrivateKey.derive_child` (shared
    secret = sender x server secret, scalar = HMAC-SHA256(shared, invoice),
    child secret = server secret + scalar mod n), straight on libsecp256k1
    (bsv-sdk's native backend) without building key objects, and hash160 by
    hashlib. The shared secret depends only on the server key and the
    sender's key, and a payer's identity key pays many times: it is kept for
    the `cache_size` most recent senders (the EC multiplication by an
    arbitrary point is most of a derivation). Without the native backend or
    hashlib's RIPEMD-160 it is bsv-sdk's code. Raises as `payee_key` does
    (ValueError for a derived secret of zero).
    """

    def __init__(self, server: PrivateKey, *, cache_size: int = 4096) -> None:
        self.server = server
        self._secret = server.serialize()  # 32 bytes, big-endian
        self._secret_int = int.from_bytes(self._secret, "big")
        self._shared: OrderedDict[tuple[bytes, bool], bytes] = OrderedDict()
        self._cache_size = cache_size

    def script(self, sender: PublicKey, prefix: str, suffix: str) -> bytes:
        """The P2PKH locking script (25 bytes) the sender was to pay."""
        if not _FAST:
            return p2pkh_script(payee_key(self.server, sender, prefix, suffix))
        shared = self.shared_secret(sender)
        scalar = hmac.digest(shared, invoice_number(prefix, suffix).encode("utf-8"), "sha256")
        child = (self._secret_int + int.from_bytes(scalar, "big")) % curve.n
        if child == 0:  # PrivateKey refuses it: raise what payee_key raises
            return p2pkh_script(payee_key(self.server, sender, prefix, suffix))
        # PrivateKey(int) is compressed, so is its public key (and its hash160)
        point = _native.pubkey_from_secret(child.to_bytes(32, "big"), True)
        digest = hashlib.new("ripemd160", hashlib.sha256(point).digest()).digest()
        return b"\x76\xa9\x14" + digest + b"\x88\xac"

    def shared_secret(self, sender: PublicKey) -> bytes:
        """`server.derive_shared_secret(sender)`, remembered per sender key."""
        key = (sender.serialize(), sender.compressed)
        shared = self._shared.get(key)
        if shared is None:
            shared = _native.pubkey_tweak_mul(key[0], self._secret, key[1])
            self._shared[key] = shared
            if len(self._shared) > self._cache_size:
                self._shared.popitem(last=False)
        return shared
