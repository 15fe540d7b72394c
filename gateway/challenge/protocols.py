"""What each payment protocol adds to a 402, beside BRC-121's headers and the body.

- BRC-105 (payments/0105.md), for a BRC-103 authenticated client only:
  `x-bsv-payment-version`, `-satoshis-required` and `-derivation-prefix`.
  After a refused `x-bsv-payment` the prefix it used is offered again when
  still good, so AuthFetch (which pays anew whenever the prefix changes)
  sends the same transaction instead of building a second one.
- x402 v2, scheme `exact` on `bsv:*` (payments/x402.py), on every 402:
  `PAYMENT-REQUIRED` (base64 JSON) asking the same satoshis of the same
  server key on the configured network; its `error` is the refusal reason
  when a payment was just refused. After a refused `PAYMENT-SIGNATURE` the
  402 also says `PAYMENT-RESPONSE` with `success: false` and `errorReason`,
  as x402's HTTP transport does for a failed settlement.
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import PaymentError
from gateway.payments import brc105, x402
from gateway.peer import PEER
from gateway.policy import Match
from gateway.services import Services

# Refusals of a client that holds what it asks for (a grant minted by an
# instance whose clock runs ahead): nothing is offered to pay, since
# AuthFetch and x402 clients pay whatever a 402 offers.
HOLDS_IT = frozenset({"grant-not-yet-valid"})
# Refusals a payment cannot recover from by being sent again: a new prefix.
_NEW_PREFIX = frozenset({"stale-time", "unknown-prefix"})
# Cross-origin scripts may read what a payment request says.
EXPOSE = "x-bsv-payment-version, x-bsv-payment-satoshis-required, x-bsv-payment-derivation-prefix"
# Refusals of something other than the payment sent with the request: a tab
# that a payment just topped up, and that still cannot hold this request.
_NOT_THE_PAYMENT = frozenset({"tab-exhausted"})


def offer(
    services: Services,
    request: web.BaseRequest,
    match: Match,
    origin: str,
    satoshis: int,
    answer: web.StreamResponse,
    refused: PaymentError | None = None,
) -> None:
    """Add every protocol's payment request for `satoshis` to the 402 `answer`.

    `origin` is scheme://host as the client used it (a trusted proxy's word).
    """
    holds = refused is not None and refused.reason in HOLDS_IT
    peer = PEER.get()
    if peer is not None and services.peers is not None and not holds:
        nonces = services.peers.nonces
        prefix = None
        if refused is None or refused.reason not in _NEW_PREFIX:
            prefix = brc105.issued_prefix(request.headers.get(brc105.HEADER), peer, nonces)
        headers = answer.headers
        headers["x-bsv-payment-version"] = brc105.VERSION
        headers[brc105.REQUIRED] = str(satoshis)
        headers[brc105.PREFIX] = prefix or nonces.prefix(peer.key.serialize())
        _expose(answer, EXPOSE)
    _offer_x402(services, request, match, origin, satoshis, answer, refused)


def _offer_x402(
    services: Services,
    request: web.BaseRequest,
    match: Match,
    origin: str,
    satoshis: int,
    answer: web.StreamResponse,
    refused: PaymentError | None,
) -> None:
    network = services.x402_network
    error = refused.reason if refused is not None else "payment-required"
    required = x402.requirements(
        satoshis,
        network,
        services.server_key,
        origin + request.raw_path,
        match.route.route.description or match.service.service.description,
        error,
    )
    if refused is not None and refused.reason in HOLDS_IT:
        required["accepts"] = []  # nothing to pay: what it holds opens shortly
    answer.headers[x402.REQUIRED] = x402.encode(required)
    exposed = x402.REQUIRED
    signature = request.headers.get(x402.HEADER)
    if signature is not None and refused is not None and refused.reason not in _NOT_THE_PAYMENT:
        answer.headers[x402.RESPONSE] = x402.refused(
            signature, refused.reason, refused.detail, network
        )
        exposed += ", " + x402.RESPONSE
    _expose(answer, exposed)


def _expose(answer: web.StreamResponse, names: str) -> None:
    """Let scripts on other origins read `names` too (beside what the answer exposes)."""
    expose = answer.headers.get("Access-Control-Expose-Headers")
    answer.headers["Access-Control-Expose-Headers"] = f"{expose}, {names}" if expose else names
