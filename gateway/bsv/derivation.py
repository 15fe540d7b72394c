"""BRC-29 payee keys: where a client must pay for one particular payment.

The client and the server each derive the same one-off key (BRC-42) from
their own private key and the other's public key, for the invoice number
`2-3241645161d8-<prefix> <suffix>`. The client pays P2PKH to that key; the
server recognises the output and can later spend it. No address is reused.
"""

from __future__ import annotations

from bsv import PrivateKey, PublicKey

PROTOCOL_ID = "3241645161d8"  # BRC-29, security level 2


def invoice_number(prefix: str, suffix: str) -> str:
    return f"2-{PROTOCOL_ID}-{prefix} {suffix}"


def p2pkh_script(public_key: PublicKey) -> bytes:
    # OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG
    return b"\x76\xa9\x14" + public_key.hash160() + b"\x88\xac"


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
