"""Interop: payments built by the official TypeScript SDK (`@bsv/sdk`) are accepted.

tests/interop/pay.mjs runs under node and builds the whole payment with
@bsv/sdk: the BRC-29 payee key from its KeyDeriver (cross-checked in the
script against ProtoWallet.getPublicKey and PublicKey.deriveChild), the
transaction spending a devnet faucet output, its fee and signature, and the
Atomic BEEF. Only the funding and the gateway are Python: an in-process
devnet is the chain tracker and the broadcaster.

Needs node and tests/interop/node_modules (`npm ci --prefix tests/interop`,
which the test runs itself once when npm is there); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import aiohttp
import pytest
from bsv import PrivateKey, PublicKey

from gateway.bsv.derivation import payee_key
from gateway.chain.local import LocalBroadcaster
from gateway.devnet import Devnet
from gateway.store.memory import MemoryStore
from gateway.tokens import Tokens
from tests.conftest import PAID_SERVER

INTEROP = Path(__file__).parent / "interop"
PAY_SCRIPT = INTEROP / "pay.mjs"
NPM_CI_TIMEOUT = 300  # seconds; it takes about 2 s here
NODE_TIMEOUT = 60

SERVER = PAID_SERVER


@cache
def _sdk_problem() -> str | None:
    """Why the TypeScript SDK cannot be run here, or None when it can."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed: the @bsv/sdk interop test needs Node.js"
    if not (INTEROP / "node_modules" / "@bsv" / "sdk").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            return (
                "tests/interop/node_modules is missing and npm is not installed "
                "(run `npm ci --prefix tests/interop`)"
            )
        try:
            done = subprocess.run(
                [npm, "ci", "--prefix", str(INTEROP), "--no-audit", "--no-fund"],
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"`npm ci --prefix tests/interop` took longer than {NPM_CI_TIMEOUT} s"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return "`npm ci --prefix tests/interop` failed: " + " | ".join(tail)
        if not (INTEROP / "node_modules" / "@bsv" / "sdk").is_dir():
            return "`npm ci --prefix tests/interop` did not install @bsv/sdk"
    return None


@pytest.fixture(scope="session")
def node_sdk() -> str:
    problem = _sdk_problem()
    if problem is not None:
        pytest.skip(problem)
    node = shutil.which("node")
    assert node is not None
    return node


@dataclass
class Setup:
    base: str
    devnet: Devnet
    tokens: Tokens
    store: MemoryStore
    node: str


@pytest.fixture
async def paid(node_sdk: str, paid_gateway) -> Setup:
    devnet = Devnet()
    started = await paid_gateway(devnet, LocalBroadcaster(devnet))
    return Setup(started.base, devnet, started.tokens, started.store, node_sdk)


async def ts_payment(setup: Setup, satoshis: int, *, beef_version: int = 1) -> dict[str, str]:
    """A fresh client, funded by the devnet faucet, pays `satoshis` via @bsv/sdk."""
    client = PrivateKey()
    parent = setup.devnet.faucet(client.public_key(), 100_000)  # mined; pays output 0
    request = {
        "serverPublicKey": SERVER.public_key().hex(),
        "clientPrivateKey": client.hex(),
        "parentBeefHex": parent.to_beef().hex(),
        "parentVout": 0,
        "satoshis": satoshis,
        "timeMs": str(int(time.time() * 1000)),
        "beefVersion": beef_version,
    }
    proc = await asyncio.create_subprocess_exec(
        setup.node,
        str(PAY_SCRIPT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=INTEROP,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(json.dumps(request).encode()), NODE_TIMEOUT
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    made = json.loads(out)
    assert made["x-bsv-sender"] == client.public_key().hex()
    assert made["x-bsv-time"] == request["timeMs"] and made["x-bsv-vout"] == "0"
    assert len(base64.b64decode(made["x-bsv-nonce"], validate=True)) == 16
    # The server's half of BRC-42 (Python) lands on the key the TS wallet derived.
    suffix = base64.b64encode(made["x-bsv-time"].encode()).decode()
    theirs = payee_key(SERVER, client.public_key(), made["x-bsv-nonce"], suffix)
    assert theirs.hex() == made["payee"]
    return made


def headers_of(payment: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in payment.items() if k.startswith("x-bsv-")}


@pytest.mark.parametrize(
    "beef_version",
    [
        pytest.param(1, id="tx.toAtomicBEEF-v1"),
        pytest.param(2, id="Beef.toBinaryAtomic-v2"),
    ],
)
async def test_ts_payment_in_headers_is_accepted(paid: Setup, upstream, beef_version) -> None:
    payment = await ts_payment(paid, 25, beef_version=beef_version)
    beef = base64.b64decode(payment["x-bsv-beef"])
    version = b"\x01\x00\xbe\xef" if beef_version == 1 else b"\x02\x00\xbe\xef"
    assert beef[:4] == b"\x01\x01\x01\x01" and beef[4:36][::-1].hex() == payment["txid"]
    assert beef[36:40] == version

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{paid.base}/archive/pages/1", headers=headers_of(payment)) as r,
    ):
        body = await r.read()
        assert r.status == 200, body
        token = r.headers["X-Farebox-Token"]
    assert json.loads(body)["path"] == "/pages/1"  # the upstream's answer
    assert upstream.paths[-1] == "/pages/1"

    verified = paid.tokens.verify(token)
    assert verified is not None
    grant, _ = verified
    assert (grant.scope, grant.txid, grant.satoshis) == ("/archive/pages/1", payment["txid"], 25)
    status = paid.devnet.status(payment["txid"])
    assert status is not None and str(status.status) == "SEEN_ON_NETWORK"
    assert status.txid == payment["txid"]
    receipt = await paid.store.receipt(payment["txid"])
    assert receipt is not None and receipt.grant_id == grant.id

    # The gateway can spend what it was paid: the output is to its derived key.
    paid_tx = paid.devnet.get_transaction(payment["txid"])
    assert paid_tx is not None and paid_tx.outputs[0].satoshis == 25
    assert PublicKey(payment["payee"]).hash160() in paid_tx.outputs[0].locking_script.serialize()


async def test_ts_payment_through_the_pay_endpoint(paid: Setup) -> None:
    # Another resource, paid by a fresh TS payment through the pay endpoint.
    payment = await ts_payment(paid, 25)
    body = {
        "beef": payment["x-bsv-beef"],
        "sender": payment["x-bsv-sender"],
        "nonce": payment["x-bsv-nonce"],
        "time": payment["x-bsv-time"],
        "vout": 0,
        "method": "GET",
        "url": "/archive/pages/7",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{paid.base}/.well-known/farebox/pay", json=body) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
        assert answer["receipt"]["txid"] == payment["txid"]
        assert answer["receipt"]["satoshis"] == 25
        assert answer["grant"]["scope"] == "/archive/pages/7" and not answer["repeated"]
        async with http.get(
            f"{paid.base}/archive/pages/7", headers={"Authorization": f"Bearer {answer['token']}"}
        ) as r:
            assert r.status == 200
            assert (await r.json())["path"] == "/pages/7"
    status = paid.devnet.status(payment["txid"])
    assert status is not None and str(status.status) == "SEEN_ON_NETWORK"


async def test_ts_underpayment_is_refused(paid: Setup, upstream) -> None:
    payment = await ts_payment(paid, 24)  # the price is 25
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{paid.base}/archive/pages/2", headers=headers_of(payment)) as r,
    ):
        assert r.status == 402
        problem = await r.json(content_type=None)
    assert problem["reason"] == "underpaid", problem
    assert paid.devnet.status(payment["txid"]) is None  # never broadcast
    assert "/pages/2" not in upstream.paths
