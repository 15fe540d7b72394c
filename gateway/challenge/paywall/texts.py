"""Every word the paywall page shows a person, in one place to translate.

A translation is another dict with the same keys under its language tag;
`texts(accept_language)` picks the best one the client asks for. Values are
plain text (the template escapes them); `{name}` fields are filled in by
`str.format` with the values the template passes.
"""

from __future__ import annotations

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        # The price list (prices.html).
        "prices_title": "Prices",
        "prices_lead": "What each service charges, and what a payment buys. Prices in a "
        "currency are paid in satoshis at the rate of the moment.",
        "prices_link": "All prices",
        "col_what": "What",
        "col_price": "Price",
        "col_buys": "A payment buys",
        "col_free": "Free",
        "free": "Free",
        "sats": "{n} satoshis",
        "fiat_now": "{amount} {currency} (about {sats} satoshis now)",
        "fiat_only": "{amount} {currency}",
        "per_request": "{price} a request, from a prepaid balance (top up from {top_up})",
        "per_mb": "{price} a megabyte, from a prepaid balance (top up from {top_up})",
        "per_unit": "{price} a unit, from a prepaid balance (top up from {top_up})",
        "buys_this": "this, for {lasts}",
        "buys_all": "everything here, for {lasts}",
        "quota": "{n} free every {per} per {counted}",
        "counted_network": "network",
        "counted_key": "key",
        "reward": "Taking part pays {pays} ({campaign})",
        "concessions_title": "Concessions",
        "concession_line": "{name}: {discount}% off. {description}",
        # Error pages (problem.html): what a person can do about each kind.
        "error_code": "Error",
        "advice_4xx": "Check the address, or go back and try again.",
        "advice_429": "You have used the free requests for now. Wait a little and try "
        "again, or pay for more.",
        "advice_5xx": "The service behind this page is not answering right now. Try again "
        "in a few minutes.",
        "title": "Payment required",
        "lead": "{service} charges a small fee for this.",
        "resource": "What you asked for",
        "price": "Price",
        "price_sats": "{satoshis} satoshis",
        "price_fiat": "about {amount} {currency} at {rate} {currency} per BSV",
        "concession": "{name}: {discount}% off (full price {full} satoshis)",
        "concessions_offered": "Concessions: if you hold a credential for {names}, your wallet "
        "can send it to get a lower price.",
        "buys": "What a payment buys",
        "buys_resource": "This page, for {lasts}.",
        "buys_route": "Everything matching {scope}, for {lasts}.",
        "buys_tab": "A prepaid balance for {service}: each use is charged from it.",
        "how": "How to pay",
        "how_phone": "With a phone wallet: scan the code. The wallet pays this exact amount "
        "to an address made for this page only.",
        "how_browser": "With a browser wallet (BRC-100) on this computer:",
        "pay_button": "Pay {satoshis} satoshis with my wallet",
        "no_wallet": "No BSV wallet answered on this computer. Install a BRC-100 desktop "
        "wallet (for example Metanet Desktop), start it, and try again, or scan the code "
        "with a phone wallet.",
        "uri_label": "Payment link",
        "status_waiting": "Waiting for your payment…",
        "status_paying": "Asking your wallet…",
        "status_paid": "Paid. Opening the page…",
        "status_expired": "This payment request expired. Making a new one…",
        "status_refunded": "This payment was refunded by the service, so there is nothing "
        "to open. Reload the page to pay again.",
        "status_expiring": "This payment request has expired. Checking once more for a "
        "payment sent just now…",
        "status_underpaid": "A payment of {paid} satoshis is less than the price of {price} "
        "and does not buy access. Pay the full price to continue. If your wallet already "
        "sent the smaller payment, ask the operator for a refund quoting its transaction.",
        "status_sending": "Sending your payment…",
        "status_refused": "The payment was not accepted: {detail} Nothing was charged.",
        "status_unknown": "No clear answer came back ({detail}), so your payment may have "
        "gone through. Trying again sends the same payment, which is never charged twice.",
        "status_retry": "The payment could not be finished right now ({detail}). It may "
        "still go through: trying again sends the same payment, which is never charged twice.",
        "status_resending": "Sending it again in {seconds} seconds.",
        "status_kept": "Sending the payment made on this page again: it may have gone "
        "through already, and it is never charged twice…",
        "resend_button": "Send the same payment again",
        "no_answer": "the connection failed before the answer",
        "status_wallet_failed": "Your wallet did not make the payment ({detail}). Nothing "
        "was sent: try again when your wallet is ready.",
        "status_phone_refused": "A payment for this page was not accepted: {detail} If your "
        "wallet already sent it, ask the operator for a refund quoting its transaction.",
        "status_phone_not_now": "A payment for this page arrived but cannot be finished yet "
        "({detail}). Still trying; do not pay again.",
        "status_checkout_gone": "This payment request cannot be paid any more: {detail} "
        "Reload the page.",
        "status_already": "This payment request was already paid; a second payment was not "
        "taken. Reload the page.",
        "expires": "This request is valid for {minutes} more minutes.",
        "refused_before": "Your last payment was not accepted: {detail}",
        "technical": "For programs",
        "technical_text": "Wallets and scripts can pay by BRC-121: the x-bsv-sats and "
        "x-bsv-server headers of this answer say how much and to whom.",
        "lasts_seconds_one": "{n} second",
        "lasts_minutes_one": "{n} minute",
        "lasts_hours_one": "{n} hour",
        "lasts_days_one": "{n} day",
        "lasts_seconds": "{n} seconds",
        "lasts_minutes": "{n} minutes",
        "lasts_hours": "{n} hours",
        "lasts_days": "{n} days",
    },
}

DEFAULT = "en"


def texts(accept_language: str | None) -> dict[str, str]:
    """The texts for the first language of Accept-Language we have, else English."""
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        for candidate in (tag, tag.split("-")[0]):
            if candidate in TEXTS:
                return TEXTS[candidate]
    return TEXTS[DEFAULT]


def duration(seconds: int, words: dict[str, str]) -> str:
    """A grant's length the way a person says it: '24 hours', '5 minutes'."""
    unit, n = "seconds", seconds
    for name, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            unit, n = name, seconds // size
            break
    return words[f"lasts_{unit}_one" if n == 1 else f"lasts_{unit}"].format(n=n)
