"""The whole loop with real parts: `farebox serve --devnet-url` against a devnet
over HTTP (ARC broadcaster, devnet tracker behind the cache), paid with
transactions funded by the devnet's faucet."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import aiohttp
from bsv import PrivateKey, PublicKey

from tests.chainkit import atomic, brc121_headers, faucet, pay
from tests.conftest import Upstream
from tests.farebox_process import run, serve


async def test_serve_takes_a_devnet_payment_end_to_end(
    tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, chain = devnet_http
    key = tmp_path / "server.key"
    generated = run("keys", "generate", "--out", str(key))
    server_pub = generated.stdout.split("public key: ")[1].strip()
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        f"services:\n  s:\n    upstream: {upstream.url}\n    routes:\n"
        "      - {path: /page/*, price: 40, grant: {lasts: 1h}}\n"
    )
    client = PrivateKey()
    parent = await faucet(url, client, 50_000)
    args = ("--policies", str(folder), "--key-file", str(key), "--port", "0",
            "--devnet-url", url, "--token-keys", str(tmp_path / "tk"))  # fmt: skip
    async with serve(*args) as gw, aiohttp.ClientSession() as http:
        assert "payments on" in gw.log
        headers, txid = brc121_headers(server_pub, client, parent, 40)
        async with http.get(f"{gw.base}/page/1", headers=headers) as r:
            assert r.status == 200, await r.text()
            token = r.headers["X-Farebox-Token"]
        # The devnet knows the payment; the gateway holds its receipt.
        assert str(chain.status(txid).status) == "SEEN_ON_NETWORK"
        async with http.get(
            f"{gw.base}/.well-known/farebox/receipts/{txid}",
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            assert (await r.json())["satoshis"] == 40
        # The token opens the page again; the same coins cannot pay twice.
        async with http.get(f"{gw.base}/page/1", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
        double, double_txid = brc121_headers(server_pub, client, parent, 41)
        async with http.get(f"{gw.base}/page/2", headers=double) as r:
            body = await r.json(content_type=None)
            assert r.status == 402 and body["reason"] == "double-spend", body
        assert chain.status(double_txid) is None or not chain.status(double_txid).accepted


async def test_large_beef_header_is_accepted(
    tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    # A payment whose parent is unconfirmed and fat: ~20 kB of BEEF in a header,
    # beyond aiohttp's default 8 kB header limit.
    from tests.chainkit import spend

    url, chain = devnet_http
    key = tmp_path / "server.key"
    server_pub = run("keys", "generate", "--out", str(key)).stdout.split("public key: ")[1].strip()
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        f"services:\n  s:\n    upstream: {upstream.url}\n    routes: [{{path: /x, price: 5}}]\n"
    )
    client = PrivateKey()
    funding = await faucet(url, client, 1_000_000)
    fat = spend(
        funding, 0, client, [(client.public_key(), 1000)] * 500 + [(client.public_key(), 400_000)]
    )
    assert chain.submit(fat).accepted
    now = str(int(time.time() * 1000))
    p = pay(
        PublicKey(server_pub),
        client,
        5,
        None,
        parent=fat,
        prefix="ZmF0",
        suffix=base64.b64encode(now.encode()).decode(),
    )
    beef = atomic(p.tx, funding, fat, p.tx)
    assert len(beef) > 16_000
    headers = {
        "x-bsv-beef": base64.b64encode(beef).decode(),
        "x-bsv-sender": client.public_key().hex(),
        "x-bsv-nonce": "ZmF0",
        "x-bsv-time": now,
        "x-bsv-vout": "0",
    }
    args = (
        "--policies",
        str(folder),
        "--key-file",
        str(key),
        "--port",
        "0",
        "--devnet-url",
        url,
        "--token-keys",
        str(tmp_path / "tk"),
    )
    async with (
        serve(*args) as gw,
        aiohttp.ClientSession() as http,
        http.get(f"{gw.base}/x", headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
