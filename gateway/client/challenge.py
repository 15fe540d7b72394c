"""Reading a 402: what is asked, by whom, and where a payment may go."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from bsv import PublicKey

from gateway.client.errors import BadChallenge
from gateway.edge.urls import PAY, TAB

_DIGITS = re.compile(r"[0-9]{1,16}")
_PUBKEY = re.compile(r"0[23][0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class TabTerms:
    """How a metered route draws on a prepaid tab, as its 402 says.

    Amounts are satoshis; charges may have fractions (down to a msat).
    """

    per: str  # "request", "unit" (reported by the upstream) or "mb" of response body
    unit_price: Decimal | None  # satoshis per unit
    most_units: Decimal | None  # the most units one request may use
    most_satoshis: Decimal | None  # the most one request may cost: held on the tab
    top_up: int  # the smallest top-up; any larger payment is credited in full
    balance: Decimal | None = None  # what the presented tab holds ("tab-exhausted")
    balance_url: str = TAB
    units_header: str | None = None  # per unit: where the upstream reports them


@dataclass(frozen=True, slots=True)
class Challenge:
    satoshis: int  # the price; for a tab the smallest top-up (more is credited in full)
    server: str  # server identity key, compressed hex
    pay_url: str  # relative to the gateway's origin
    reason: str  # "payment-required", or why a payment was just refused
    detail: str
    scope: str | None = None  # what a payment would buy, when the body says
    covers: str | None = None  # "resource", "route", or "tab": a top-up of a prepaid tab
    tab: TabTerms | None = None  # covers "tab": the metering

    @property
    def for_tab(self) -> bool:
        """A metered route: a payment opens or tops up a prepaid tab."""
        return self.covers == "tab"


async def problem_of(resp: aiohttp.ClientResponse) -> dict[str, Any] | None:
    """The JSON body of a problem answer, if it has one (the body stays readable)."""
    if resp.content_type not in ("application/problem+json", "application/json"):
        return None
    try:
        body = json.loads(await resp.read())
    except (ValueError, UnicodeDecodeError, aiohttp.ClientError):
        return None
    return body if isinstance(body, dict) else None


async def read_challenge(resp: aiohttp.ClientResponse) -> Challenge | None:
    """The payment request of a 402; None when it asks for no BSV payment.

    The BRC-121 headers are what every gateway sends; Farebox's body says
    the same at more length. When both are there they must agree: a body
    that names another price or key than the headers is not paid.
    """
    sats = resp.headers.get("x-bsv-sats")
    server = resp.headers.get("x-bsv-server")
    if sats is None or server is None:
        return None
    if not _DIGITS.fullmatch(sats.strip()) or int(sats) < 1:
        raise BadChallenge(f"x-bsv-sats is not a price in satoshis: {sats!r}")
    if not _PUBKEY.fullmatch(server.strip()):
        raise BadChallenge("x-bsv-server is not a compressed public key")
    price, server = int(sats), server.strip().lower()
    try:
        PublicKey(server)
    except Exception:  # bsv-sdk raises assorted types for points off the curve
        raise BadChallenge("x-bsv-server is not a valid public key") from None
    body = await problem_of(resp) or {}
    payment = _dict(body.get("payment"))
    stated = _dict(payment.get("price")).get("satoshis")
    if stated is not None and stated != price:
        raise BadChallenge(f"the 402 asks {price} satoshis in its headers, {stated} in its body")
    stated_key = payment.get("server")
    if stated_key is not None and str(stated_key).lower() != server:
        raise BadChallenge("the 402 names two different server keys")
    grant = _dict(payment.get("grant"))
    pay_url = payment.get("pay_url")
    return Challenge(
        satoshis=price,
        server=server,
        pay_url=pay_url if _own_path(pay_url) else PAY,
        reason=str(body.get("reason") or "payment-required"),
        detail=str(body.get("detail") or ""),
        scope=grant.get("scope") if isinstance(grant.get("scope"), str) else None,
        covers=grant.get("covers") if isinstance(grant.get("covers"), str) else None,
        tab=_tab_terms(payment.get("tab"), price),
    )


def _own_path(value: object) -> bool:
    """A path on the gateway's own origin: "/x", never "//host/x" (another
    origin once joined), a backslash (read as a slash by some), or a scheme."""
    return (
        isinstance(value, str)
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and value.isascii()
        and value.isprintable()
    )


def _tab_terms(value: object, price: int) -> TabTerms | None:
    tab = _dict(value)
    if not tab:
        return None
    url = tab.get("balance_url")
    header = tab.get("units_header")
    return TabTerms(
        per=str(tab.get("per") or "request"),
        unit_price=_sats(_dict(tab.get("unit_price")).get("satoshis")),
        most_units=_sats(tab.get("most_units")),
        most_satoshis=_sats(tab.get("most_satoshis")),
        top_up=price,  # x-bsv-sats: what the headers ask is what is paid
        balance=_sats(tab.get("balance_satoshis")),
        balance_url=url if _own_path(url) else TAB,
        units_header=header if isinstance(header, str) else None,
    )


def _sats(value: object) -> Decimal | None:
    """A non-negative amount the gateway wrote as a decimal string (or number)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
