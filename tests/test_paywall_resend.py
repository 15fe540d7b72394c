"""The paywall's wallet button never pays twice for one page (issue 13, item 4).

Real headless Chromium, a real `farebox serve`, a real devnet, transactions
signed by the stand-in BRC-100 wallet of tests/test_browser.py. Between the
browser and the gateway sits a small reverse proxy (what nginx or a load
balancer is) that can lose the pay endpoint's answer after the gateway took
the payment, or answer a proxy's 502 itself; between the gateway and the
devnet another one can fail a broadcast the devnet did take, or the merkle
root checks. Whatever is lost, the page keeps the payment the wallet built
and sends that same one again, and the gateway holds one receipt for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey

from gateway.edge.urls import PAY
from tests.chainkit import beef_of, faucet, spend
from tests.conftest import Upstream
from tests.farebox_process import serve
from tests.test_browser import (
    CHROMIUM,
    StandInWallet,
    _pay_script,
    free_port,
    payment_request,
    setup_gateway,
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (./dev test installs it)",
)

ADMIN_TOKEN = "resend-admin-token-0123456789abcdef"
PAGE = "/records/9/pages/1"
BUTTON = "#pay-with-wallet"
MAY_HAVE = "may have gone through"
NOTHING = "Nothing was charged"
NO_WALLET = "http://127.0.0.1:9"
HOP_BY_HOP = {
    "connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade",
    "proxy-connection", "te", "trailer",
}  # fmt: skip


@pytest.fixture
async def chromium() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        await launched.close()


def txid_of_atomic(beef: bytes) -> str:
    """The subject txid Atomic BEEF (BRC-95) names in its first 36 bytes."""
    assert beef[:4] == b"\x01\x01\x01\x01", "the stand-in wallet builds Atomic BEEF"
    return beef[4:36][::-1].hex()


class Interposer:
    """A reverse proxy in front of `target`, told per request what to do.

    `decide(method, path, body)` returns one of:
    - "pass": forward, answer with the target's answer;
    - "lose": forward, let the target answer, then hang up without answering;
    - "bad-gateway": answer a proxy's 502 page, nothing forwarded;
    - "taken-bad-gateway": forward, then answer 502 instead of the target's answer.
    Every answer closes its connection, so Chromium never resends a request on
    its own (it does, for a POST on a reused keep-alive connection that closed).
    """

    def __init__(self, target: str, decide: Callable[[str, str, bytes], str]) -> None:
        self.target = target
        self.decide = decide
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        action = self.decide(request.method, request.path, body)
        if action == "bad-gateway":
            return _closing(web.Response(status=502, text=BAD_GATEWAY, content_type="text/html"))
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._http.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as answer:
            payload = await answer.read()
            status, answer_headers = answer.status, answer.headers.copy()
        if action == "lose":
            # The target took the request and answered; the answer never arrives.
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if action == "taken-bad-gateway":
            return _closing(web.Response(status=502, text="upstream went away"))
        kept = [(k, v) for k, v in answer_headers.items() if k.lower() not in HOP_BY_HOP]
        response = web.Response(status=status, body=payload)
        for name, value in kept:
            response.headers.add(name, value)
        return _closing(response)


BAD_GATEWAY = "<html><body><h1>502 Bad Gateway</h1></body></html>"


def _closing(response: web.Response) -> web.Response:
    response.force_close()
    return response


class Front:
    """The proxy between the browser and the gateway: records each payment posted
    to the pay endpoint (its txid) and does to it what `plan` says, then "pass";
    while `hold` is set, every pay endpoint answer is lost."""

    def __init__(self) -> None:
        self.plan: list[str] = []
        self.hold = False
        self.pays: list[str] = []

    def __call__(self, method: str, path: str, body: bytes) -> str:
        if method != "POST" or path != PAY:
            return "pass"
        self.pays.append(txid_of_atomic(base64.b64decode(json.loads(body)["beef"])))
        if self.hold:
            return "lose"
        return self.plan.pop(0) if self.plan else "pass"


class ChainFront:
    """The proxy between the gateway and the devnet: `taken` broadcasts reach the
    devnet but answer 502 (the network holds the payment, the gateway cannot
    know); while `roots_down`, merkle root checks fail."""

    def __init__(self) -> None:
        self.taken = 0
        self.roots_down = False
        self.broadcasts = 0
        self.root_checks_failed = 0

    def __call__(self, method: str, path: str, body: bytes) -> str:
        if method == "POST" and path == "/v1/tx":
            self.broadcasts += 1
            if self.taken:
                self.taken -= 1
                return "taken-bad-gateway"
        if self.roots_down and "merkle" in path:
            self.root_checks_failed += 1
            return "bad-gateway"
        return "pass"


class Wallet(StandInWallet):
    """The stand-in wallet, also able to underpay its first payment or refuse to pay."""

    def __init__(self, key: PrivateKey, coin, *, underpay_first: int = 0, fail: int = 0) -> None:
        super().__init__(key, coin)
        self.underpay_first = underpay_first
        self.fail = fail

    async def _create_action(self, request: web.Request) -> web.Response:
        args = await request.json()
        if self.fail:
            self.fail -= 1
            return web.json_response({"error": "the wallet is locked"}, status=500)
        [output] = args["outputs"]
        sats = output["satoshis"] - (self.underpay_first if not self.actions else 0)
        self.actions.append(args)
        tx = _pay_script(self.coin, self.key, bytes.fromhex(output["lockingScript"]), sats)
        atomic = b"\x01\x01\x01\x01" + bytes.fromhex(tx.txid())[::-1] + beef_of(self.coin, tx)
        self.txids.append(tx.txid())
        return web.json_response({"txid": tx.txid(), "tx": list(atomic)})


@contextlib.asynccontextmanager
async def paywall(
    tmp_path: Path, upstream: Upstream, devnet: str, wallet_url: str, front: Front
) -> AsyncIterator[tuple[str, str]]:
    """A gateway on `devnet`, behind `front`: (the browser's base URL, the admin URL)."""
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    admin_port = free_port()
    args = [
        *setup_gateway(tmp_path, upstream, devnet, wallet_url),
        "--admin-port", str(admin_port), "--admin-token-file", str(tmp_path / "admin.token"),
    ]  # fmt: skip
    async with serve(*args) as gw:
        proxy = Interposer(gw.base, front)
        await proxy.start()
        try:
            yield proxy.url, f"http://127.0.0.1:{admin_port}"
        finally:
            await proxy.stop()


async def receipts(admin: str) -> list[dict]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{admin}/receipts", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r,
    ):
        assert r.status == 200, await r.text()
        return (await r.json())["receipts"]


