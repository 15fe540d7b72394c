"""A real BRC-100 wallet against a real gateway: @bsv/wallet-toolbox on the devnet.

tests/interop/toolbox.mjs runs the toolbox's own `Wallet` (WalletStorageManager
over StorageKnex on an in-memory better-sqlite3 database) under node; only its
chain services are an adapter over the devnet's HTTP API
(tests/interop/devnet_services.mjs), because the devnet is no public network.
The wallet funds itself from the devnet faucet with `internalizeAction`, pays
BRC-121 402s with `createAction`, takes in BRC-29 payments from Farebox's
client with `internalizeAction`, and pays the paywall's button in Chromium
over a BRC-100 HTTP interface. Its monitor is never started; two of its tasks
(send waiting transactions, fetch proofs) are run on request. Its state lives
in the node process, so each test talks to one process (JSON lines) for all
its steps.

The harness is tests/toolbox_support.py. Needs node and tests/interop/node_modules
(`./dev test` installs them; the test runs `npm ci --prefix tests/interop` itself
once when they are missing). Skipped only when node is not installed; a failed
install fails. The browser test also needs Debian's chromium, as
tests/test_browser.py does.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from bsv import PublicKey

from gateway.bsv.derivation import payee_key
from gateway.client.faucet import fund as faucet_fund
from gateway.client.wallet import Wallet as FareboxWallet
from gateway.keys import load as load_key
from tests.conftest import Upstream
from tests.farebox_process import run, serve
from tests.toolbox_support import require_node, toolbox

PRICE = 40


@pytest.fixture(scope="session")
def node() -> str:
    return require_node()


def gateway_args(
    tmp_path: Path, upstream: Upstream, devnet: str, *extra: str
) -> tuple[list[str], str]:
    """`farebox serve` arguments for a priced route on the devnet, and the server key."""
    key = tmp_path / "server.key"
    server_pub = run("keys", "generate", "--out", str(key)).stdout.split("public key: ")[1].strip()
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        f"services:\n  archive:\n    description: County records archive\n"
        f"    upstream: {upstream.url}\n    routes:\n"
        "      - path: /records/{id}/pages/{page}\n"
        f"        price: {PRICE}\n"
        "        grant: {lasts: 1h, covers: resource}\n"
        "        description: One transcribed page of a parish register\n"
    )
    args = [
        "--policies", str(folder), "--key-file", str(key), "--port", "0",
        "--devnet-url", devnet, "--token-keys", str(tmp_path / "tk"), *extra,
    ]  # fmt: skip
    return args, server_pub


def claims(token: str) -> dict[str, Any]:
    """A token's claims (its signature is the gateway's business: it is checked by use)."""
    return jwt.decode(token, options={"verify_signature": False})


async def test_toolbox_wallet_pays_a_gateway_with_brc121(
    node: str, tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, chain = devnet_http
    args, server_pub = gateway_args(tmp_path, upstream, url)
    async with toolbox(node, url) as wallet, serve(*args) as gw, aiohttp.ClientSession() as http:
        funded = await wallet.call("fund", satoshis=50_000)
        assert funded["balance"] == 50_000
        assert str(chain.status(funded["txid"]).status) == "MINED"  # the faucet mines at once

        page = f"{gw.base}/records/7/pages/3"
        answer = await wallet.call("pay", url=page)
        assert answer["status"] == 200, answer
        assert json.loads(answer["body"])["path"] == "/records/7/pages/3"  # the upstream's answer
        paid = answer["paid"]
        txid = paid["txid"]
        assert paid["satoshis"] == PRICE and paid["server"] == server_pub
        # What the wallet sent is what BRC-121 asks for; Farebox's derivation agrees.
        sent = paid["headers"]
        beef = base64.b64decode(sent["x-bsv-beef"])
        assert beef[:4] == b"\x01\x01\x01\x01" and beef[4:36][::-1].hex() == txid
        assert sent["x-bsv-sender"] == wallet.identity_key and sent["x-bsv-vout"] == "0"
        suffix = base64.b64encode(sent["x-bsv-time"].encode()).decode()
        # The server's half of BRC-42 (Farebox's Python) lands on the key the wallet derived.
        server_key = load_key(tmp_path / "server.key")
        assert server_key.public_key().hex() == server_pub
        theirs = payee_key(server_key, PublicKey(wallet.identity_key), sent["x-bsv-nonce"], suffix)
        assert theirs.hex() == paid["payee"]

        # The wallet broadcast its transaction itself, and the gateway took it.
        assert txid in await wallet.call("posted")
        status = chain.status(txid)
        assert status is not None and str(status.status) == "SEEN_ON_NETWORK"
        paid_tx = chain.get_transaction(txid)
        assert paid_tx is not None and paid_tx.outputs[0].satoshis == PRICE
        assert PublicKey(paid["payee"]).hash160() in paid_tx.outputs[0].locking_script.serialize()

        token = answer["headers"]["x-farebox-token"]
        granted = claims(token)
        assert (granted["txid"], granted["sats"]) == (txid, PRICE)
        bearer = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{gw.base}/.well-known/farebox/receipts/{txid}", headers=bearer) as r:
            assert r.status == 200, await r.text()
            receipt = await r.json()
        assert receipt["txid"] == txid and receipt["satoshis"] == PRICE
        assert receipt["resource"] == "/records/7/pages/3"

        # The wallet's own books: one payment of the price plus a fee, out of the faucet coin.
        after = await wallet.balance()
        fee = 50_000 - PRICE - after
        assert 0 < fee < 100, after
        [action] = [a for a in await wallet.call("actions") if a["txid"] == txid]
        assert action["satoshis"] == -(PRICE + fee) and "brc121" in action["labels"]

        # The token opens the page again: no 402, no payment.
        again = await wallet.call("pay", url=page, headers=bearer)
        assert again["status"] == 200 and again["paid"] is None
        assert await wallet.balance() == after
        assert chain.status(txid) == status  # nothing new broadcast


async def test_a_resent_toolbox_payment_gets_the_same_grant(
    node: str, tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, chain = devnet_http
    args, _ = gateway_args(tmp_path, upstream, url)
    async with toolbox(node, url) as wallet, serve(*args) as gw, aiohttp.ClientSession() as http:
        await wallet.call("fund", satoshis=20_000)
        page = f"{gw.base}/records/2/pages/5"
        answer = await wallet.call("pay", url=page)
        assert answer["status"] == 200, answer
        granted = claims(answer["headers"]["x-farebox-token"])
        sent = answer["paid"]["headers"]
        balance = await wallet.balance()
        served = len(upstream.seen)

        # The same headers again: the same grant, and the page served again.
        async with http.get(page, headers=sent) as r:
            assert r.status == 200, await r.text()
            resent = claims(r.headers["X-Farebox-Token"])
        assert resent["jti"] == granted["jti"] and resent["txid"] == granted["txid"]
        assert len(upstream.seen) == served + 1

        # The same payment through the pay endpoint: the same grant, marked repeated.
        body = {
            "beef": sent["x-bsv-beef"],
            "sender": sent["x-bsv-sender"],
            "nonce": sent["x-bsv-nonce"],
            "time": sent["x-bsv-time"],
            "vout": 0,
            "method": "GET",
            "url": "/records/2/pages/5",
        }
        async with http.post(f"{gw.base}/.well-known/farebox/pay", json=body) as r:
            assert r.status == 200, await r.text()
            repeated = await r.json()
        assert repeated["repeated"] is True
        assert claims(repeated["token"])["jti"] == granted["jti"]
        assert repeated["receipt"]["txid"] == granted["txid"]

        # One payment on the chain and in the wallet's books, however often it was shown.
        assert await wallet.balance() == balance
        status = chain.status(granted["txid"])
        assert status is not None and str(status.status) == "SEEN_ON_NETWORK"


async def test_toolbox_wallet_receives_a_brc29_payment_from_farebox(
    node: str, tmp_path: Path, devnet_http
) -> None:
    url, chain = devnet_http
    sender = FareboxWallet.create(tmp_path / "farebox-wallet.json")
    await faucet_fund(sender, 20_000, url)
    async with toolbox(node, url) as wallet:
        assert await wallet.balance() == 0
        # Farebox's client pays the toolbox's identity key, BRC-29, unconfirmed.
        payment = sender.prepare_payment(wallet.identity_key, 1_234)
        assert chain.status(payment.txid) is None
        taken = await wallet.call(
            "receive",
            beef=base64.b64encode(payment.beef).decode(),
            vout=payment.vout,
            prefix=payment.prefix,
            suffix=payment.suffix,
            sender=payment.sender,
        )
        assert taken["accepted"] is True
        assert (taken["balanceBefore"], taken["balance"]) == (0, 1_234)
        # internalizeAction stores an unconfirmed payment as unsent; the toolbox's
        # monitor broadcasts it (its TaskSendWaiting, run once here).
        assert chain.status(payment.txid) is None
        sent = await wallet.call("sendWaiting")
        assert payment.txid in sent["posted"], sent
        status = chain.status(payment.txid)
        assert status is not None and str(status.status) == "SEEN_ON_NETWORK"
        [action] = [a for a in await wallet.call("actions") if a["txid"] == payment.txid]
        assert action["satoshis"] == 1_234 and "received" in action["labels"]
        assert action["status"] == "unproven"
        # Mined, its proof fetched by the monitor (TaskCheckForProofs): completed.
        chain.mine()
        await wallet.call("checkForProofs")
        [action] = [a for a in await wallet.call("actions") if a["txid"] == payment.txid]
        assert action["status"] == "completed"
        assert await wallet.balance() == 1_234


# --- the paywall's button, paid by this wallet ------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium under Playwright (as tests/test_browser.py drives it)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (./dev test installs it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        await launched.close()


async def test_paywall_button_pays_with_the_toolbox_wallet(
    node: str, tmp_path: Path, upstream: Upstream, devnet_http, chromium
) -> None:
    # The page calls a BRC-100 wallet over HTTP (POST <wallet>/getPublicKey,
    # /createAction); toolbox.mjs serves the toolbox Wallet there. The transport
    # stands in for a desktop wallet's local port; the wallet behind it is real.
    url, chain = devnet_http
    async with toolbox(node, url) as wallet:
        await wallet.call("fund", satoshis=20_000)
        wallet_url = (await wallet.call("serve"))["url"]
        args, _ = gateway_args(
            tmp_path, upstream, url, "--wallet-url", wallet_url, "--insecure-cookies"
        )
        async with serve(*args) as gw:
            context = await chromium.new_context()
            page = await context.new_page()
            response = await page.goto(f"{gw.base}/records/9/pages/1")
            assert response.status == 402
            await page.get_by_role("button", name=f"Pay {PRICE} satoshis with my wallet").click()
            await page.wait_for_function("!document.getElementById('paywall')", timeout=30_000)
            assert '"path": "/records/9/pages/1"' in await page.inner_text("body")
            cookies = {c["name"]: c for c in await context.cookies()}
            assert cookies["farebox_token"]["httpOnly"] is True
            await context.close()

        calls = await wallet.call("httpCalls")
        assert [c["call"] for c in calls] == ["getPublicKey", "getPublicKey", "createAction"]
        assert all("error" not in c for c in calls), calls
        identity, derived, created = calls
        assert identity["args"] == {"identityKey": True}
        assert derived["args"]["protocolID"] == [2, "3241645161d8"]
        assert created["args"]["outputs"][0]["satoshis"] == PRICE
        assert created["originator"] == "127.0.0.1"  # the page's origin, as the wallet saw it
        txid = created["txid"]

        # The gateway broadcast what the wallet built; the wallet delayed its own
        # broadcast (the page asks for the default), so its monitor sends it
        # later and the devnet already knows it.
        status = chain.status(txid)
        assert status is not None and str(status.status) == "SEEN_ON_NETWORK"
        assert txid not in await wallet.call("posted")
        await wallet.call("sendWaiting")
        [action] = [a for a in await wallet.call("actions") if a["txid"] == txid]
        assert action["status"] == "unproven"
        fee = 20_000 - PRICE - await wallet.balance()
        assert 0 < fee < 100 and action["satoshis"] == -(PRICE + fee)
