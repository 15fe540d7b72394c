"""The words the pages' Python says (the templates say the rest), as gettext messages.

Each is marked `_()` so Babel's extractor finds it (README, "Languages");
`%(name)s` fields are filled in after translation. `script_texts` are the
paywall script's words (it shows them as a payment goes along): the page
hands them over as JSON, translated.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.challenge.paywall.i18n import Speech


def _mark(message: str) -> str:
    """Marks a message for the extractor; translated where it is used."""
    return message


N_ = _mark

# Titles of error pages, by status: the page's heading, in the reader's language.
STATUS_TITLES: dict[int, str] = {
    400: N_("The request could not be understood"),
    401: N_("Sign-in needed"),
    402: N_("Payment required"),
    403: N_("Not allowed"),
    404: N_("Not found"),
    405: N_("This cannot be done here"),
    406: N_("Not available in this form"),
    408: N_("The request took too long"),
    409: N_("This was done already"),
    410: N_("No longer available"),
    413: N_("Too large"),
    415: N_("Not available in this form"),
    429: N_("Too many requests"),
    500: N_("Something went wrong"),
    501: N_("Not available"),
    502: N_("The service is not answering"),
    503: N_("Temporarily unavailable"),
    504: N_("The service took too long to answer"),
}


def status_title(status: int, speech: Speech) -> str:
    title = STATUS_TITLES.get(status)
    if title is None:
        title = N_("Something went wrong") if status >= 500 else N_("This did not work")
    return speech.gettext(title)


def advice(status: int, speech: Speech) -> str:
    """What a person can do about an error page's status."""
    _ = speech.gettext
    if status == 429:
        return _(
            "You have used the free requests for now. Wait a little and try again, or pay for more."
        )
    if status >= 500:
        return _(
            "The service behind this page is not answering right now. Try again in a few minutes."
        )
    return _("Check the address, or go back and try again.")


def buys_text(covers: str, lasts: int, service: str, speech: Speech) -> str:
    """What one payment gets a person, in words (never a route pattern, nor the
    route's description: the page's lead says that already, in the policy's language)."""
    _ = speech.gettext
    length = speech.duration(lasts)
    if covers == "tab":
        return _(
            "A prepaid balance with %(service)s: each use is taken from it, and what is left "
            "can be used for %(lasts)s."
        ) % {"service": service, "lasts": length}
    if covers == "route":
        return _("You can open everything of this kind as often as you like for %(lasts)s.") % {
            "lasts": length
        }
    return _("You can open it as often as you like for %(lasts)s.") % {"lasts": length}


def per_text(per: str, speech: Speech) -> str:
    """What a metered route's price is for: one request, a megabyte, a unit."""
    _ = speech.gettext
    return {
        "request": _("for each use"),
        "mb": _("for each megabyte"),
        "unit": _("for each unit"),
    }.get(per, _("for each use"))


def script_texts(speech: Speech) -> dict[str, str]:
    """The paywall script's words (paywall.js fills `%(name)s` itself)."""
    _: Callable[[str], str] = speech.gettext
    return {
        "status_waiting": _("Waiting for your payment…"),
        "status_paying": _("Asking your wallet…"),
        "status_paid": _("Paid. Opening the page…"),
        "status_expired": _("This payment request expired. Making a new one…"),
        "status_refunded": _(
            "This payment was refunded by the service, so there is nothing to open. Reload "
            "the page to pay again."
        ),
        "status_expiring": _(
            "This payment request has expired. Checking once more for a payment sent just now…"
        ),
        "status_underpaid": _(
            "A payment of %(paid)s satoshis is less than the price of %(price)s and does not "
            "buy access. Pay the full price to continue. If your wallet already sent the "
            "smaller payment, ask the operator for a refund quoting its transaction."
        ),
        "status_sending": _("Sending your payment…"),
        "status_refused": _("The payment was not accepted: %(detail)s Nothing was charged."),
        "status_unknown": _(
            "No clear answer came back (%(detail)s), so your payment may have gone through. "
            "Trying again sends the same payment, which is never charged twice."
        ),
        "status_retry": _(
            "The payment could not be finished right now (%(detail)s). It may still go "
            "through: trying again sends the same payment, which is never charged twice."
        ),
        "status_resending": _("Sending it again in %(seconds)s seconds."),
        "status_kept": _(
            "Sending the payment made on this page again: it may have gone through already, "
            "and it is never charged twice…"
        ),
        "resend_button": _("Send the same payment again"),
        "no_answer": _("the connection failed before the answer"),
        "status_wallet_failed": _(
            "Your wallet did not make the payment (%(detail)s). Nothing was sent: try again "
            "when your wallet is ready."
        ),
        "status_phone_refused": _(
            "A payment for this page was not accepted: %(detail)s If your wallet already sent "
            "it, ask the operator for a refund quoting its transaction."
        ),
        "status_phone_not_now": _(
            "A payment for this page arrived but cannot be finished yet (%(detail)s). Still "
            "trying; do not pay again."
        ),
        "status_checkout_gone": _(
            "This payment request cannot be paid any more: %(detail)s Reload the page."
        ),
    }