@contextlib.asynccontextmanager
async def running(wallet: StandInWallet) -> AsyncIterator[StandInWallet]:
    await wallet.start()
    try:
        yield wallet
    finally:
        await wallet.stop()


async def eventually(condition: Callable[[], bool], what: str = "", timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what or "condition not met in time")


async def status_says(page, text: str, timeout: float = 15_000) -> str:
    await page.wait_for_function(
        "t => document.getElementById('status').innerText.includes(t)", arg=text, timeout=timeout
    )
    return await page.inner_text("#status")


async def opens(page, timeout: float = 30_000) -> None:
    await page.wait_for_function("!document.getElementById('paywall')", timeout=timeout)
    assert f'"path": "{PAGE}"' in await page.inner_text("body")


async def kept_payments(page) -> int:
    return await page.evaluate("window.sessionStorage.length")


async def one_receipt_for(admin: str, txid: str, chain) -> None:
    [receipt] = await receipts(admin)
    assert receipt["txid"] == txid and receipt["satoshis"] == 40
    assert str(chain.status(txid).status) == "SEEN_ON_NETWORK"


async def test_a_lost_answer_sends_the_same_payment_again(
    tmp_path: Path, upstream: Upstream, devnet_http, chromium
) -> None:
    url, chain = devnet_http
    key = PrivateKey()
    front = Front()
    front.plan = ["lose"]  # the gateway takes the first payment; its answer is lost
    async with (
        running(Wallet(key, await faucet(url, key, 20_000))) as wallet,
        paywall(tmp_path, upstream, url, wallet.url, front) as (base, admin),
    ):
        context = await chromium.new_context()
        page = await context.new_page()
        await page.goto(base + PAGE)
        await page.click(BUTTON)
        text = await status_says(page, MAY_HAVE)
        assert NOTHING not in text and "never charged twice" in text
        assert await page.inner_text(BUTTON) == "Send the same payment again"
        # The automatic resend gets the grant the gateway gave the first time.
        await opens(page)
        [txid] = wallet.txids  # the wallet built one payment
        assert len(front.pays) == 2 and set(front.pays) == {txid}
        await one_receipt_for(admin, txid, chain)
        assert await kept_payments(page) == 0  # settled: nothing kept
        await context.close()


