"""Accessibility, measured (issue 17, point 2): axe-core in Chromium on every
page Farebox serves to a person, at desktop and phone sizes.

One real `farebox serve` on a real devnet for the module, and Debian's
Chromium driven by Playwright. Pages: the paywall waiting for a payment
(priced in satoshis; priced in euros on a tab), paid (the moment before it
opens the resource), an underpaid payment explained, an expiring and an
expired checkout, the browser-wallet button with no wallet, after a refused
payment, on a gateway taking no payments; the price list; Farebox's error pages (404, 405, the free-quota
429, and 502, 503 and 504 when what is behind it fails); the transparency
report.

On each page axe-core (pinned in tests/a11y, installed by `./dev test`)
runs the WCAG 2.0/2.1/2.2 A and AA rules and its best practices; any
violation of serious or critical impact fails, naming the rule, what to do
and the elements. Neither the page nor any box in it may scroll sideways, and
a screenshot of it goes to test-output/a11y-<page>-<size>.png to be looked
at. Some pages again in dark colours, and in Spanish (longer words) 320 px
wide (WCAG's reflow width).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from bsv import PrivateKey

from gateway.devnet import Devnet
from gateway.devnet import start as start_devnet
from gateway.edge.urls import PRICES, TRANSPARENCY
from tests.chainkit import beef_of, faucet, spend
from tests.conftest import Upstream, recording_app
from tests.farebox_process import run, serve
from tests.test_browser import free_port, payment_request

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = ROOT / "tests" / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
OUTPUT = ROOT / "test-output"

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Debian's chromium is not installed (./dev test installs it)",
    ),
    pytest.mark.asyncio(loop_scope="module"),
]

# WCAG 2.2 AA adds target-size: anything tapped at least 24 px square, or spaced so.
RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
FAILING = ("serious", "critical")

SIZES = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "is_mobile": True,
        "has_touch": True,
        "device_scale_factor": 2,
        # As a phone's Chrome says it is one (the page picks the ways to pay by it).
        "user_agent": (
            "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36"
        ),
    },
}

PAGE = "/archive/records/{n}/pages/3"  # 40 satoshis
TAB = "/transit/lines/{n}/board"  # EUR 1.20 a ride, from a tab topped up with EUR 8
POLICY = """\
services:
  archive:
    description: County records archive
    upstream: {upstream}
    mount: /archive
    routes:
      - path: /records/{{id}}/pages/{{page}}
        price: 40
        grant: {{lasts: 24h, covers: resource}}
        description: One transcribed page of a parish register
      - path: /search
        methods: [GET]
        price: free
        free_quota: {{requests: 1, per: 1h}}
        description: Search the catalogue, once an hour free
      - path: /requests
        methods: [POST]
        price: free
        description: Ask for a record to be transcribed
      - path: /slow
        price: free
        description: An answer that takes too long
      - path: /copies/{{id}}
        price: {{usd_cents: 25}}
        grant: {{lasts: 1h}}
        description: A certified copy, priced in dollars (no dollar rate here)
  transit:
    description: Hollowmere Transit (buses and trams)
    upstream: {upstream}
    mount: /transit
    tabs: {{top_up: {{eur_cents: 800}}, lasts: 365d}}
    routes:
      - path: /lines/{{line}}/board
        methods: [GET]
        price: {{eur_cents: 120}}
        meter: {{per: request}}
        description: Board a bus or tram; a ticket valid 90 minutes
  closed:
    description: The council's minutes (its server is down)
    upstream: http://127.0.0.1:9
    mount: /minutes
    routes:
      - {{path: /**, price: free}}
"""


# --- one gateway, one devnet, one browser for the module --------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def devnet() -> AsyncIterator[str]:
    runner, _ = await start_devnet("127.0.0.1", 0, devnet=Devnet())
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    record = Upstream("")
    runner = web.AppRunner(recording_app(record), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    record.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield record
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, devnet: str
) -> AsyncIterator[SimpleNamespace]:
    here = tmp_path_factory.mktemp("a11y")
    key = here / "server.key"
    run("keys", "generate", "--out", str(key))
    folder = here / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(POLICY.format(upstream=upstream.url))
    nobody = f"http://127.0.0.1:{free_port()}"  # no browser wallet answers there
    async with serve(
        "--policies", str(folder), "--key-file", str(key), "--port", "0",
        "--devnet-url", devnet, "--token-keys", str(here / "tk"),
        "--wallet-url", nobody, "--insecure-cookies", "--rate-eur", "40",
        "--read-timeout", "1s", "--receipts-file", str(here / "receipts.jsonl"),
    ) as gw:  # fmt: skip
        yield SimpleNamespace(base=gw.base, devnet=devnet, process=gw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def no_chain(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> AsyncIterator[str]:
    """A gateway with no chain services: its priced routes can only say so."""
    here = tmp_path_factory.mktemp("a11y-no-chain")
    key = here / "server.key"
    run("keys", "generate", "--out", str(key))
    (here / "p.yaml").write_text(POLICY.format(upstream=upstream.url))
    async with serve(
        "--policies", str(here / "p.yaml"), "--key-file", str(key), "--port", "0",
        "--token-keys", str(here / "tk"), "--receipts-file", str(here / "receipts.jsonl"),
    ) as gw:  # fmt: skip
        yield gw.base


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    assert AXE.exists(), f"{AXE} is missing: ./dev test installs it (npm ci in tests/a11y)"
    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        await launched.close()


@dataclass
class Size:
    name: str
    context: object  # a Playwright BrowserContext

    async def page(self):
        return await self.context.new_page()


@pytest_asyncio.fixture(params=list(SIZES), loop_scope="module")
async def size(request: pytest.FixtureRequest, chromium) -> AsyncIterator[Size]:
    context = await chromium.new_context(locale="en-GB", **SIZES[request.param])
    yield Size(request.param, context)
    await context.close()


# --- what is checked on every page -----------------------------------------------------------


async def check(page, name: str, size: Size) -> None:
    """axe-core's WCAG A/AA and best-practice rules, no sideways scrolling, a screenshot."""
    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / f"a11y-{name}-{size.name}.png"
    await screenshot(page, shot)
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.add_script_tag(path=str(AXE))
    results = await page.evaluate(
        """rules => axe.run(document, {runOnly: {type: 'tag', values: rules}})
            .then(r => r.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help, url: v.helpUrl,
                nodes: v.nodes.map(n => ({target: n.target.join(' '), html: n.html,
                                          why: n.failureSummary}))})))""",
        RULES,
    )
    failing = [v for v in results if v["impact"] in FAILING]
    lines = []
    for v in failing:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} <{v['url']}>")
        for node in v["nodes"]:
            lines.append(f"    {node['target']}: {node['html'][:160]}")
            lines.append("      " + node["why"].replace("\n", "\n      "))
    widths = await page.evaluate(
        "({scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth})"
    )
    if widths["scroll"] > widths["inner"]:
        lines.append(
            f"the page scrolls sideways: {widths['scroll']} px wide in a "
            f"{widths['inner']} px window"
        )
    # Nor any part of it inside its own box (a table's far columns out of sight).
    for box in await page.evaluate(BOXES_SCROLLING_SIDEWAYS):
        lines.append(f"{box} scrolls sideways inside its box: part of it is out of sight")
    minor = sorted({f"{v['id']} ({v['impact']})" for v in results if v not in failing})
    if minor:  # shown with -s, and beside a failure below
        print(f"{name} at {size.name} size, lesser findings: {', '.join(minor)}")
    assert not lines, (
        f"{name} at {size.name} size ({shot.name}):\n" + "\n".join(lines)
        + ("\nlesser findings: " + ", ".join(minor) if minor else "")
    )  # fmt: skip


BOXES_SCROLLING_SIDEWAYS = """[...document.querySelectorAll('body *')]
    .filter(e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowX)
                 && e.scrollWidth > e.clientWidth + 1)
    .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : ''))"""


async def screenshot(page, path: Path) -> None:
    """The whole page as it is laid out. (Playwright's full_page capture lays a
    phone-sized page out again without touch, so it showed what a phone does not:
    here the window is made as tall as the page instead.)"""
    window = page.viewport_size
    tall = await page.evaluate("document.scrollingElement.scrollHeight")
    await page.set_viewport_size({"width": window["width"], "height": max(tall, window["height"])})
    try:
        await page.screenshot(path=str(path))
    finally:
        await page.set_viewport_size(window)


async def settled(page) -> None:
    """The page's fonts are laid out and its script has run its first poll."""
    await page.wait_for_load_state("load")
    await page.evaluate("document.fonts.ready.then(() => true)")


# --- paying as a phone does ------------------------------------------------------------------


async def phone_pays(devnet: str, href: str, satoshis: int | None = None) -> str:
    """A phone wallet scans the code and broadcasts a payment to its address itself."""
    address, price = payment_request(href)
    phone = PrivateKey()
    coin = await faucet(devnet, phone, 20_000)
    tx = spend(coin, 0, phone, [(address, satoshis or price), (phone.public_key(), 19_000)])
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{devnet}/v1/tx",
            data=beef_of(coin, tx),
            headers={"Content-Type": "application/octet-stream"},
        ) as r,
    ):
        assert r.status == 200, await r.text()
    return tx.txid()


async def reload_held(page) -> None:
    """The page's script, as served, but its reload (into the resource once paid, into
    a new checkout once expired) waits for `window.farebox_go()`: the page stays on
    screen in its last state to be checked. (A reload held in the network instead
    leaves Chromium mid-navigation, unable to take a screenshot.)"""

    async def rewrite(route) -> None:
        served = await route.fetch()
        script = await served.text()
        assert "window.location.reload()" in script, "the paywall no longer reloads that way"
        script = script.replace(
            "window.location.reload()",
            "(window.farebox_go = function () { window.location.reload(); })",
        )
        await route.fulfill(response=served, body=script)

    await page.route("**/paywall.js", rewrite)


async def reloads(page) -> None:
    """Let the held reload go."""
    await page.wait_for_function("typeof window.farebox_go === 'function'")
    await page.evaluate("window.farebox_go()")


# --- the paywall -----------------------------------------------------------------------------


async def test_paywall_waiting_for_a_payment(gateway, size: Size) -> None:
    page = await size.page()
    response = await page.goto(gateway.base + PAGE.format(n=1))
    assert response.status == 402 and "text/html" in response.headers["content-type"]
    await settled(page)
    assert await page.locator("#status").is_visible()
    await check(page, "paywall-waiting", size)


async def test_paywall_priced_in_euros_on_a_tab(gateway, size: Size) -> None:
    page = await size.page()
    response = await page.goto(gateway.base + TAB.format(n=4))
    assert response.status == 402 and "text/html" in response.headers["content-type"]
    await settled(page)
    await check(page, "paywall-tab-euros", size)


async def test_paywall_paid_as_it_opens(gateway, size: Size) -> None:
    page = await size.page()
    await reload_held(page)  # the reload into the resource waits for the check
    await page.goto(gateway.base + PAGE.format(n=2))
    await settled(page)
    await phone_pays(gateway.devnet, await page.get_attribute("#payment-uri", "href"))
    status = page.locator("#status")
    before = await status.inner_text()
    await page.wait_for_function(
        "t => document.getElementById('status').innerText !== t", arg=before, timeout=20_000
    )
    await check(page, "paywall-paid", size)
    await reloads(page)
    await page.wait_for_function("!document.getElementById('paywall')", timeout=20_000)
    assert '"path": "/records/2/pages/3"' in await page.inner_text("body")


async def test_paywall_explains_an_underpaid_payment(gateway, size: Size) -> None:
    page = await size.page()
    await page.goto(gateway.base + PAGE.format(n=3))
    await settled(page)
    await phone_pays(gateway.devnet, await page.get_attribute("#payment-uri", "href"), 30)
    await page.wait_for_selector("#status.error", timeout=20_000)
    assert "30" in await page.inner_text("#status")
    await check(page, "paywall-underpaid", size)


async def test_paywall_checkout_expired(gateway, size: Size) -> None:
    page = await size.page()
    await page.clock.install()
    await reload_held(page)
    await page.goto(gateway.base + PAGE.format(n=5))
    await settled(page)
    status = page.locator("#status")
    waiting = await status.inner_text()
    assert await page.locator("#expiry").is_visible()  # "valid for 10 more minutes"
    # The checkout's ten minutes pass: the page asks a little longer for a late payment...
    await page.clock.fast_forward("10:05")
    await page.wait_for_function(
        "t => document.getElementById('status').innerText !== t", arg=waiting
    )
    assert not await page.locator("#expiry").is_visible()  # no longer true: gone
    await check(page, "paywall-expiring", size)
    # ...then says it has expired, and loads a new checkout.
    expiring = await status.inner_text()
    await page.clock.fast_forward("00:30")
    await page.wait_for_function(
        "t => document.getElementById('status').innerText !== t", arg=expiring
    )
    await check(page, "paywall-expired", size)
    before = await page.get_attribute("#payment-uri", "href")
    await reloads(page)
    await page.wait_for_function(
        "b => document.getElementById('payment-uri') && "
        "document.getElementById('payment-uri').getAttribute('href') !== b",
        arg=before,
    )  # a new checkout


async def test_paywall_after_a_refused_payment(gateway, size: Size) -> None:
    """A payment sent with the request (BRC-121, as a wallet extension does) that
    pays nobody this gateway knows: the page says it was not accepted (role=alert)."""
    me = PrivateKey()
    coin = await faucet(gateway.devnet, me, 20_000)
    tx = spend(coin, 0, me, [(me.public_key(), 40), (me.public_key(), 19_000)])
    payment = {
        "x-bsv-beef": base64.b64encode(beef_of(coin, tx)).decode(),
        "x-bsv-sender": me.public_key().hex(),
        "x-bsv-nonce": base64.b64encode(b"a11y-test").decode(),
        "x-bsv-time": str(int(time.time() * 1000)),
        "x-bsv-vout": "0",
    }

    async def paying(route) -> None:
        await route.continue_(headers={**route.request.headers, **payment})

    page = await size.page()
    url = gateway.base + PAGE.format(n=11)
    await page.route(url, paying)
    response = await page.goto(url)
    assert response.status == 402
    assert await page.get_by_role("alert").is_visible()
    await settled(page)
    await check(page, "paywall-refused", size)


async def test_paywall_of_a_gateway_taking_no_payments(no_chain: str, size: Size) -> None:
    page = await size.page()
    response = await page.goto(no_chain + PAGE.format(n=12))
    assert response.status == 402 and "text/html" in response.headers["content-type"]
    assert await page.locator(".qr").count() == 0  # nothing to pay with
    await check(page, "paywall-no-payments", size)


async def test_paywall_without_a_browser_wallet(gateway, size: Size) -> None:
    page = await size.page()
    await page.goto(gateway.base + PAGE.format(n=6))
    await settled(page)
    button = page.locator("#pay-with-wallet")
    if not await button.is_visible():
        pytest.skip("at this size the page offers no browser wallet's button (a phone's app)")
    await button.click()
    await page.locator("#wallet-help").wait_for(state="visible", timeout=10_000)
    # Said to a screen reader as it appears (an alert), not only shown: the status
    # beside it only goes back to "waiting".
    assert await page.get_by_role("alert").get_attribute("id") == "wallet-help"
    await check(page, "paywall-no-wallet", size)


FOCUSED = """() => {
    const e = document.activeElement;
    if (!e || e === document.body) return null;
    const style = getComputedStyle(e), box = e.getBoundingClientRect();
    return {
        what: e.tagName.toLowerCase() + (e.id ? '#' + e.id : ''),
        ring: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2,
        seen: box.width > 0 && box.height > 0,
    };
}"""


async def test_paywall_by_keyboard(gateway, size: Size) -> None:
    """Tab reaches every control of the paywall, in reading order, each with a
    visible focus ring; Enter on the summary opens "For programs"."""
    page = await size.page()
    await page.goto(gateway.base + PAGE.format(n=10))
    await settled(page)
    reached = []
    for _ in range(12):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(FOCUSED)
        if focused is None or (reached and focused == reached[0]):
            break
        reached.append(focused)
    order = [f["what"] for f in reached]
    pay = ["a#open-wallet"] if size.name == "phone" else ["button#pay-with-wallet", "a#payment-uri"]
    assert order == [*pay, "summary", "a"], order
    assert all(f["ring"] and f["seen"] for f in reached), reached
    await page.locator("summary").focus()
    await page.keyboard.press("Enter")
    assert await page.locator("#paywall details").get_attribute("open") is not None


# --- the price list, the error pages, the transparency report ----------------------------------


async def test_price_list(gateway, size: Size) -> None:
    page = await size.page()
    response = await page.goto(gateway.base + PRICES)
    assert response.status == 200 and "text/html" in response.headers["content-type"]
    await check(page, "prices", size)


ERRORS = {
    "404": ("/nothing/here", 404),
    "405": ("/archive/requests", 405),
    "429": ("/archive/search", 429),
    "502": ("/minutes/2026-11", 502),
    "503": ("/archive/copies/12", 503),
    "504": ("/archive/slow?s=3", 504),
}


@pytest.mark.parametrize("name", list(ERRORS))
async def test_error_page(gateway, size: Size, name: str) -> None:
    path, status = ERRORS[name]
    if status == 429:  # the one free request of the hour, spent
        async with aiohttp.ClientSession() as http, http.get(gateway.base + path) as r:
            assert r.status in (200, 429)
    page = await size.page()
    response = await page.goto(gateway.base + path)
    assert response.status == status and "text/html" in response.headers["content-type"]
    await check(page, f"error-{name}", size)


async def test_transparency_report(gateway, size: Size) -> None:
    # At least one payment to show, whichever tests ran before.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.base}{TRANSPARENCY}?format=json") as r:
            report = json.loads(await r.text())
        if not report["days"]:
            await pay_by_phone(http, gateway, PAGE.format(n=7))
    page = await size.page()
    response = await page.goto(gateway.base + TRANSPARENCY)
    assert response.status == 200 and "text/html" in response.headers["content-type"]
    await page.locator("details summary").first.click()  # a day's transactions, opened
    await check(page, "transparency", size)


async def test_dark_mode(gateway, chromium) -> None:
    """The pages' dark colours (prefers-color-scheme: dark), contrast included: the
    paywall with its wallet help and an underpaid payment's warning, the price list,
    an error page, the report."""
    context = await chromium.new_context(locale="en-GB", color_scheme="dark", **SIZES["desktop"])
    size = Size("desktop-dark", context)
    try:
        page = await size.page()
        await page.goto(gateway.base + PAGE.format(n=8))
        await settled(page)
        await page.locator("#pay-with-wallet").click()
        await page.locator("#wallet-help").wait_for(state="visible", timeout=10_000)
        await phone_pays(gateway.devnet, await page.get_attribute("#payment-uri", "href"), 30)
        await page.wait_for_selector("#status.error", timeout=20_000)
        await check(page, "paywall-underpaid-no-wallet", size)
        for name, path in (
            ("prices", PRICES), ("error-502", ERRORS["502"][0]), ("transparency", TRANSPARENCY)
        ):  # fmt: skip
            await page.goto(gateway.base + path)
            await check(page, name, size)
    finally:
        await context.close()


async def test_spanish_on_a_narrow_phone(gateway, chromium) -> None:
    """Longer words than English on the narrowest screen WCAG asks pages to reflow
    to (320 px, 1.4.10): the paywall, on a tab too, the price list, an error page
    and the report still fit."""
    narrow = {**SIZES["phone"], "viewport": {"width": 320, "height": 640}}
    context = await chromium.new_context(locale="es-ES", **narrow)
    size = Size("320px-es", context)
    try:
        page = await size.page()
        for name, path in (
            ("paywall-waiting", PAGE.format(n=9)), ("paywall-tab-euros", TAB.format(n=9)),
            ("prices", PRICES), ("error-404", ERRORS["404"][0]), ("transparency", TRANSPARENCY),
        ):  # fmt: skip
            await page.goto(gateway.base + path)
            assert await page.get_attribute("html", "lang") == "es"
            if name.startswith("error"):  # the gateway's own detail, in English, says so
                assert "no service offers" in await page.inner_text('p.small [lang="en"] >> nth=1')
            await settled(page)
            await check(page, name, size)
    finally:
        await context.close()


async def test_the_check_itself_finds_what_it_should(gateway, chromium) -> None:
    """A page spoilt on purpose: the check names each fault and where it is."""
    context = await chromium.new_context(**SIZES["desktop"])
    try:
        page = await context.new_page()
        await page.goto(gateway.base + ERRORS["404"][0])
        await page.evaluate(
            """() => {
                const main = document.querySelector('main');
                main.insertAdjacentHTML('beforeend',
                    '<button id="nameless"></button>' +
                    '<p id="faint" style="color:#bbb">hard to read</p>' +
                    '<div id="wide" style="width:3000px">wide</div>');
            }"""
        )
        with pytest.raises(AssertionError) as failed:
            await check(page, "spoilt", Size("desktop", context))
        said = str(failed.value)
        assert "button-name (critical)" in said and "#nameless" in said
        assert "color-contrast (serious)" in said and "#faint" in said
        assert re.search(r"the page scrolls sideways: \d+ px wide in a 1280 px window", said)
    finally:
        await context.close()
        (OUTPUT / "a11y-spoilt-desktop.png").unlink(missing_ok=True)  # not a page we serve


async def pay_by_phone(http: aiohttp.ClientSession, gateway, path: str) -> None:
    async with http.get(gateway.base + path, headers={"Accept": "text/html"}) as r:
        html = await r.text()
    href = re.search(r'id="payment-uri" href="([^"]+)"', html) or re.search(
        r'href="(bitcoin:[^"]+)"', html
    )
    status_url = re.search(r'data-status-url="([^"]+)"', html)
    assert href and status_url, html
    await phone_pays(gateway.devnet, href.group(1).replace("&amp;", "&"))
    for _ in range(100):
        async with http.get(gateway.base + status_url.group(1)) as r:
            if (await r.json()).get("status") == "paid":
                return
        await asyncio.sleep(0.2)
    raise AssertionError("the payment was never seen")
