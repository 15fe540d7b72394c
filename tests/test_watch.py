"""Payment watchers: the WhatsOnChain-style client against servers answering as it does.

One server is the devnet (which answers WhatsOnChain's paths); the other a
local app answering exactly the shapes WhatsOnChain documents, including the
newer wrapped list and BEEF as a JSON string, and its failures.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from aiohttp import web
from bsv import PrivateKey

from gateway.bsv.beef import read_beef
from gateway.bsv.derivation import p2pkh_script
from gateway.bsv.scripts import script_hash
from gateway.chain import ChainError
from gateway.chain.watch import LocalWatcher, WocWatcher
from gateway.devnet import Devnet
from tests.chainkit import beef_of, faucet, spend


def test_script_hash_is_byte_reversed_sha256() -> None:
    script = bytes.fromhex("76a9146a7b4205faf78aee54d015d65598eccd5401408888ac")
    assert script_hash(script) == hashlib.sha256(script).digest()[::-1].hex()


async def test_devnet_answers_as_whatsonchain_does(devnet_http) -> None:
    url, chain = devnet_http
    payer, payee = PrivateKey(), PrivateKey()
    coin = await faucet(url, payer, 10_000)
    tx = spend(coin, 0, payer, [(payee.public_key(), 700), (payer.public_key(), 9_000)])
    assert chain.submit(tx).accepted
    watcher = WocWatcher(url)
    try:
        [found] = await watcher.payments_to(p2pkh_script(payee.public_key()))
        assert read_beef(found).subject.txid() == tx.txid()  # a BEEF the cashier can verify
        assert await watcher.payments_to(p2pkh_script(PrivateKey().public_key())) == []
    finally:
        await watcher.close()


async def test_local_watcher_reads_the_devnet_in_process() -> None:
    chain = Devnet()
    payee = PrivateKey()
    funded = chain.faucet(payee.public_key(), 5_000)
    [found] = await LocalWatcher(chain).payments_to(p2pkh_script(payee.public_key()))
    assert read_beef(found).subject.txid() == funded.txid()


@pytest.fixture
async def woc():
    """A server answering as api.whatsonchain.com does, with a switchable mood."""
    state = {"mood": "list", "beef": b"", "txid": "", "hash": ""}

    async def unspent(request: web.Request) -> web.Response:
        if request.match_info["hash"] != state["hash"]:
            return web.json_response([])
        if state["mood"] == "down":
            return web.Response(status=500, text="internal error")
        entry = {"height": 0, "tx_pos": 0, "tx_hash": state["txid"], "value": 700}
        if state["mood"] == "wrapped":
            return web.json_response({"script": state["hash"], "result": [entry]})
        return web.json_response([entry])

    async def beef(request: web.Request) -> web.Response:
        if state["mood"] == "wrapped":
            return web.Response(
                text=json.dumps(state["beef"].hex()), content_type="application/json"
            )
        return web.Response(text=state["beef"].hex())

    app = web.Application()
    app.router.add_get("/v1/bsv/main/script/{hash}/unspent", unspent)
    app.router.add_get("/v1/bsv/main/tx/{txid}/beef", beef)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", state
    await runner.cleanup()


@pytest.mark.parametrize("mood", ["list", "wrapped"])
async def test_whatsonchain_shapes(woc, mood: str) -> None:
    url, state = woc
    chain = Devnet()
    payer, payee = PrivateKey(), PrivateKey()
    coin = chain.faucet(payer.public_key(), 10_000)
    tx = spend(coin, 0, payer, [(payee.public_key(), 700), (payer.public_key(), 9_000)])
    script = p2pkh_script(payee.public_key())
    state.update(mood=mood, beef=beef_of(coin, tx), txid=tx.txid(), hash=script_hash(script))
    watcher = WocWatcher(url)
    try:
        [found] = await watcher.payments_to(script)
        assert read_beef(found).subject.txid() == tx.txid()
        state["mood"] = "down"
        with pytest.raises(ChainError):
            await watcher.payments_to(script)
    finally:
        await watcher.close()