async def test_a_broadcast_not_known_now_is_resent_with_the_same_payment(
    tmp_path: Path, upstream: Upstream, devnet_http, chromium
) -> None:
    url, chain = devnet_http
    key = PrivateKey()
    chain_front = ChainFront()
    chain_front.taken = 1  # the devnet takes the first broadcast; the gateway hears a 502
    to_chain = Interposer(url, chain_front)
    await to_chain.start()
    front = Front()
    try:
        async with (
            running(Wallet(key, await faucet(url, key, 20_000))) as wallet,
            paywall(tmp_path, upstream, to_chain.url, wallet.url, front) as (base, admin),
        ):
            context = await chromium.new_context()
            page = await context.new_page()
            await page.goto(base + PAGE)
            await page.click(BUTTON)
            # 503 chain-unavailable (Retry-After 10): not refused, not settled.
            text = await status_says(page, "could not be finished right now")
            assert "chain" in text or "broadcast" in text
            assert NOTHING not in text and "never charged twice" in text
            assert await kept_payments(page) == 1
            await page.click(BUTTON)  # no need to wait for the automatic resend
            await opens(page)
            [txid] = wallet.txids
            assert front.pays == [txid, txid]
            assert chain_front.broadcasts == 2  # the gateway broadcast the same one again
            await one_receipt_for(admin, txid, chain)
            await context.close()
    finally:
        await to_chain.stop()


async def test_a_definite_refusal_drops_the_kept_payment(
    tmp_path: Path, upstream: Upstream, devnet_http, chromium
) -> None:
    url, chain = devnet_http
    key = PrivateKey()
    front = Front()
    front.plan = ["bad-gateway"]  # a proxy's 502 page: says nothing about the payment
    async with (
        running(Wallet(key, await faucet(url, key, 20_000), underpay_first=10)) as wallet,
        paywall(tmp_path, upstream, url, wallet.url, front) as (base, admin),
    ):
        context = await chromium.new_context()
        page = await context.new_page()
        await page.goto(base + PAGE)
        await page.click(BUTTON)
        text = await status_says(page, MAY_HAVE)
        assert NOTHING not in text
        assert await kept_payments(page) == 1
        # The automatic resend reaches the gateway, which refuses the 30-satoshi payment.
        text = await status_says(page, "not accepted")
        assert "30 satoshis" in text and NOTHING in text
        assert await kept_payments(page) == 0
        assert await page.inner_text(BUTTON) == "Pay 40 satoshis with my wallet"
        [underpaid] = wallet.txids
        assert front.pays == [underpaid, underpaid]
        # The next click builds a new payment, which opens the page.
        await page.click(BUTTON)
        await opens(page)
        assert len(wallet.txids) == 2
        paid = wallet.txids[1]
        assert paid != underpaid and front.pays == [underpaid, underpaid, paid]
        await one_receipt_for(admin, paid, chain)
        assert chain.status(underpaid) is None  # never broadcast
        await context.close()


