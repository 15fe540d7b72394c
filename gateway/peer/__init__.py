"""BRC-103 mutual authentication over HTTP (BRC-104), as @bsv/sdk's AuthFetch speaks it.

The handshake (`POST /.well-known/auth`, handshake.py) gives a client a
session nonce; every later request carrying `x-bsv-auth-*` headers is
checked against its signature and answered signed (guard.py), whatever
route it asks for. The authenticated identity key of the request is
`PEER` for the rest of the pipeline: its grants are kept for it, so a
client that cannot hold tokens (AuthFetch keeps no cookies) does not pay
twice for what it bought (payments/brc105.py).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from bsv import PublicKey

VERSION = "0.1"


@dataclass(frozen=True, slots=True)
class Peer:
    """The identity a request was signed by (BRC-103)."""

    identity: str  # compressed public key, lower-case hex
    key: PublicKey


# The authenticated identity of the request being served; None when unsigned.
PEER: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("peer", default=None)
