"""What each payment protocol adds to a 402, beside BRC-121's headers and the body.

- BRC-105 (payments/0105.md), for a BRC-103 authenticated client only:
  `x-bsv-payment-version`, `-satoshis-required` and `-derivation-prefix`.
  After a refused `x-bsv-payment` the prefix it used is offered again when
  still good, so AuthFetch (which pays anew whenever the prefix changes)
  sends the same transaction instead of building a second one.
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import PaymentError
from gateway.payments import brc105
from gateway.peer import PEER
from gateway.services import Services

# Refusals a payment cannot recover from by being sent again: a new prefix.
_NEW_PREFIX = frozenset({"stale-time", "unknown-prefix"})
# Cross-origin scripts may read what a payment request says.
EXPOSE = "x-bsv-payment-version, x-bsv-payment-satoshis-required, x-bsv-payment-derivation-prefix"


def offer(
    services: Services,
    request: web.BaseRequest,
    satoshis: int,
    answer: web.StreamResponse,
    refused: PaymentError | None = None,
) -> None:
    """Add every protocol's payment request for `satoshis` to the 402 `answer`."""
    peer = PEER.get()
    if peer is not None and services.peers is not None:
        nonces = services.peers.nonces
        prefix = None
        if refused is None or refused.reason not in _NEW_PREFIX:
            prefix = brc105.issued_prefix(request.headers.get(brc105.HEADER), peer, nonces)
        headers = answer.headers
        headers["x-bsv-payment-version"] = brc105.VERSION
        headers[brc105.REQUIRED] = str(satoshis)
        headers[brc105.PREFIX] = prefix or nonces.prefix(peer.key.serialize())
        expose = headers.get("Access-Control-Expose-Headers")
        headers["Access-Control-Expose-Headers"] = f"{expose}, {EXPOSE}" if expose else EXPOSE
