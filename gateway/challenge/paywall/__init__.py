"""The paywall page: the 402 a person in a browser sees.

A client that prefers HTML gets a page instead of problem+json: what is for
sale, the price (and its fiat value), what a payment buys, a QR code of a
checkout for phone wallets and a button for a browser wallet. The BRC-121
headers stay on the answer, so 402-aware browsers and extensions work the
same. Everything the page needs is served by Farebox itself (assets under
/.well-known/farebox/assets/); all its words live in `texts.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import segno
from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from gateway.challenge.paywall.texts import TEXTS, duration, texts
from gateway.edge.problems import problem
from gateway.edge.urls import ASSETS, PRICES

_STATIC = {"paywall.css": "text/css", "paywall.js": "text/javascript"}
_env = Environment(
    loader=PackageLoader("gateway.challenge.paywall", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def wants_html(accept: str | None) -> bool:
    """Whether the client prefers text/html to JSON (browsers do; curl does not)."""
    if not accept:
        return False
    best_html, best_json = 0.0, 0.0
    for part in accept.split(","):
        fields = part.strip().split(";")
        kind = fields[0].strip().lower()
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if kind in ("text/html", "application/xhtml+xml"):
            best_html = max(best_html, q)
        elif kind in ("application/json", "application/problem+json", "*/*"):
            best_json = max(best_json, q)
    return best_html > 0 and best_html > best_json


@dataclass(frozen=True, slots=True)
class Page:
    """What one paywall page says; plain data the template renders."""

    service_title: str
    description: str
    method: str
    resource: str
    satoshis: int
    buys: str
    server: str
    pay_url: str
    wallet_url: str
    fiat: dict[str, str] | None = None
    concession: dict[str, Any] | None = None
    offered: str = ""
    refused: str = ""
    checkout_uri: str | None = None  # the payment URI the QR code shows
    status_url: str = ""
    expires: int = 0  # unix seconds the checkout ends
    minutes: int = 0


def render(page: Page, accept_language: str | None) -> str:
    words = texts(accept_language)
    lang = next(tag for tag, table in TEXTS.items() if table is words)
    qr_svg = None
    if page.checkout_uri:
        # Error correction M keeps the code readable on a dim phone screen.
        qr = segno.make(page.checkout_uri, error="m", micro=False)
        qr_svg = qr.svg_inline(scale=4, border=4, dark="#000", light="#fff", omitsize=True)
    return _env.get_template("paywall.html").render(
        t=words,
        lang=lang,
        assets=ASSETS,
        prices_url=PRICES,
        service_title=page.service_title,
        description=page.description,
        method=page.method,
        resource=page.resource,
        satoshis=page.satoshis,
        fiat=page.fiat,
        concession=page.concession,
        offered=page.offered,
        refused=page.refused,
        buys=page.buys,
        qr_svg=qr_svg,
        payment_uri=page.checkout_uri or "",
        status_url=page.status_url,
        pay_url=page.pay_url,
        server=page.server,
        wallet_url=page.wallet_url,
        expires=page.expires,
        minutes=page.minutes,
        texts_json=json.dumps(words).replace("</", "<\\/"),
    )


def problem_page(answer: web.Response, accept_language: str | None) -> web.Response:
    """A problem+json answer (RFC 9457) as a page for a person, in the paywall's
    style: its title and detail, what to do about it. The status and every
    header but the body's (Allow, Retry-After, RateLimit-*, CORS) stay."""
    try:
        body = json.loads(answer.body) if isinstance(answer.body, bytes) else {}
    except ValueError:
        body = {}
    words = texts(accept_language)
    lang = next(tag for tag, table in TEXTS.items() if table is words)
    status = answer.status
    advice = words["advice_429"] if status == 429 else (
        words["advice_5xx"] if status >= 500 else words["advice_4xx"]
    )  # fmt: skip
    html = _env.get_template("problem.html").render(
        t=words,
        lang=lang,
        assets=ASSETS,
        title=str(body.get("title") or answer.reason),
        detail=str(body.get("detail") or ""),
        advice=advice,
        status=status,
        reason=str(body.get("reason") or ""),
    )
    headers = {
        k: v
        for k, v in answer.headers.items()
        if k.lower() not in ("content-type", "content-length")
    }
    vary = headers.get("Vary")
    headers["Vary"] = f"{vary}, Accept" if vary else "Accept"
    return web.Response(status=status, text=html, content_type="text/html", headers=headers)


def render_prices(figures: dict[str, Any], accept_language: str | None) -> str:
    """The price list (endpoints/prices.py's figures) as a page, in words."""
    words = texts(accept_language)
    lang = next(tag for tag, table in TEXTS.items() if table is words)

    def price(p: dict[str, Any]) -> str:
        if p.get("free"):
            return words["free"]
        if "currency" not in p:
            return words["sats"].format(n=f"{p['satoshis']:,}")
        amount = f"{float(p['cents']) / 100:.2f}"
        if p.get("satoshis") is None:
            return words["fiat_only"].format(amount=amount, currency=p["currency"])
        return words["fiat_now"].format(
            amount=amount, currency=p["currency"], sats=f"{p['satoshis']:,}"
        )

    services = []
    for service in figures["services"]:
        rows = []
        for route in service["routes"]:
            methods = "" if route["methods"] == ["*"] else " ".join(route["methods"]) + " "
            what = route["description"] or f"{methods}{route['path']}"
            cost = price(route["price"])
            buys = ""
            if "tab" in route:
                tab = route["tab"]
                cost = words[f"per_{tab['per']}"].format(price=cost, top_up=price(tab["top_up"]))
            elif "buys" in route:
                lasts = duration(route["buys"]["lasts_seconds"], words)
                key = "buys_this" if route["buys"]["covers"] == "resource" else "buys_all"
                buys = words[key].format(lasts=lasts)
            free = ""
            if "free_quota" in route:
                quota = route["free_quota"]
                free = words["quota"].format(
                    n=quota["requests"],
                    per=duration(quota["per_seconds"], words),
                    counted=words[f"counted_{quota['counted_by']}"],
                )
            if "reward" in route:
                reward = route["reward"]
                free = words["reward"].format(
                    pays=price(reward["pays"]), campaign=reward["campaign"]
                )
            rows.append({"what": what, "price": cost, "buys": buys, "free": free})
        services.append({"title": service["title"], "rows": rows})
    concessions = [
        words["concession_line"]
        .format(name=c["name"], discount=c["discount_percent"], description=c["description"])
        .strip()
        for c in figures["concessions"]
    ]
    return _env.get_template("prices.html").render(
        t=words, lang=lang, assets=ASSETS, services=services, concessions=concessions
    )


def render_report(report: dict[str, Any], names: dict[str, str] | None = None) -> str:
    """The transparency report as a page (gateway.transparency has the figures);
    `names` says a service's name for people (its description) by its id."""
    return _env.get_template("transparency.html").render(
        assets=ASSETS, report=report, names=names or {}
    )


def buys_text(
    covers: str, scope: str, lasts: int, service: str, accept_language: str | None
) -> str:
    words = texts(accept_language)
    if covers == "tab":
        return words["buys_tab"].format(service=service)
    length = duration(lasts, words)
    if covers == "route":
        return words["buys_route"].format(scope=scope, lasts=length)
    return words["buys_resource"].format(lasts=length)


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
