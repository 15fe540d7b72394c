"""Several gateways, one Redis: they agree on every payment and fail closed together.

Two real `farebox serve` processes on different ports share a Redis the test
starts, a devnet over HTTP, and the same identity and token keys (as two
machines behind a load balancer would).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from bsv import PrivateKey

from gateway.store.redis import RedisStore
from tests.chainkit import brc121_headers, faucet
from tests.conftest import Upstream
from tests.farebox_process import Running, run, serve
from tests.redis_servers import RedisServer, need_redis


@pytest.fixture
def redis(tmp_path: Path):
    need_redis()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def setup(tmp_path: Path, upstream: Upstream) -> tuple[list[str], str]:
    key = tmp_path / "server.key"
    server_pub = run("keys", "generate", "--out", str(key)).stdout.split("public key: ")[1].strip()
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        f"services:\n  s:\n    upstream: {upstream.url}\n    tabs: {{top_up: 1000}}\n"
        "    routes:\n"
        "      - {path: /page/*, price: 30, grant: {lasts: 1h}}\n"
        "      - {path: /free/*, price: free}\n"
        "      - {path: /calls/*, price: 10, meter: {per: request}}\n"
    )
    args = [
        "--policies",
        str(folder),
        "--key-file",
        str(key),
        "--port",
        "0",
        "--token-keys",
        str(tmp_path / "tk"),
    ]
    return args, server_pub


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict, bytes]:
    async with http.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def test_two_instances_agree_on_tokens_payments_and_revocations(
    tmp_path: Path, upstream: Upstream, redis: RedisServer, devnet_http
) -> None:
    url, chain = devnet_http
    args, server_pub = setup(tmp_path, upstream)
    args += ["--devnet-url", url, "--store", redis.url]
    client = PrivateKey()
    parent = await faucet(url, client, 100_000)
    async with serve(*args) as a, serve(*args) as b, aiohttp.ClientSession() as http:
        # A token minted by one is honoured by the other.
        headers, _ = brc121_headers(server_pub, client, parent, 30)
        status, resp, _ = await get(http, f"{a.base}/page/1", headers)
        assert status == 200
        token = {"Authorization": f"Bearer {resp['X-Farebox-Token']}"}
        assert (await get(http, f"{b.base}/page/1", token))[0] == 200
        assert (await get(http, f"{b.base}/page/2", token))[0] == 402

        # The same new payment, 200 times at once over both: accepted once.
        parent2 = await faucet(url, client, 100_000)
        headers2, txid2 = brc121_headers(server_pub, client, parent2, 30)
        gateways: list[Running] = [a, b]
        results = await asyncio.gather(
            *(get(http, f"{gateways[i % 2].base}/page/3", headers2) for i in range(200))
        )
        statuses = [status for status, _, _ in results]
        tokens = {resp.get("X-Farebox-Token") for status, resp, _ in results if status == 200}
        assert set(statuses) <= {200, 402, 409, 503}, set(statuses)
        assert statuses.count(200) >= 1 and len(tokens) == 1, (statuses, tokens)
        assert str(chain.status(txid2).status) == "SEEN_ON_NETWORK"
        store = RedisStore.from_url(redis.url)
        try:
            receipt = await store.receipt(txid2)
            assert receipt is not None and receipt.satoshis == 30

            # A revocation written through one store is in force everywhere
            # within the documented bound (1 s of cached answers).
            jti = jwt.decode(resp["X-Farebox-Token"], options={"verify_signature": False})["jti"]
            await store.revoke(jti, int(time.time()) + 3600)
        finally:
            await store.close()
        await asyncio.sleep(1.2)
        for gw in (a, b):
            status, _, body = await get(http, f"{gw.base}/page/1", token)
            assert status == 402 and b"grant-revoked" in body


async def test_store_outage_fails_closed_and_heals(
    tmp_path: Path, upstream: Upstream, redis: RedisServer, devnet_http
) -> None:
    url, _ = devnet_http
    args, server_pub = setup(tmp_path, upstream)
    args += ["--devnet-url", url, "--store", redis.url, "--workers", "1"]
    client = PrivateKey()
    parent = await faucet(url, client, 100_000)
    async with serve(*args) as gw, aiohttp.ClientSession() as http:
        headers, _ = brc121_headers(server_pub, client, parent, 30)
        status, resp, _ = await get(http, f"{gw.base}/page/1", headers)
        assert status == 200
        token = {"Authorization": f"Bearer {resp['X-Farebox-Token']}"}
        assert (await get(http, f"{gw.base}/readyz"))[0] == 200

        redis.stop()
        try:
            # A valid token, a fresh payment, or nothing: never a priced 200.
            for attempt in (
                token,
                brc121_headers(server_pub, client, await faucet(url, client, 50_000), 30)[0],
                None,
            ):
                status, _, body = await get(http, f"{gw.base}/page/1", attempt)
                assert status == 503, (status, body)
                assert b"store-unavailable" in body
            assert (await get(http, f"{gw.base}/free/1"))[0] == 200  # free routes keep working
            status, _, body = await get(http, f"{gw.base}/readyz")
            assert status == 503 and b"not-ready" in body
        finally:
            redis.start()  # same port, no gateway restart

        deadline = time.monotonic() + 15
        while (await get(http, f"{gw.base}/page/1", token))[0] != 200:
            assert time.monotonic() < deadline, "the gateway did not recover by itself"
            await asyncio.sleep(0.2)
        assert (await get(http, f"{gw.base}/readyz"))[0] == 200


async def test_workers_share_the_store(
    tmp_path: Path, upstream: Upstream, redis: RedisServer, devnet_http
) -> None:
    import socket

    url, chain = devnet_http
    args, server_pub = setup(tmp_path, upstream)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args[args.index("--port") + 1] = str(port)
    args += ["--devnet-url", url, "--store", redis.url, "--workers", "2"]
    client = PrivateKey()
    parent = await faucet(url, client, 100_000)
    async with serve(*args, ready=None) as gw:
        gw.port = port
        await gw.wait_for_log(r"listening on", timeout=20, count=2)
        headers, txid = brc121_headers(server_pub, client, parent, 30)
        # New connections spread over both workers; one payment, one acceptance.
        results = []
        for _ in range(20):
            async with aiohttp.ClientSession() as fresh:
                results.append(await get(fresh, f"{gw.base}/page/9", headers))
        assert {status for status, _, _ in results} == {200}
        assert len({resp["X-Farebox-Token"] for _, resp, _ in results}) == 1
        assert str(chain.status(txid).status) == "SEEN_ON_NETWORK"


async def test_a_tab_is_never_overspent_across_instances(
    tmp_path: Path, upstream: Upstream, redis: RedisServer, devnet_http
) -> None:
    """1,000 requests at once over two instances against a tab worth exactly 100."""
    url, _ = devnet_http
    args, server_pub = setup(tmp_path, upstream)
    args += ["--devnet-url", url, "--store", redis.url]
    client = PrivateKey()
    parent = await faucet(url, client, 100_000)
    connector = aiohttp.TCPConnector(limit=200)
    async with (
        serve(*args) as a,
        serve(*args) as b,
        aiohttp.ClientSession(connector=connector) as http,
    ):
        gateways: list[Running] = [a, b]
        # One top-up of 1000 satoshis sent 20 times at once to the pay
        # endpoints of both instances: one tab, credited once.
        headers, _ = brc121_headers(server_pub, client, parent, 1000)
        body = {
            "beef": headers["x-bsv-beef"],
            "sender": headers["x-bsv-sender"],
            "nonce": headers["x-bsv-nonce"],
            "time": headers["x-bsv-time"],
            "vout": 0,
            "url": "/calls/0",
        }

        async def top_up(gw: Running) -> dict:
            async with http.post(f"{gw.base}/.well-known/farebox/pay", json=body) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        answers = await asyncio.gather(*(top_up(gateways[i % 2]) for i in range(20)))
        assert len({answer["tab"]["id"] for answer in answers}) == 1
        token = {"Authorization": f"Bearer {answers[0]['token']}"}
        status, _, tab = await get(http, f"{a.base}/.well-known/farebox/tab", token)
        assert status == 200 and json.loads(tab)["balance_msat"] == 1000 * 1000

        # 10 satoshis a call: exactly 100 calls' worth, asked for 1,000 times.
        results = await asyncio.gather(
            *(get(http, f"{gateways[i % 2].base}/calls/{i}", token) for i in range(1000))
        )
        codes = [status for status, _, _ in results]
        assert codes.count(200) == 100 and codes.count(402) == 900, set(codes)
        assert all(b"tab-exhausted" in body for status, _, body in results if status == 402)
        status, _, tab = await get(http, f"{b.base}/.well-known/farebox/tab", token)
        assert json.loads(tab)["balance_msat"] == 0
    assert len([s for s in upstream.seen if s.raw_path.startswith("/calls/")]) == 100