async def test_a_reload_keeps_the_payment_and_sends_the_same_one(
    tmp_path: Path, upstream: Upstream, devnet_http, chromium
) -> None:
    url, chain = devnet_http
    key = PrivateKey()
    front = Front()
    front.hold = True  # every answer of the pay endpoint is lost
    async with (
        running(Wallet(key, await faucet(url, key, 20_000))) as wallet,
        paywall(tmp_path, upstream, url, wallet.url, front) as (base, admin),
    ):
        context = await chromium.new_context()
        page = await context.new_page()
        await page.goto(base + PAGE)
        await page.click(BUTTON)
        # The answer is lost; once the page has dealt with that, reload it.
        await eventually(lambda: len(front.pays) >= 1)
        await page.wait_for_function(f"!document.querySelector('{BUTTON}').disabled")
        await page.reload()
        sent = len(front.pays)
        # After the reload the page sends the kept payment again by itself.
        await eventually(lambda: len(front.pays) > sent, "no payment sent after the reload")
        await status_says(page, MAY_HAVE)
        assert await kept_payments(page) == 1
        assert await page.inner_text(BUTTON) == "Send the same payment again"
        front.hold = False  # answers arrive again
        await opens(page)
        [txid] = wallet.txids
        assert set(front.pays) == {txid} and len(front.pays) >= 3
        await one_receipt_for(admin, txid, chain)
        await context.close()


async def test_a_wallet_that_fails_sent_nothing(
    tmp_path: Path, upstream: Upstream, devnet_http, chromium
) -> None:
    url, chain = devnet_http
    key = PrivateKey()
    front = Front()
    async with (
        running(Wallet(key, await faucet(url, key, 20_000), fail=1)) as wallet,
        paywall(tmp_path, upstream, url, wallet.url, front) as (base, admin),
    ):
        context = await chromium.new_context()
        page = await context.new_page()
        await page.goto(base + PAGE)
        await page.click(BUTTON)
        text = await status_says(page, "Your wallet did not make the payment")
        assert "Nothing was sent" in text and MAY_HAVE not in text
        assert front.pays == [] and await kept_payments(page) == 0
        await page.click(BUTTON)
        await opens(page)
        [txid] = wallet.txids
        assert front.pays == [txid]
        await one_receipt_for(admin, txid, chain)
        await context.close()


async def test_a_phone_payment_not_checked_yet_is_not_called_refused(
    tmp_path: Path, upstream: Upstream, devnet_http, chromium
) -> None:
    url, chain = devnet_http
    chain_front = ChainFront()
    chain_front.roots_down = True  # the gateway cannot check merkle roots for now
    to_chain = Interposer(url, chain_front)
    await to_chain.start()
    phone = PrivateKey()
    coin = await faucet(url, phone, 20_000)
    front = Front()
    try:
        async with paywall(tmp_path, upstream, to_chain.url, NO_WALLET, front) as (base, admin):
            context = await chromium.new_context()
            page = await context.new_page()
            await page.goto(base + PAGE)
            address, sats = payment_request(await page.get_attribute("#payment-uri", "href"))
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
            # The watcher finds it; taking it fails "not now" (chain-unavailable).
            text = await status_says(page, "cannot be finished yet", timeout=20_000)
            assert NOTHING not in text and "not accepted" not in text
            assert chain_front.root_checks_failed >= 1
            chain_front.roots_down = False
            await opens(page)
            await one_receipt_for(admin, tx.txid(), chain)
            await context.close()
    finally:
        await to_chain.stop()


# --- the page keeps asking a little after its checkout expires -----------------------


async def test_a_waiting_page_still_opens_for_a_payment_made_as_it_expires(
    tmp_path: Path, upstream, devnet_http, chromium
) -> None:
    url, _ = devnet_http
    args = setup_gateway(tmp_path, upstream, url, "http://127.0.0.1:9")
    phone = PrivateKey()
    coin = await faucet(url, phone, 20_000)
    async with serve(*args) as gw:
        context = await chromium.new_context()
        page = await context.new_page()
        await page.clock.install()  # the page's clock: its checkout's time runs out at once
        await page.goto(f"{gw.base}/records/7/pages/3")
        address, sats = payment_request(await page.get_attribute("#payment-uri", "href"))
        await page.clock.fast_forward(11 * 60 * 1000)  # past the 10 minutes
        await page.wait_for_function(
            "document.getElementById('status').innerText.includes('Checking once more')"
        )
        # The phone's payment arrives just then.
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
        for _ in range(20):  # the page's polls run on its (installed) clock
            await page.clock.run_for(1_600)
            if not await page.locator("#paywall").count():
                break
            await asyncio.sleep(0.25)
        await page.wait_for_function("!document.getElementById('paywall')", timeout=10_000)
        assert '"path": "/records/7/pages/3"' in await page.inner_text("body")
        await context.close()
