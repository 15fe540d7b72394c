"""The paywall page and its checkout: HTML for people, problem+json for programs.

Real gateway, real signed transactions (test tracker, recording broadcaster).
The real-browser flows are in tests/test_browser.py.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import pytest
from bsv import PrivateKey, PublicKey

from gateway.challenge.paywall import wants_html
from gateway.payments.checkout import ANYONE, read_ticket
from tests.chainkit import Tracker, atomic_beef, funding, spend
from tests.conftest import PAID_SERVER
from tests.test_paid_access import FakeBroadcaster

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CLIENT = PrivateKey(0xB20)


@pytest.fixture
async def paid(paid_gateway):
    tracker, broadcaster = Tracker(), FakeBroadcaster()
    started = await paid_gateway(tracker, broadcaster)
    return started, tracker, broadcaster


async def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET", data=None):
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, data=data) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER, True),
        ("text/html", True),
        ("*/*", False),  # curl
        (None, False),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0.9, application/problem+json", False),
        ("text/html;q=0", False),
    ],
)
def test_who_gets_a_page(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html


async def test_curl_gets_problem_json_and_a_browser_gets_the_page(paid) -> None:
    started, _, _ = paid
    url = f"{started.base}/archive/pages/3"
    status, headers, body = await fetch(url, {"Accept": "*/*"})
    assert status == 402 and headers["Content-Type"] == "application/problem+json"
    assert json.loads(body)["payment"]["price"]["satoshis"] == 25

    status, headers, body = await fetch(url, {"Accept": BROWSER})
    page = body.decode()
    assert status == 402 and headers["Content-Type"].startswith("text/html")
    # BRC-121 stays on the page too.
    assert headers["x-bsv-sats"] == "25"
    assert headers["x-bsv-server"] == PAID_SERVER.public_key().hex()
    assert "25 satoshis" in page and "/archive/pages/3" in page  # the path: in "For programs"
    assert "You can open it as often as you like for 1 hour." in page
    assert "<svg" in page  # the QR code, inline
    assert 'href="/.well-known/farebox/assets/paywall.css"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from elsewhere


async def test_assets_are_served_locally(paid) -> None:
    started, _, _ = paid
    for name, kind in (("paywall.css", "text/css"), ("paywall.js", "text/javascript")):
        status, headers, body = await fetch(f"{started.base}/.well-known/farebox/assets/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    status, _, _ = await fetch(f"{started.base}/.well-known/farebox/assets/../server.py")
    assert status in (400, 404)


def checkout_of(page: str) -> tuple[str, str, int]:
    """(status URL, payee address, satoshis) from a paywall page's payment URI."""
    uri = unquote(
        re.search(r'id="payment-uri" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    )
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    address = parts.path
    sats = round(float(query["amount"][0]) * 100_000_000)
    return urlsplit(query["r"][0]).path, address, sats


async def test_a_wallet_posts_to_the_checkout_and_the_page_opens(paid, upstream) -> None:
    started, tracker, broadcaster = paid
    url = f"{started.base}/archive/pages/4"
    _, _, body = await fetch(url, {"Accept": BROWSER})
    status_path, address, sats = checkout_of(body.decode())
    assert sats == 25
    status, _, answer = await fetch(started.base + status_path)
    assert status == 200 and json.loads(answer) == {"status": "pending"}

    # A phone wallet pays the address it scanned and posts the transaction.
    parent = funding(CLIENT, 10_000, tracker)
    tx = spend(parent, 0, CLIENT, [(address, 25), (CLIENT.public_key(), 9_000)])
    status, headers, answer = await fetch(
        started.base + status_path, method="POST", data=atomic_beef(tx).hex()
    )
    assert status == 200, answer
    assert json.loads(answer)["status"] == "paid" and json.loads(answer)["txid"] == tx.txid()
    assert "farebox_token=" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    assert len(broadcaster.seen) == 1

    # The page's poll now says paid (and sets the cookie again); the cookie opens the page.
    status, headers, answer = await fetch(started.base + status_path)
    assert json.loads(answer)["status"] == "paid"
    token = headers["X-Farebox-Token"]
    status, _, content = await fetch(url, {"Cookie": f"farebox_token={token}"})
    assert status == 200 and b'"/pages/4"' in content

    # A second payment to the same checkout is refused before broadcast.
    parent2 = funding(CLIENT, 10_000, tracker)
    tx2 = spend(parent2, 0, CLIENT, [(address, 25), (CLIENT.public_key(), 9_000)])
    status, _, answer = await fetch(
        started.base + status_path, method="POST", data=atomic_beef(tx2)
    )
    assert status == 409 and json.loads(answer)["reason"] == "checkout-paid"
    assert len(broadcaster.seen) == 1


async def test_an_underpaid_checkout_is_not_taken(paid, caplog) -> None:
    caplog.set_level("INFO", logger="farebox.payments")
    started, tracker, broadcaster = paid
    _, _, body = await fetch(f"{started.base}/archive/pages/5", {"Accept": BROWSER})
    status_path, address, _ = checkout_of(body.decode())
    parent = funding(CLIENT, 10_000, tracker)
    tx = spend(parent, 0, CLIENT, [(address, 20), (CLIENT.public_key(), 9_000)])
    status, _, answer = await fetch(started.base + status_path, method="POST", data=atomic_beef(tx))
    problem = json.loads(answer)
    assert status == 402 and problem["reason"] == "underpaid"
    assert (problem["paid"], problem["price"]) == (20, 25)
    assert broadcaster.seen == []
    # Refused as every way in refuses: one log line, never the payer.
    refused = [r.getMessage() for r in caplog.records if r.name == "farebox.payments"]
    assert any("payment refused" in m and m.endswith(": underpaid") for m in refused), refused
    assert not any(CLIENT.public_key().hex() in m for m in refused)
    # Someone else's address: not this checkout's payment.
    tx = spend(parent, 0, CLIENT, [(CLIENT.public_key(), 9_000)])
    status, _, answer = await fetch(started.base + status_path, method="POST", data=atomic_beef(tx))
    assert status == 402 and json.loads(answer)["reason"] == "wrong-payee"


async def test_tickets_are_signed_and_expire(paid) -> None:
    started, _, _ = paid
    _, _, body = await fetch(f"{started.base}/archive/pages/6", {"Accept": BROWSER})
    status_path, address, _ = checkout_of(body.decode())
    # The page's URLs carry a short id; the store keeps the signed ticket under it.
    [ticket] = await started.store.bound("checkout:" + status_path.rsplit("/", 1)[1])
    checkout = read_ticket(started.tokens, ticket)
    assert checkout is not None and checkout.resource == "/archive/pages/6"
    # The address is the checkout's own BRC-29 key for the "anyone" sender.
    from gateway.bsv.derivation import payee_key

    prefix, suffix = (
        checkout.id,
        __import__("base64").b64encode(str(checkout.issued_ms).encode()).decode(),
    )
    derived = payee_key(PAID_SERVER, ANYONE.public_key(), prefix, suffix)
    assert derived.address() == address
    forged = ticket[:-4] + ("AAAA" if not ticket.endswith("AAAA") else "BBBB")
    status, _, answer = await fetch(f"{started.base}/.well-known/farebox/checkout/{forged}")
    assert status == 404 and json.loads(answer)["reason"] == "no-checkout"


def test_p2pkh_helper(paid=None) -> None:
    from gateway.bsv.derivation import p2pkh_script

    key = PublicKey(PAID_SERVER.public_key().hex())
    assert p2pkh_script(key).hex().startswith("76a914")


# --- cross-origin payments ------------------------------------------------------------

CORS_POLICY = """\
services:
  data:
    upstream: {upstream}
    cors_origins: [https://portal.example.gov]
    routes:
      - path: /query
        price: 10
      - path: /open
        price: free
"""


async def test_preflight_for_payment_headers_from_an_allowed_origin(
    gateway, upstream, tmp_path
) -> None:
    from gateway.payments.cashier import Cashier
    from gateway.store.memory import MemoryStore
    from gateway.tokens import KeyRing, Tokens

    tracker, broadcaster, store = Tracker(), FakeBroadcaster(), MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
    )
    base = await gateway(
        CORS_POLICY.format(upstream=upstream.url),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        store=store,
    )
    ask = {
        "Origin": "https://portal.example.gov",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-bsv-beef, x-bsv-sender",
    }
    status, headers, _ = await fetch(f"{base}/query", ask, method="OPTIONS")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://portal.example.gov"
    assert "x-bsv-beef" in headers["Access-Control-Allow-Headers"]
    assert "GET" in headers["Access-Control-Allow-Methods"] and headers["Vary"] == "Origin"
    status, _, body = await fetch(
        f"{base}/query", {**ask, "Origin": "https://elsewhere.example"}, method="OPTIONS"
    )
    assert status == 403 and json.loads(body)["reason"] == "origin-not-allowed"
    assert upstream.seen == []  # preflights for priced routes never reach the upstream

    # The paid answer is readable by the portal's script: token exposed.
    from types import SimpleNamespace

    from tests.test_paid_access import brc121

    made = brc121(SimpleNamespace(tracker=tracker), 10)  # type: ignore[arg-type]
    paying = {k: v for k, v in made.items() if not k.startswith("_")}
    status, headers, _ = await fetch(
        f"{base}/query", {**paying, "Origin": "https://portal.example.gov"}
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://portal.example.gov"
    assert "x-farebox-token" in headers["Access-Control-Expose-Headers"]
    # A shared cache keys the paid answer on the credentials and on the origin.
    vary = {v.strip().lower() for v in ",".join(headers.getall("Vary")).split(",")}
    assert {"authorization", "cookie", "origin"} <= vary, vary
    # Without an Origin (a script, not a page) nothing changes.
    status, headers, _ = await fetch(f"{base}/query")
    assert status == 402 and headers["Access-Control-Allow-Origin"] == "*"


# --- a metered route's page opens a tab -------------------------------------------------

from tests.test_tabs import metered  # noqa: E402,F401  (the fixture)


async def test_a_metered_page_checkout_opens_a_tab(metered) -> None:  # noqa: F811
    url = f"{metered.base}/util/calls/1"
    status, headers, body = await fetch(url, {"Accept": BROWSER})
    page = body.decode()
    assert status == 402 and headers["x-bsv-sats"] == "1000"
    assert "A prepaid balance with util" in page
    status_path, address, sats = checkout_of(page)
    assert sats == 1000
    parent = funding(CLIENT, 10_000, metered.tracker)
    tx = spend(parent, 0, CLIENT, [(address, 1500), (CLIENT.public_key(), 8_000)])
    status, headers, answer = await fetch(
        metered.base + status_path, method="POST", data=atomic_beef(tx)
    )
    assert status == 200, answer
    token = headers["X-Farebox-Token"]
    assert "Path=/util" in headers["Set-Cookie"]
    status, headers, _ = await fetch(url, {"Cookie": f"farebox_token={token}"})
    assert status == 200 and headers["X-Farebox-Balance"] == "1490"  # all 1500 credited


async def test_an_expired_checkout_says_so_and_takes_nothing(paid) -> None:
    import time as clock

    started, tracker, broadcaster = paid
    claims = {
        "jti": "c3RhbGUtY2hlY2tvdXQ=",
        "svc": "archive",
        "res": "/archive/pages/8",
        "m": "GET",
        "sats": 25,
        "iat_ms": int(clock.time() * 1000) - 700_000,
        "exp": int(clock.time()) - 100,
    }
    ticket = started.tokens.sign_claims(claims, "farebox:checkout")
    url = f"{started.base}/.well-known/farebox/checkout/{ticket}"
    status, _, answer = await fetch(url)
    assert status == 200 and json.loads(answer) == {"status": "expired"}
    parent = funding(CLIENT, 10_000, tracker)
    tx = spend(parent, 0, CLIENT, [(CLIENT.public_key(), 9_000)])
    status, _, answer = await fetch(url, method="POST", data=atomic_beef(tx))
    assert status == 410 and json.loads(answer)["status"] == "expired"
    assert broadcaster.seen == []
