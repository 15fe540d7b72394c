"""`farebox wallet address|receive|coins|tokens|receipts`, run as a user runs them.

A real devnet and a real gateway; each command is a `farebox` process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.client import PayingSession, Wallet, fund
from gateway.devnet import start
from tests.conftest import PAID_SERVER, Recording

REPO = Path(__file__).resolve().parent.parent


async def farebox(*args: str, wallet: Path, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        "--wallet",
        str(wallet),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, err = await proc.communicate(stdin)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def devnet() -> AsyncIterator[tuple[str, object]]:
    runner, chain = await start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", chain
    await runner.cleanup()


async def test_address_then_receive_adds_the_coin(devnet, tmp_path: Path) -> None:
    url, _ = devnet
    wallet = Wallet.create(tmp_path / "wallet.json")
    code, out, err = await farebox("wallet", "address", wallet=wallet.path)
    assert code == 0, err
    address = out.strip()
    assert re.fullmatch(r"1[1-9A-HJ-NP-Za-km-z]{25,34}", address), out
    pubkey = re.search(r"public key ([0-9a-f]{66})", err)
    assert pubkey is not None and "farebox wallet receive TXID" in err
    # Someone pays that address (here: the devnet's faucet, to its key).
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/faucet", json={"pubkey": pubkey.group(1), "satoshis": 7_000}) as resp,
    ):
        paid = await resp.json()
    txid = paid["txid"]

    code, out, err = await farebox(
        "wallet", "receive", txid, "--devnet-url", url, wallet=wallet.path
    )
    assert code == 0, err
    assert f"received 7000 satoshis: {txid}:{paid['vout']}" in out
    assert "7000 satoshis in 1 coin" in out
    # Again: nothing new, still one coin.
    code, _, _ = await farebox("wallet", "receive", txid, "--devnet-url", url, wallet=wallet.path)
    assert Wallet.open(wallet.path).balance().coins == 1

    # From a BEEF file, as a paying wallet hands it over.
    other = Wallet.create(tmp_path / "other.json")
    _, out, err = await farebox("wallet", "address", wallet=other.path)
    key = re.search(r"public key ([0-9a-f]{66})", err)
    assert key is not None
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/faucet", json={"pubkey": key.group(1), "satoshis": 500}) as r,
    ):
        given = await r.json()
    beef_file = tmp_path / "payment.beef"
    beef_file.write_text(given["beef"])
    code, out, err = await farebox(
        "wallet", "receive", given["txid"], "--beef", str(beef_file), "--devnet-url", url,
        wallet=other.path,
    )  # fmt: skip
    assert code == 0 and "received 500 satoshis" in out, err

    # A transaction that pays someone else: said plainly, exit 1.
    code, _, err = await farebox(
        "wallet",
        "receive",
        given["txid"],
        "--beef",
        str(beef_file),
        "--devnet-url",
        url,
        wallet=wallet.path,
    )
    assert code == 1 and "pays no address of this wallet" in err
    code, _, err = await farebox("wallet", "receive", "nothex", wallet=wallet.path)
    assert code == 2 and "not a txid" in err


async def test_coins_tokens_and_receipts_list_what_the_wallet_holds(
    paid_gateway, devnet, tmp_path: Path
) -> None:
    url, chain = devnet
    from gateway.chain.local import LocalBroadcaster

    base = (await paid_gateway(chain, Recording(LocalBroadcaster(chain)))).base
    wallet = Wallet.create(tmp_path / "wallet.json")
    await fund(wallet, 10_000, url)
    async with PayingSession(wallet) as s, s.get(f"{base}/archive/pages/1") as resp:
        assert resp.status == 200
        paid = resp.farebox_payment
    assert paid is not None

    code, out, err = await farebox("wallet", "coins", wallet=wallet.path)
    assert code == 0, err
    assert f"{paid.txid}:1" in out and "spendable" in out

    code, out, _ = await farebox("wallet", "tokens", "--json", wallet=wallet.path)
    (token,) = json.loads(out)
    assert token["origin"] == base and token["opens"] == "/archive/pages/1"
    assert token["txid"] == paid.txid and token["methods"]
    code, out, _ = await farebox("wallet", "tokens", wallet=wallet.path)
    assert "archive: resource /archive/pages/1" in out

    code, out, err = await farebox("wallet", "receipts", "--fetch", "--json", wallet=wallet.path)
    assert code == 0, err
    (receipt,) = json.loads(out)
    assert receipt["txid"] == paid.txid and receipt["satoshis"] == 25
    assert receipt["origin"] == base and receipt["for"] == "GET resource /archive/pages/1"
    assert receipt["receipt"]["txid"] == paid.txid  # the gateway's own receipt
    assert receipt["receipt"]["service"] == "archive"
    code, out, _ = await farebox("wallet", "receipts", wallet=wallet.path)
    assert f"{base} GET resource /archive/pages/1: 25 sat" in out


async def test_coins_show_set_aside_and_pending_and_restore(devnet, tmp_path: Path) -> None:
    url, _ = devnet
    wallet = Wallet.create(tmp_path / "wallet.json")
    coin = await fund(wallet, 3_000, url)
    await fund(wallet, 4_000, url)
    wallet.set_aside("no-such-payment", [], "")  # nothing to do: no error
    prepared = wallet.prepare_payment(PAID_SERVER.public_key(), 100)
    wallet.set_aside(prepared.txid, prepared.inputs, "http://gw: unknown-merkle-root: no block")
    held = wallet.prepare_payment(PAID_SERVER.public_key(), 50)

    code, out, err = await farebox("wallet", "coins", wallet=wallet.path)
    assert code == 0, err
    assert "set-aside: http://gw: unknown-merkle-root" in out
    assert f"held by payment {held.txid}" in out
    assert f"payment in flight {held.txid}" in out
    code, out, _ = await farebox("wallet", "balance", wallet=wallet.path)
    assert "set aside in 1 coin" in out and "reserved by payments in flight" in out

    code, out, _ = await farebox("wallet", "coins", "--json", wallet=wallet.path)
    listed = json.loads(out)
    assert {c["state"] for c in listed["coins"]} == {"set-aside", "held"}
    assert [p["txid"] for p in listed["pending"]] == [held.txid]

    (aside,) = [c for c in Wallet.open(wallet.path).coins() if c.set_aside]
    code, out, _ = await farebox(
        "wallet", "coins", "--restore", f"{aside.txid}:{aside.vout}", wallet=wallet.path
    )
    assert code == 0 and "restored 1 coin" in out  # the devnet still has it unspent
    assert not any(c.set_aside for c in Wallet.open(wallet.path).coins())
    code, _, err = await farebox("wallet", "coins", "--restore", "junk", wallet=wallet.path)
    assert code == 2 and "TXID:VOUT" in err
    code, _, err = await farebox(
        "wallet", "coins", "--restore", "ab" * 32 + ":7", wallet=wallet.path
    )
    assert code == 1 and "not a coin set aside" in err
    assert coin.satoshis == 3_000


async def test_spent_coins_are_never_offered_again(devnet, tmp_path: Path) -> None:
    url, _ = devnet
    wallet = Wallet.create(tmp_path / "wallet.json")
    await fund(wallet, 5_000, url)
    spent = wallet.prepare_payment(PAID_SERVER.public_key(), 100)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/tx", data=spent.beef, headers={"Content-Type": "application/octet-stream"}
        ) as resp,
    ):
        assert resp.status == 200
    wallet.settle(spent.txid)
    # Its change is spent too, by a payment this wallet file no longer remembers.
    (change,) = wallet.coins()
    later = wallet.prepare_payment(PAID_SERVER.public_key(), 100)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/tx", data=later.beef, headers={"Content-Type": "application/octet-stream"}
        ) as resp,
    ):
        assert resp.status == 200
    wallet.release(later.txid)  # as if the wallet never heard back: the coin looks spendable

    # receive: the spent change output is not added again.
    code, out, err = await farebox(
        "wallet", "receive", spent.txid, "--devnet-url", url, wallet=wallet.path
    )
    assert code == 0 and "is in the wallet already" in out, err
    # --check: the devnet does not have it unspent: set aside, with what to do.
    code, out, err = await farebox("wallet", "coins", "--check", wallet=wallet.path)
    assert code == 0 and "1 set aside" in out, err
    (aside,) = Wallet.open(wallet.path).coins()
    assert aside.outpoint == change.outpoint and "does not have it unspent" in (
        aside.set_aside or ""
    )
    # --restore: not while the devnet says it is spent.
    code, out, _ = await farebox("wallet", "coins", "--restore", wallet=wallet.path)
    assert "stays set aside" in out and "restored 0 coins" in out
    assert Wallet.open(wallet.path).balance().satoshis == 0

    # An output already spent is not added, even to a wallet that never had it
    # (a backup from before it was received).
    wallet2 = Wallet.create(tmp_path / "w2.json")
    _, _, err = await farebox("wallet", "address", wallet=wallet2.path)
    key = re.search(r"public key ([0-9a-f]{66})", err)
    assert key is not None
    backup = wallet2.path.read_bytes()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/faucet", json={"pubkey": key.group(1), "satoshis": 900}) as r,
    ):
        given = await r.json()
    code, out, _ = await farebox(
        "wallet", "receive", given["txid"], "--devnet-url", url, wallet=wallet2.path
    )
    assert code == 0 and "received 900" in out
    gone = Wallet.open(wallet2.path).prepare_payment(PAID_SERVER.public_key(), 100)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/tx", data=gone.beef, headers={"Content-Type": "application/octet-stream"}
        ) as resp,
    ):
        assert resp.status == 200
    wallet2.path.write_bytes(backup)
    code, out, _ = await farebox(
        "wallet", "receive", given["txid"], "--devnet-url", url, wallet=wallet2.path
    )
    assert "is spent already" in out
    assert Wallet.open(wallet2.path).balance().coins == 0


async def test_receive_refuses_a_beef_the_chain_does_not_vouch_for(devnet, tmp_path: Path) -> None:
    from bsv import PrivateKey, PublicKey

    from tests.chainkit import Tracker, beef_of, funding, spend

    url, _ = devnet
    wallet = Wallet.create(tmp_path / "wallet.json")
    code, _, err = await farebox("wallet", "address", wallet=wallet.path)
    pubkey = re.search(r"public key ([0-9a-f]{66})", err)
    assert code == 0 and pubkey is not None
    # A "payment" resting on a block the devnet never had (an invented merkle path).
    stranger = PrivateKey()
    parent = funding(stranger, 10**14, Tracker())
    forged = spend(parent, 0, stranger, [(PublicKey(pubkey.group(1)), 10**14 - 500)])
    beef_file = tmp_path / "forged.beef"
    beef_file.write_text(beef_of(parent, forged).hex())
    code, _, err = await farebox(
        "wallet", "receive", forged.txid(), "--beef", str(beef_file), "--devnet-url", url,
        wallet=wallet.path,
    )  # fmt: skip
    assert code == 1 and "not proven (unknown-merkle-root)" in err, err
    assert Wallet.open(wallet.path).balance().coins == 0


async def test_abandon_frees_a_payment_the_network_never_saw(devnet, tmp_path: Path) -> None:
    url, _ = devnet
    wallet = Wallet.create(tmp_path / "wallet.json")
    await fund(wallet, 5_000, url)
    never_sent = wallet.prepare_payment(PAID_SERVER.public_key(), 100)
    code, out, err = await farebox(
        "wallet", "coins", "--abandon", never_sent.txid, wallet=wallet.path
    )
    assert code == 0 and f"abandoned {never_sent.txid}" in out, err
    assert Wallet.open(wallet.path).balance().satoshis == 5_000

    # One the network has is spent: not abandoned.
    again = Wallet.open(wallet.path)
    sent = again.prepare_payment(PAID_SERVER.public_key(), 100)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/tx", data=sent.beef, headers={"Content-Type": "application/octet-stream"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    code, _, err = await farebox("wallet", "coins", "--abandon", sent.txid, wallet=wallet.path)
    assert code == 1 and "it is spent" in err, err
    assert Wallet.open(wallet.path).balance().satoshis == 5_000 - 100 - sent.fee  # the change
    code, _, err = await farebox("wallet", "coins", "--abandon", "ab" * 32, wallet=wallet.path)
    assert code == 1 and "no payment in flight" in err
