"""Every URL Farebox answers itself, in one place.

The policy never routes these: `is_own` is asked before any policy match,
so no upstream can shadow them and no price applies to them.
"""

from __future__ import annotations

WELL_KNOWN = "/.well-known/farebox/"
PAY = WELL_KNOWN + "pay"  # POST a payment in the body
TAB = WELL_KNOWN + "tab"  # GET the balance of the presented tab
RECEIPTS = WELL_KNOWN + "receipts/"  # + txid: the payer's receipt
CHECKOUT = WELL_KNOWN + "checkout/"  # + short id or ticket: pay a checkout, ask its status
TRANSPARENCY = WELL_KNOWN + "transparency"  # the public report
PRICES = WELL_KNOWN + "prices"  # the public price list
ASSETS = WELL_KNOWN + "assets"  # + /name: the paywall's CSS and script
PAYOUTS = WELL_KNOWN + "payouts/"  # + campaign/digest/ticket: a participant's payout
P2PKH = WELL_KNOWN + "p2pkh/"  # + public key: its P2PKH locking script
AUTH = WELL_KNOWN + "auth"  # nginx auth_request
JWKS = "/.well-known/jwks.json"
PEER_AUTH = "/.well-known/auth"  # BRC-104: the BRC-103 handshake (AuthFetch)
HEALTH = "/healthz"
READY = "/readyz"


def is_own(path: str) -> bool:
    """Whether a canonical path is one of Farebox's own URLs."""
    return path.startswith(WELL_KNOWN) or path in (JWKS, HEALTH, READY, PEER_AUTH)
