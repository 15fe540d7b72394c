"""The paywall page: the 402 a person in a browser sees.

A client that prefers HTML gets a page instead of problem+json: what is for
sale in the policy's words, the price (in the client's currency first when
the policy prices in one, satoshis beside it), what a payment buys, and the
way to pay that suits the device: on a phone the wallet app's link first and
a short QR code, on a computer a browser wallet's button and the QR code for
a phone. The BRC-121 headers stay on the answer, so 402-aware browsers and
extensions work the same. Everything the page needs is served by Farebox
itself (assets under /.well-known/farebox/assets/); its words are gettext
messages in the language Accept-Language asks for (i18n.py, texts.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from importlib.resources import files
from typing import Any

import segno
from aiohttp import web

from gateway.challenge.paywall.i18n import Speech, environment, speech
from gateway.challenge.paywall.texts import (
    advice,
    buys_text,
    per_text,
    script_texts,
    status_title,
)
from gateway.edge.problems import problem
from gateway.edge.urls import ASSETS, PRICES
from gateway.edge.weights import weighed

_STATIC = {"paywall.css": "text/css", "paywall.js": "text/javascript"}
# A phone, as its browser says: the Sec-CH-UA-Mobile client hint (Chromium), else
# the User-Agent. The page's CSS also treats a touch-only screen as a phone.
_PHONE_UA = re.compile(r"Mobi|Android|iPhone|iPod|Windows Phone|BlackBerry|Opera Mini")


def wants_html(accept: str | None) -> bool:
    """Whether the client prefers text/html to JSON (browsers do; curl does not)."""
    best_html, best_json = 0.0, 0.0
    for member, q in weighed(accept):  # its first members, weights as RFC 9110 writes them
        kind = member.lower()
        if kind in ("text/html", "application/xhtml+xml"):
            best_html = max(best_html, q)
        elif kind in ("application/json", "application/problem+json", "*/*"):
            best_json = max(best_json, q)
    return best_html > 0 and best_html > best_json


def is_phone(headers: Any) -> bool:
    """Whether the request comes from a phone (Sec-CH-UA-Mobile, else User-Agent)."""
    hint = headers.get("Sec-CH-UA-Mobile")
    if hint is not None:
        return hint.strip() == "?1"
    return _PHONE_UA.search(headers.get("User-Agent") or "") is not None


@dataclass(frozen=True, slots=True)
class Money:
    """A price as the page shows it: satoshis (a fraction for a tiny unit price),
    and its amount in a currency when the policy prices in one."""

    satoshis: int | Decimal
    cents: Decimal | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """What one paywall page says; plain data the template renders."""

    service_title: str
    what: str  # the route's description in the policy ("" when it has none)
    covers: str  # what a payment buys: "resource", "route" or "tab"
    lasts: int  # seconds a grant (or a tab) lasts
    method: str
    resource: str
    satoshis: int  # what the wallet pays now (the price, or a tab's top-up)
    price: Money  # what the page is for: the price, or (tab) the top-up
    server: str
    pay_url: str
    wallet_url: str
    unit: Money | None = None  # a metered route: what one use costs ...
    per: str = "request"  # ... for each request, megabyte or unit
    rate: tuple[Decimal, str] | None = None  # (per BSV, currency) the fiat price is at
    concession: dict[str, Any] | None = None
    offered: str = ""
    refused: str = ""
    checkout_uri: str | None = None  # the payment URI the QR code shows
    status_url: str = ""
    expires: int = 0  # unix seconds the checkout ends
    minutes: int = 0
    phone: bool = False  # the request says it comes from a phone


def amount(money: Money, words: Speech) -> tuple[str, str]:
    """(the amount first seen, the satoshis beside it or ""): '€1.20', '1,500 satoshis'."""
    if money.cents is not None and money.currency:
        return words.money(money.cents, money.currency), words.sats(money.satoshis)
    return words.sats(money.satoshis), ""


def render(page: Page, accept_language: str | None) -> str:
    words = speech(accept_language)
    _ = words.gettext
    qr_svg = None
    if page.checkout_uri:
        # Error correction M keeps the code readable on a dim phone screen.
        try:
            qr = segno.make(page.checkout_uri, error="m", micro=False)
        except segno.DataOverflowError:
            # More than the largest code holds (2,331 bytes: with the store
            # down, the link carries the whole ticket, which grows with the
            # path): the page without a code, its link and buttons still pay.
            pass
        else:
            qr_svg = qr.svg_inline(scale=4, border=4, dark="#000", light="#fff", omitsize=True)
    pays = words.sats(page.satoshis)
    main, beside = amount(page.price, words)
    # What the wallet is asked for, as the buttons say it: the satoshis beside a
    # fiat amount, so the button and the wallet show the same figure.
    paying = f"{main} ({beside})" if beside else main
    unit = amount(page.unit, words) if page.unit is not None else None
    concession = None
    if page.concession is not None:
        c = page.concession
        full = amount(Money(c["full"], c.get("full_cents"), c.get("currency")), words)
        concession = {**c, "full": f"{full[0]} ({full[1]})" if full[1] else full[0]}
    rate = None
    if page.rate is not None:
        rate = words.money((page.rate[0] * 100).quantize(Decimal(1)), page.rate[1])
    return (
        environment(words.lang)
        .get_template("paywall.html")
        .render(
            lang=words.lang,
            assets=ASSETS,
            prices_url=PRICES,
            page=page,
            what=page.what,
            buys=buys_text(page.covers, page.lasts, page.service_title, words),
            pays=pays,
            main=main,
            beside=beside,
            paying=paying,
            unit=unit,
            per=per_text(page.per, words),
            rate=rate,
            concession=concession,
            qr_svg=qr_svg,
            qr_label=_("QR code to pay %(amount)s with a phone wallet") % {"amount": pays},
            payment_uri=page.checkout_uri or "",
            texts_json=json.dumps(script_texts(words)).replace("</", "<\\/"),
        )
    )


def problem_page(answer: web.Response, accept_language: str | None) -> web.Response:
    """A problem+json answer (RFC 9457) as a page for a person, in the paywall's
    style: a heading for its status and what to do about it, in the reader's
    language; the problem's own detail (for whoever helps them) in small print.
    The status and every header but the body's (Allow, Retry-After,
    RateLimit-*, CORS) stay."""
    try:
        body = json.loads(answer.body) if isinstance(answer.body, bytes) else {}
    except ValueError:
        body = {}
    words = speech(accept_language)
    status = answer.status
    html = (
        environment(words.lang)
        .get_template("problem.html")
        .render(
            lang=words.lang,
            assets=ASSETS,
            title=status_title(status, words),
            detail=str(body.get("detail") or body.get("title") or answer.reason or ""),
            advice=advice(status, words),
            status=status,
            reason=str(body.get("reason") or ""),
            prices_url=PRICES,
        )
    )
    headers = {
        k: v
        for k, v in answer.headers.items()
        if k.lower() not in ("content-type", "content-length")
    }
    vary = headers.get("Vary")
    headers["Vary"] = f"{vary}, Accept, Accept-Language" if vary else "Accept, Accept-Language"
    return web.Response(status=status, text=html, content_type="text/html", headers=headers)


def render_prices(figures: dict[str, Any], accept_language: str | None) -> str:
    """The price list (endpoints/prices.py's figures) as a page, in words."""
    words = speech(accept_language)
    _ = words.gettext

    def price(p: dict[str, Any]) -> str:
        if p.get("free"):
            return _("Free")
        if "currency" not in p:
            return words.sats(p["satoshis"])
        money = words.money(Decimal(p["cents"]), p["currency"])
        if p.get("satoshis") is None:
            return money
        return _("%(money)s (about %(sats)s now)") % {
            "money": money,
            "sats": words.sats(p["satoshis"]),
        }

    services = []
    for service in figures["services"]:
        rows = []
        # A route the policy does not describe: plain words, never its pattern.
        if any(route["description"] for route in service["routes"]):
            undescribed = _("Other pages of this service")
        else:
            undescribed = _("Pages of this service")
        for route in service["routes"]:
            what = route["description"] or undescribed
            cost = price(route["price"])
            buys = ""
            if "tab" in route:
                tab = route["tab"]
                cost = _("%(price)s %(per)s, from a prepaid balance; top-ups from %(top_up)s") % {
                    "price": cost,
                    "per": per_text(tab["per"], words),
                    "top_up": price(tab["top_up"]),
                }
            elif "buys" in route:
                lasts = words.duration(route["buys"]["lasts_seconds"])
                if route["buys"]["covers"] == "resource":
                    buys = _("that item, for %(lasts)s") % {"lasts": lasts}
                else:
                    buys = _("everything of this kind, for %(lasts)s") % {"lasts": lasts}
            free = ""
            if "free_quota" in route:
                quota = route["free_quota"]
                n, every = quota["requests"], words.every(quota["per_seconds"])
                if quota["counted_by"] == "key":
                    free = words.ngettext(
                        "%(n)s free %(every)s per key", "%(n)s free %(every)s per key", n
                    )
                else:
                    free = words.ngettext(
                        "%(n)s free %(every)s per network", "%(n)s free %(every)s per network", n
                    )
                free = free % {"n": words.number(n), "every": every}
            if "reward" in route:
                reward = route["reward"]
                free = _("Taking part pays %(pays)s (%(campaign)s)") % {
                    "pays": price(reward["pays"]),
                    "campaign": reward.get("description") or reward["campaign"],
                }
            rows.append({"what": what, "price": cost, "buys": buys, "free": free})
        services.append({"title": service["title"], "rows": rows})
    rewarded = {
        name
        for service in figures["services"]
        for route in service["routes"]
        for name in route.get("reward", {}).get("requires", ())
    }
    concessions = []
    for c in figures["concessions"]:
        # Who it is for in the policy's words (its id only when it has none); a
        # line for each thing it gives, and none at all for a concession that gives nothing.
        who = c["description"] or c["name"]
        if c["discount_percent"]:
            concessions.append(
                _("%(name)s: %(discount)s%% off.")
                % {"name": who, "discount": c["discount_percent"]}
            )
        if "free_quota" in c:
            n = c["free_quota"]["requests"]
            concessions.append(
                words.ngettext(
                    "%(name)s: %(n)s free request %(every)s.",
                    "%(name)s: %(n)s free requests %(every)s.",
                    n,
                )
                % {
                    "name": who,
                    "n": words.number(n),
                    "every": words.every(c["free_quota"]["per_seconds"]),
                }
            )
        if c["name"] in rewarded:
            concessions.append(_("%(name)s: can be paid for taking part.") % {"name": who})
    return (
        environment(words.lang)
        .get_template("prices.html")
        .render(lang=words.lang, assets=ASSETS, services=services, concessions=concessions)
    )


def render_report(
    report: dict[str, Any],
    names: dict[str, str] | None = None,
    accept_language: str | None = None,
) -> str:
    """The transparency report as a page (gateway.ledger.transparency has the figures);
    `names` says a service's name for people (its description) by its id."""
    words = speech(accept_language)
    return (
        environment(words.lang)
        .get_template("transparency.html")
        .render(
            lang=words.lang, assets=ASSETS, report=report, names=names or {}, number=words.number
        )
    )


def asset(name: str) -> web.Response:
    """One of the page's own files; 404 for anything else."""
    kind = _STATIC.get(name)
    if kind is None:
        return problem(404, "no-asset", "Not found", f"no paywall asset named {name!r}")
    body = (files("gateway.challenge.paywall") / "static" / name).read_bytes()
    return web.Response(
        body=body,
        content_type=kind,
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600"},
    )
