"""The paywall in a real browser: headless Chromium (Debian's) driven by Playwright.

A real `farebox serve` on a real devnet. Two ways to pay, as a person would:
- a phone wallet scans the QR code and broadcasts the payment itself; the
  gateway's payment watcher finds it and the page turns into the resource;
- the page's button asks a BRC-100 wallet on this computer (a stand-in that
  builds real transactions with bsv-sdk) and posts the payment.
Screenshots of the page (desktop and phone sizes) go to test-output/.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey, PublicKey, Transaction

from gateway.bsv.derivation import PROTOCOL_ID
from tests.chainkit import beef_of, faucet, spend
from tests.conftest import Upstream
from tests.farebox_process import run, serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (./dev test installs it)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        await launched.close()


class StandInWallet:
    """A BRC-100 wallet's HTTP interface (getPublicKey, createAction), enough to pay.

    It spends a devnet coin with bsv-sdk and answers with Atomic BEEF, as a
    desktop wallet does; CORS is open, as those wallets answer pages.
    """

    def __init__(self, key: PrivateKey, coin: Transaction) -> None:
        self.key = key
        self.coin = coin
        self.url = ""
        self.actions: list[dict] = []
        self.txids: list[str] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._cors])
        app.router.add_post("/getPublicKey", self._public_key)
        app.router.add_post("/createAction", self._create_action)
        app.router.add_route("OPTIONS", "/{tail:.*}", self._preflight)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _cors(self, request: web.Request, handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Allow-Private-Network"] = "true"
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _public_key(self, request: web.Request) -> web.Response:
        args = await request.json()
        if args.get("identityKey"):
            return web.json_response({"publicKey": self.key.public_key().hex()})
        level, protocol = args["protocolID"]
        assert (level, protocol) == (2, PROTOCOL_ID)
        invoice = f"{level}-{protocol}-{args['keyID']}"
        counterparty = PublicKey(args["counterparty"])
        return web.json_response({"publicKey": counterparty.derive_child(self.key, invoice).hex()})

    async def _create_action(self, request: web.Request) -> web.Response:
        args = await request.json()
        self.actions.append(args)
        [output] = args["outputs"]
        tx = _pay_script(
            self.coin, self.key, bytes.fromhex(output["lockingScript"]), output["satoshis"]
        )
        atomic = b"\x01\x01\x01\x01" + bytes.fromhex(tx.txid())[::-1] + beef_of(self.coin, tx)
        self.txids.append(tx.txid())
        return web.json_response({"txid": tx.txid(), "tx": list(atomic)})


def _pay_script(coin: Transaction, key: PrivateKey, script: bytes, sats: int) -> Transaction:
    from bsv import P2PKH, Script, TransactionInput, TransactionOutput

    change = coin.outputs[0].satoshis - sats - 200
    tx = Transaction(
        [
            TransactionInput(
                source_transaction=coin,
                source_output_index=0,
                unlocking_script_template=P2PKH().unlock(key),
            )
        ],
        [
            TransactionOutput(Script(script), sats),
            TransactionOutput(P2PKH().lock(key.address()), change),
        ],
    )
    tx.sign()
    return tx


def setup_gateway(tmp_path: Path, upstream: Upstream, devnet: str, wallet_url: str) -> list[str]:
    key = tmp_path / "server.key"
    run("keys", "generate", "--out", str(key))
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        f"services:\n  archive:\n    description: County records archive\n"
        f"    upstream: {upstream.url}\n    routes:\n"
        "      - path: /records/{id}/pages/{page}\n"
        "        price: 40\n"
        "        grant: {lasts: 24h, covers: resource}\n"
        "        description: One transcribed page of a parish register\n"
    )
    return [
        "--policies", str(folder), "--key-file", str(key), "--port", "0",
        "--devnet-url", devnet, "--token-keys", str(tmp_path / "tk"),
        "--wallet-url", wallet_url, "--insecure-cookies",
    ]  # fmt: skip


PHONE_UA = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36"
)


def payment_request(href: str) -> tuple[str, int]:
    parts = urlsplit(unquote(href))
    amount = parse_qs(parts.query)["amount"][0]
    return parts.path, round(float(amount) * 100_000_000)


async def shoot(page, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / name), full_page=True)


async def test_phone_wallet_pays_the_qr_code_and_the_page_opens(
    tmp_path: Path, upstream: Upstream, devnet_http, browser
) -> None:
    url, chain = devnet_http
    args = setup_gateway(tmp_path, upstream, url, "http://127.0.0.1:9")
    phone = PrivateKey()
    coin = await faucet(url, phone, 20_000)
    async with serve(*args) as gw:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        response = await page.goto(f"{gw.base}/records/7/pages/3")
        assert response.status == 402
        assert response.headers["x-bsv-sats"] == "40"  # BRC-121 on the page too
        text = await page.inner_text("main")
        assert "40 satoshis" in text and "County records archive" in text
        # In the policy's words, not the path; the way to pay for a computer first.
        assert "One transcribed page of a parish register" in text
        assert "GET /records/7/pages/3" not in text
        assert "You can open it as often as you like for 1 day." in text
        assert await page.locator(".qr svg").is_visible()
        assert await page.locator("#pay-with-wallet").is_visible()
        assert not await page.locator("#open-wallet").is_visible()
        await shoot(page, "paywall-desktop.png")

        phone_view = await browser.new_context(
            viewport={"width": 390, "height": 844},
            is_mobile=True,
            has_touch=True,
            device_scale_factor=2,
            user_agent=PHONE_UA,
        )
        small = await phone_view.new_page()
        await small.goto(f"{gw.base}/records/7/pages/3")
        box = await small.locator(".qr svg").bounding_box()
        assert box is not None and box["width"] <= 390  # the code fits a phone screen
        # A phone opens its wallet app; no pitch for a wallet on "this computer".
        assert await small.locator("#open-wallet").is_visible()
        assert not await small.locator("#pay-with-wallet").is_visible()
        await shoot(small, "paywall-phone.png")
        await phone_view.close()

        # A reader whose browser asks for Spanish gets the page in Spanish.
        for size, options in (
            ("desktop", {"viewport": {"width": 1280, "height": 900}}),
            ("phone", {"viewport": {"width": 390, "height": 844}, "is_mobile": True,
                       "has_touch": True, "user_agent": PHONE_UA}),
        ):  # fmt: skip
            spanish = await browser.new_context(locale="es-ES", **options)
            es = await spanish.new_page()
            await es.goto(f"{gw.base}/records/7/pages/3")
            assert await es.get_attribute("html", "lang") == "es"
            words = await es.inner_text("main")
            assert "Pago necesario" in words and "Cómo pagar" in words
            assert "Puede abrirlo tantas veces como quiera durante 1 día." in words
            await shoot(es, f"paywall-es-{size}.png")
            await spanish.close()

        # The phone scans the code and broadcasts a payment to its address.
        address, sats = payment_request(await page.get_attribute("#payment-uri", "href"))
        assert sats == 40
        tx = spend(coin, 0, phone, [(address, sats), (phone.public_key(), 19_000)])
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/tx",
                data=beef_of(coin, tx),
                headers={"Content-Type": "application/octet-stream"},
            ) as r,
        ):
            assert r.status == 200, await r.text()

        # The page polls, the gateway's watcher finds the payment, the page opens.
        await page.wait_for_function(
            "document.body.innerText.includes('/records/7/pages/3') && !document.getElementById('paywall')",
            timeout=20_000,
        )
        assert '"path": "/records/7/pages/3"' in await page.inner_text("body")
        cookies = {c["name"]: c for c in await context.cookies()}
        assert cookies["farebox_token"]["httpOnly"] is True
        assert str(chain.status(tx.txid()).status) == "SEEN_ON_NETWORK"
        await context.close()


async def test_an_underpaid_phone_payment_is_explained(
    tmp_path: Path, upstream: Upstream, devnet_http, browser
) -> None:
    url, _ = devnet_http
    args = setup_gateway(tmp_path, upstream, url, "http://127.0.0.1:9")
    phone = PrivateKey()
    coin = await faucet(url, phone, 20_000)
    async with serve(*args) as gw:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{gw.base}/records/2/pages/2")
        address, _ = payment_request(await page.get_attribute("#payment-uri", "href"))
        tx = spend(coin, 0, phone, [(address, 30), (phone.public_key(), 19_000)])
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/tx",
                data=beef_of(coin, tx),
                headers={"Content-Type": "application/octet-stream"},
            ) as r,
        ):
            assert r.status == 200
        status = page.locator("#status")
        await page.wait_for_function(
            "document.getElementById('status').innerText.includes('less than the price')",
            timeout=20_000,
        )
        text = await status.inner_text()
        assert "30 satoshis" in text and "40" in text and "Pay the full price" in text
        assert await page.locator("#paywall").count() == 1  # still the paywall
        await context.close()


async def test_browser_wallet_button_pays_and_the_page_opens(
    tmp_path: Path, upstream: Upstream, devnet_http, browser
) -> None:
    url, chain = devnet_http
    key = PrivateKey()
    wallet = StandInWallet(key, await faucet(url, key, 20_000))
    await wallet.start()
    try:
        args = setup_gateway(tmp_path, upstream, url, wallet.url)
        async with serve(*args) as gw:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(f"{gw.base}/records/9/pages/1")
            button = page.get_by_role("button", name="Pay 40 satoshis with my wallet")
            await button.focus()  # reachable by keyboard
            await page.keyboard.press("Enter")
            await page.wait_for_function("!document.getElementById('paywall')", timeout=20_000)
            assert '"path": "/records/9/pages/1"' in await page.inner_text("body")
            [action] = wallet.actions
            assert action["outputs"][0]["satoshis"] == 40
            # The gateway broadcast what the wallet built.
            assert str(chain.status(wallet.txids[0]).status) == "SEEN_ON_NETWORK"
            await context.close()
    finally:
        await wallet.stop()


async def test_without_a_wallet_the_page_says_what_to_install(
    tmp_path: Path, upstream: Upstream, devnet_http, browser
) -> None:
    url, _ = devnet_http
    args = setup_gateway(tmp_path, upstream, url, f"http://127.0.0.1:{free_port()}")
    async with serve(*args) as gw:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{gw.base}/records/1/pages/1")
        await page.get_by_role("button").click()
        help_text = page.locator("#wallet-help")
        await help_text.wait_for(state="visible", timeout=10_000)
        assert "Install a BRC-100" in await help_text.inner_text()
        await context.close()


async def test_curl_still_gets_problem_json(
    tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, _ = devnet_http
    args = setup_gateway(tmp_path, upstream, url, "http://127.0.0.1:9")
    async with (
        serve(*args) as gw,
        aiohttp.ClientSession() as http,
        http.get(f"{gw.base}/records/1/pages/1", headers={"Accept": "*/*"}) as r,
    ):
        assert r.status == 402 and r.content_type == "application/problem+json"
        assert r.headers["x-bsv-sats"] == "40"
