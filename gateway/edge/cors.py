"""Cross-origin payments: which pages on other origins may pay (BRC-121, BRC-105, x402).

A service lists the origins allowed (`cors_origins`, or "*" for any). For
them Farebox answers the browser's preflight for the payment headers and
marks its answers on priced routes readable (the token, the charge, the
balance), so a portal on another origin, or a browser extension, can pay
and read what it bought. No credentials mode: payments and tokens travel
in headers, never cookies, across origins.
"""

from __future__ import annotations

from multidict import CIMultiDict

# BRC-103/104 request signing (an AuthFetch in a page on another origin).
AUTH_HEADERS = (
    "x-bsv-auth-version, x-bsv-auth-identity-key, x-bsv-auth-nonce, x-bsv-auth-your-nonce, "
    "x-bsv-auth-request-id, x-bsv-auth-signature"
)
REQUEST_HEADERS = (
    "authorization, content-type, x-bsv-beef, x-bsv-sender, x-bsv-nonce, x-bsv-time, "
    "x-bsv-vout, x-bsv-payment, payment-signature, x-farebox-eligibility, " + AUTH_HEADERS
)
EXPOSE = (
    "x-bsv-sats, x-bsv-server, x-farebox-token, x-farebox-tab, x-farebox-charge, "
    "x-farebox-charge-limit, x-farebox-balance, ratelimit-limit, ratelimit-remaining, "
    "ratelimit-reset, retry-after, x-bsv-payment-version, x-bsv-payment-satoshis-required, "
    "x-bsv-payment-derivation-prefix, x-bsv-payment-satoshis-paid, payment-required, "
    "payment-response, " + AUTH_HEADERS
)
MAX_AGE = "600"


def allowed(origins: tuple[str, ...], origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for this origin, or None.

    `origins` is the service's `cors_origins` (lower-case, or "*").
    """
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin.lower() in origins else None


def answer_headers(allow: str) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(
        {"Access-Control-Allow-Origin": allow, "Access-Control-Expose-Headers": EXPOSE}
    )
    if allow != "*":
        headers["Vary"] = "Origin"
    return headers


def preflight_headers(allow: str, methods: tuple[str, ...]) -> CIMultiDict[str]:
    """The answer to a preflight for a route taking `methods` ("*" for any)."""
    headers = answer_headers(allow)
    headers["Access-Control-Allow-Methods"] = "*" if methods[0] == "*" else ", ".join(methods)
    headers["Access-Control-Allow-Headers"] = REQUEST_HEADERS
    headers["Access-Control-Max-Age"] = MAX_AGE
    return headers
