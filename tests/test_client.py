"""The paying client end to end: wallet, PayingSession and `farebox wallet|pay`.

Everything is real: a devnet chain (its faucet over HTTP), a gateway whose
Cashier checks roots against that chain and broadcasts to it, a recording
upstream, signed transactions and Atomic BEEF.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from bsv import P2PKH, PrivateKey, Transaction, TransactionInput, TransactionOutput

from gateway.bsv.beef import read_beef
from gateway.bsv.derivation import p2pkh_script, payee_key
from gateway.chain.local import LocalBroadcaster
from gateway.client import (
    BadChallenge,
    Balance,
    InsufficientFunds,
    PayingSession,
    PaymentRefused,
    SpendingLimitExceeded,
    Wallet,
    WalletError,
    fund,
    refresh_proofs,
)
from gateway.client.beef import transaction_from_beef
from gateway.client.cli import main
from gateway.client.coins import Coin, fee_for, select, tx_size
from gateway.devnet import Devnet, TxStatus, start
from gateway.payments.verify import Expectation, verify_payment
from tests.conftest import PAID_SERVER, Recording

SERVER = PAID_SERVER
OTHER = PrivateKey(0x07_4E_12)
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Chain:
    devnet: Devnet
    url: str
    broadcaster: Recording


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    runner, devnet = await start("127.0.0.1", 0)
    yield Chain(
        devnet, f"http://127.0.0.1:{runner.addresses[0][1]}", Recording(LocalBroadcaster(devnet))
    )
    await runner.cleanup()


async def _gateway(paid_gateway, chain: Chain, announce: str | None = None) -> str:
    return (await paid_gateway(chain.devnet, chain.broadcaster, announce=announce)).base


@pytest.fixture
async def base(paid_gateway, chain: Chain) -> str:
    return await _gateway(paid_gateway, chain)


@pytest.fixture
async def wallet(chain: Chain, tmp_path: Path) -> Wallet:
    w = Wallet.create(tmp_path / "w" / "wallet.json")
    await fund(w, 10_000, chain.url)
    return w


# --- paying -------------------------------------------------------------------------


async def test_pay_serves_content_and_records_change(
    base: str, wallet: Wallet, chain: Chain, upstream
) -> None:
    (funding,) = wallet.coins()
    assert funding.satoshis == 10_000 and chain.devnet.status(funding.txid).status == "MINED"

    async with PayingSession(wallet) as s, s.get(f"{base}/archive/pages/1") as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["path"] == "/pages/1"
        paid = resp.farebox_payment
    assert paid is not None and paid.satoshis == 25 and paid.via == "headers"
    assert paid.fee == fee_for(tx_size(1, 2), 1.0) == 1
    assert paid.grant is not None and paid.grant.scope == "/archive/pages/1"
    assert chain.devnet.status(paid.txid).status == TxStatus.SEEN_ON_NETWORK
    assert upstream.paths == ["/pages/1"]  # one request reached it, the paid one

    # Spent coin gone, change recorded: on disk too, mode 0600.
    again = Wallet.open(wallet.path)
    (change,) = again.coins()
    assert (change.txid, change.vout, change.satoshis) == (paid.txid, 1, 10_000 - 25 - paid.fee)
    assert change.reserved_by is None and again.pending() == []
    assert again.balance().satoshis == 10_000 - 25 - paid.fee
    assert stat.S_IMODE(os.stat(wallet.path).st_mode) == 0o600
    assert chain.devnet.is_unspent(paid.txid, 1)


async def test_second_request_uses_the_token_and_pays_nothing(
    base: str, wallet: Wallet, chain: Chain
) -> None:
    url = f"{base}/archive/pages/1"
    async with PayingSession(wallet) as s:
        first = await s.get(url)
        first.release()
        balance = wallet.balance().satoshis
        async with s.get(url) as resp:
            assert resp.status == 200
            assert resp.farebox_payment is None and resp.farebox_used_token
        assert s.spent == 25 and len(s.payments) == 1
    # A new session (a new process, say) finds the token in the wallet file.
    async with PayingSession(Wallet.open(wallet.path)) as s, s.get(url) as resp:
        assert resp.status == 200 and resp.farebox_used_token
    assert wallet.balance().satoshis == balance
    assert len(chain.broadcaster.seen) == 1


async def test_route_grant_covers_the_whole_route(base: str, wallet: Wallet, upstream) -> None:
    async with PayingSession(wallet) as s:
        async with s.get(f"{base}/archive/datasets/air/2024") as resp:
            assert resp.status == 200 and resp.farebox_payment is not None
            assert resp.farebox_payment.grant.scope == "/archive/datasets/**"
        for path in ("/archive/datasets/bus/stops", "/archive/datasets", "/archive/datasets/x"):
            async with s.get(base + path) as resp:
                assert resp.status == 200 and resp.farebox_used_token, path
        async with s.get(f"{base}/archive/pages/2", params={"q": "x"}) as resp:  # pay again
            assert resp.farebox_payment is not None
        assert s.spent == 125
    assert upstream.paths[-1] == "/pages/2?q=x"  # the query sent once, not once per try


async def test_free_routes_and_non_402_answers_are_never_paid(
    base: str, wallet: Wallet, chain: Chain
) -> None:
    async with PayingSession(wallet) as s, s.get(f"{base}/archive/free/thing") as resp:
        assert resp.status == 200 and resp.farebox_payment is None
        assert not resp.farebox_used_token
    assert chain.broadcaster.seen == [] and wallet.balance().satoshis == 10_000


async def test_limits_refuse_before_paying(base: str, wallet: Wallet, chain: Chain) -> None:
    async with PayingSession(wallet, max_per_request=20) as s:
        with pytest.raises(SpendingLimitExceeded) as caught:
            await s.get(f"{base}/archive/pages/1")
    assert (caught.value.kind, caught.value.price, caught.value.limit) == ("per-request", 25, 20)
    assert "25 satoshis" in str(caught.value) and "20" in str(caught.value)

    async with PayingSession(wallet, max_total=30) as s:
        (await s.get(f"{base}/archive/pages/1")).release()
        with pytest.raises(SpendingLimitExceeded) as caught:
            await s.get(f"{base}/archive/pages/2")
        assert (caught.value.kind, caught.value.spent, caught.value.limit) == ("total", 25, 30)
        # A grant already bought costs nothing, so it is not refused.
        async with s.get(f"{base}/archive/pages/1") as resp:
            assert resp.status == 200
    assert len(chain.broadcaster.seen) == 1
    assert wallet.balance().pending_coins == 0 and wallet.pending() == []


async def test_refused_payment_releases_the_coins(
    paid_gateway, upstream, chain: Chain, wallet: Wallet
) -> None:
    # A gateway announcing a key its cashier does not hold: every payment is
    # made to the wrong derived key, and refused before broadcast.
    wrong = await _gateway(paid_gateway, chain, OTHER.public_key().hex())
    before = wallet.coins()
    async with PayingSession(wallet) as s:
        with pytest.raises(PaymentRefused) as caught:
            await s.get(f"{wrong}/archive/pages/1")
    assert caught.value.reason == "wrong-payee" and caught.value.status == 402
    assert "derived payee key" in caught.value.detail
    assert wallet.coins() == before and Wallet.open(wallet.path).coins() == before
    assert wallet.pending() == [] and chain.broadcaster.seen == []
    assert chain.devnet.status(caught.value.txid) is None
    assert upstream.paths == []


async def test_chained_payments_spend_unconfirmed_change(
    base: str, wallet: Wallet, chain: Chain
) -> None:
    async with PayingSession(wallet) as s:
        first = await s.get(f"{base}/archive/pages/1")
        second = await s.get(f"{base}/archive/pages/2")
        first.release()
        second.release()
    a, b = first.farebox_payment, second.farebox_payment
    assert a is not None and b is not None
    # The second payment spends the first one's change, still unmined: its
    # Atomic BEEF carries faucet tx (proven), first payment, second payment.
    beef = read_beef(chain.broadcaster.seen[-1])
    assert beef.atomic and beef.subject.txid() == b.txid
    assert [(i.source_txid, i.source_output_index) for i in beef.subject.inputs] == [(a.txid, 1)]
    assert len(beef.transactions) == 3
    assert [t.merkle_path is not None for t in beef.transactions.values()] == [True, False, False]
    for txid in (a.txid, b.txid):
        assert chain.devnet.status(txid).status == TxStatus.SEEN_ON_NETWORK
    assert wallet.balance().satoshis == 10_000 - 50 - a.fee - b.fee

    # Once mined, fresh proofs shrink the change's BEEF to one proven transaction.
    chain.devnet.mine()
    async with aiohttp.ClientSession() as http:
        assert await refresh_proofs(wallet, http, chain.url) == 1
    (change,) = wallet.coins()
    parsed = read_beef(bytes.fromhex(change.beef))
    assert list(parsed.transactions) == [b.txid] and parsed.subject.merkle_path is not None
    async with PayingSession(wallet, chain_url=chain.url) as s:
        (await s.get(f"{base}/archive/pages/3")).release()
    assert len(read_beef(chain.broadcaster.seen[-1]).transactions) == 2


async def test_payment_left_in_flight_settles_once_the_network_has_it(
    wallet: Wallet, chain: Chain
) -> None:
    # As after a connection lost mid-payment: signed, coins reserved, outcome unknown.
    prepared = wallet.prepare_payment(SERVER.public_key(), 25)
    assert wallet.balance() == Balance(0, 0, 10_000, 1)
    async with aiohttp.ClientSession() as http:
        await refresh_proofs(wallet, http, chain.url)
        assert [p.txid for p in wallet.pending()] == [
            prepared.txid
        ]  # unknown to the network: stays reserved
        await chain.broadcaster.broadcast(prepared.beef)
        await refresh_proofs(wallet, http, chain.url)
    assert wallet.pending() == []
    assert [(c.txid, c.satoshis) for c in wallet.coins()] == [
        (prepared.txid, 10_000 - 25 - prepared.fee)
    ]


async def test_pay_endpoint_when_the_beef_is_too_big_for_a_header(
    base: str, wallet: Wallet, chain: Chain, upstream
) -> None:
    async with PayingSession(wallet, header_limit=100) as s:
        async with s.get(f"{base}/archive/pages/7?full=1") as resp:
            assert resp.status == 200
            paid = resp.farebox_payment
            assert paid is not None and paid.via == "pay-endpoint"
            assert paid.grant is not None and paid.grant.scope == "/archive/pages/7"
        async with s.get(f"{base}/archive/pages/7") as resp:
            assert resp.farebox_used_token
    assert chain.devnet.status(paid.txid).status == TxStatus.SEEN_ON_NETWORK
    # The upstream saw the request with the grant, never the payment.
    assert upstream.paths == ["/pages/7?full=1", "/pages/7"]
    assert not [h for h in upstream.seen[0].headers if h.lower().startswith("x-bsv-")]


async def test_a_streamed_answer_is_paid_once(base: str, wallet: Wallet, chain: Chain) -> None:
    # Over 256 KiB the gateway streams the answer: its token must come first.
    url = f"{base}/archive/big/300000"
    async with PayingSession(wallet) as s:
        async with s.get(url) as resp:
            assert resp.status == 200 and len(await resp.read()) == 300_000
            paid = resp.farebox_payment
            assert paid is not None and paid.grant is not None
        async with s.get(url) as resp:
            assert resp.status == 200 and resp.farebox_used_token
    assert chain.devnet.status(paid.txid).status == TxStatus.SEEN_ON_NETWORK
    assert wallet.pending() == [] and wallet.balance().satoshis == 10_000 - 10 - paid.fee


async def test_a_payment_from_many_coins_is_too_big_for_headers(
    base: str, chain: Chain, tmp_path: Path
) -> None:
    dusty = Wallet.create(tmp_path / "dusty.json")
    for _ in range(80):
        index, key = dusty.new_key()
        tx = chain.devnet.faucet(key.public_key(), 1)
        dusty.receive(tx.to_beef(), tx.txid(), 0, index)
    # 31 inputs, each with its own proven parent: ~19 KB of base64.
    async with PayingSession(dusty) as s, s.get(f"{base}/archive/pages/1") as resp:
        assert resp.status == 200
        assert resp.farebox_payment is not None and resp.farebox_payment.via == "pay-endpoint"
    assert dusty.balance().coins == 80 - 31 + 1

    # Forced into a header it never reaches the gateway (aiohttp caps a header
    # at 8190 bytes): refused, and the coins come back.
    before = dusty.balance()
    async with PayingSession(dusty, header_limit=1 << 20) as s:
        with pytest.raises(PaymentRefused) as caught:
            await s.get(f"{base}/archive/pages/2")
    assert caught.value.status == 400
    assert dusty.balance() == before and dusty.pending() == []


async def test_concurrent_requests_buy_one_grant(base: str, wallet: Wallet, chain: Chain) -> None:
    async with PayingSession(wallet) as s:
        responses = await asyncio.gather(*(s.get(f"{base}/archive/pages/9") for _ in range(4)))
        for resp in responses:
            assert resp.status == 200
            resp.release()
    assert sum(r.farebox_payment is not None for r in responses) == 1
    assert len(chain.broadcaster.seen) == 1


async def test_insufficient_funds_reserve_nothing(base: str, chain: Chain, tmp_path: Path) -> None:
    poor = Wallet.create(tmp_path / "poor.json")
    await fund(poor, 20, chain.url)
    async with PayingSession(poor) as s:
        with pytest.raises(InsufficientFunds) as caught:
            await s.get(f"{base}/archive/pages/1")
    assert (caught.value.needed, caught.value.available) == (26, 20)
    assert poor.balance().satoshis == 20 and poor.pending() == []


@pytest.mark.parametrize(
    ("sats", "server", "body_sats"),
    [
        ("5", SERVER.public_key().hex(), 5000),  # the body asks more than the headers
        ("5", "02" + "00" * 32, None),  # not a point on the curve
        ("-5", SERVER.public_key().hex(), None),
    ],
)
async def test_unpayable_challenges_are_not_paid(
    wallet: Wallet, sats: str, server: str, body_sats: int | None
) -> None:
    async def liar(request: web.Request) -> web.Response:
        body = {"reason": "payment-required", "payment": {"price": {"satoshis": body_sats}}}
        return web.json_response(
            body,
            status=402,
            headers={"x-bsv-sats": sats, "x-bsv-server": server},
            content_type="application/problem+json",
        )

    app = web.Application()
    app.router.add_get("/x", liar)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with PayingSession(wallet) as s:
            with pytest.raises(BadChallenge):
                await s.get(f"http://127.0.0.1:{runner.addresses[0][1]}/x")
    finally:
        await runner.cleanup()
    assert wallet.pending() == [] and wallet.balance().satoshis == 10_000


# --- wallet and coins ---------------------------------------------------------------


def coin(sats: int, n: int = 0) -> Coin:
    return Coin(f"{n:064x}", 0, sats, "", "", key_index=0)


def test_selection_prefers_fewest_inputs_and_pays_a_fee() -> None:
    coins = [coin(100, 1), coin(5_000, 2), coin(700, 3), coin(600, 4)]
    one = select(coins, 650)
    assert [c.satoshis for c in one.coins] == [700] and one.fee == 1 and one.change == 49
    two = select(coins, 5_500)
    assert [c.satoshis for c in two.coins] == [5_000, 700]
    exact = select([coin(26)], 25)
    assert exact.change == 0 and exact.fee == 1
    assert select([coin(10_000)], 25, rate=0).fee == 1  # never below 1 satoshi
    assert select([coin(100_000)], 25, rate=50).fee == fee_for(tx_size(1, 2), 50) == 12
    with pytest.raises(InsufficientFunds):
        select([coin(25)], 25)
    with pytest.raises(InsufficientFunds):
        select([coin(1_000).reserved("ab" * 32)], 25)


def test_wallet_file_is_private_and_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "wallet.json"
    w = Wallet.create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    with pytest.raises(WalletError, match="already exists"):
        Wallet.create(path)
    again = Wallet.create(path, force=True)
    assert again.identity_key != w.identity_key
    assert len(list(path.parent.glob("wallet.json.*.bak"))) == 1  # the old keys survive
    assert Wallet.open(path).key(3).hex() == again.key(3).hex()  # keys derive from identity
    os.chmod(path, 0o644)
    with pytest.raises(WalletError, match="chmod 600"):
        Wallet.open(path)


async def test_faucet_coin_is_checked_against_the_wallet_key(wallet: Wallet, chain: Chain) -> None:
    (c,) = wallet.coins()
    tx = transaction_from_beef(bytes.fromhex(c.beef), c.txid)
    assert tx.merkle_path is not None and tx.outputs[0].satoshis == 10_000
    stranger = chain.devnet.faucet(PrivateKey().public_key(), 500)
    with pytest.raises(WalletError, match="does not pay wallet key"):
        wallet.receive(stranger.to_beef(), stranger.txid(), 0, 0)


def spend(parent, vout: int, owner: PrivateKey, outputs: list[tuple[PrivateKey, int]]):
    tx = Transaction(
        [
            TransactionInput(
                source_transaction=parent,
                source_output_index=vout,
                unlocking_script_template=P2PKH().unlock(owner),
            )
        ],
        [TransactionOutput(P2PKH().lock(k.address()), sats) for k, sats in outputs],
    )
    tx.sign()
    return tx


def test_multi_input_payment_carries_each_parent_once_and_one_bump_per_block(
    tmp_path: Path,
) -> None:
    devnet, funder = Devnet(), PrivateKey()
    w = Wallet.create(tmp_path / "w.json")
    (i0, k0), (i1, k1), (i2, k2) = w.new_key(), w.new_key(), w.new_key()
    funded = devnet.faucet(funder.public_key(), 100_000)
    first = spend(
        funded,
        0,
        funder,
        [(k0, 3000), (k1, 3000), (funder, 90_000)],
    )
    second = spend(first, 2, funder, [(k2, 3000), (funder, 86_000)])
    for tx in (first, second):
        assert devnet.submit(tx).accepted
    devnet.mine()  # both in one block
    w.receive(devnet.beef_for(first.txid()), first.txid(), 0, i0)
    w.receive(devnet.beef_for(first.txid()), first.txid(), 1, i1)
    w.receive(devnet.beef_for(second.txid()), second.txid(), 0, i2)

    prepared = w.prepare_payment(SERVER.public_key(), 8000)
    beef = read_beef(prepared.beef)
    assert len(beef.subject.inputs) == 3 and len(beef.transactions) == 3
    assert prepared.beef[36 + 4] == 1  # one BUMP proves both parents
    payee = payee_key(SERVER, w.identity.public_key(), prepared.prefix, prepared.suffix)
    expect = Expectation(8000, p2pkh_script(payee), 0)
    verified = asyncio.run(verify_payment(beef, expect, devnet))
    assert verified.txid == prepared.txid
    assert devnet.submit(beef.subject).status == TxStatus.SEEN_ON_NETWORK


# --- the command line ---------------------------------------------------------------


async def farebox(*args: str, wallet: Path) -> tuple[int, str, str]:
    """`farebox ...` as a real process (the gateway runs in this test's event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.client.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "FAREBOX_WALLET": str(wallet)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def farebox_inline(capsys, *args: str) -> tuple[int, str, str]:
    """The same commands in this process (a thread: they run their own event loop)."""
    try:
        await asyncio.to_thread(main, list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


async def test_cli_pays_once_then_uses_the_token(base: str, chain: Chain, tmp_path: Path) -> None:
    path = tmp_path / "cli" / "wallet.json"
    code, out, _ = await farebox("wallet", "new", wallet=path)
    assert code == 0 and "identity key: 0" in out
    code, out, err = await farebox(
        "wallet", "fund", "--satoshis", "5000", "--devnet", chain.url, wallet=path
    )
    assert code == 0, err
    txid = out.split("txid ")[1].split()[0]
    assert chain.devnet.status(txid).status == TxStatus.MINED
    assert "balance: 5000 satoshis in 1 coin" in out

    url = f"{base}/archive/pages/4"
    code, out, err = await farebox("pay", url, wallet=path)
    assert code == 0, err
    assert json.loads(out)["path"] == "/pages/4"  # the body, and only the body, on stdout
    assert "paid 25 satoshis (fee 1): txid " in err
    paid_txid = err.split("txid ")[1].split()[0]
    assert chain.devnet.status(paid_txid).status == TxStatus.SEEN_ON_NETWORK

    code, out, err = await farebox("pay", url, wallet=path)
    assert code == 0 and json.loads(out)["path"] == "/pages/4"
    assert "paid nothing: used a stored token" in err
    assert Wallet.open(path).balance().satoshis == 5000 - 26


async def test_cli_limits_usage_and_errors(
    base: str, chain: Chain, tmp_path: Path, capsys, monkeypatch
) -> None:
    path = tmp_path / "inline.json"
    monkeypatch.setenv("FAREBOX_WALLET", str(path))
    code, _, err = await farebox_inline(capsys, "wallet", "balance")
    assert code == 1 and "farebox wallet new" in err
    code, _, err = await farebox_inline(capsys, "pay", f"{base}/archive/pages/1")
    assert code == 1 and "farebox wallet new" in err

    assert (await farebox_inline(capsys, "wallet", "new"))[0] == 0
    code, _, err = await farebox_inline(capsys, "wallet", "fund", "--devnet", "http://127.0.0.1:9")
    assert code == 1 and "is `farebox demo` running?" in err
    code, out, _ = await farebox_inline(
        capsys, "wallet", "fund", "--devnet", chain.url, "--satoshis", "1000"
    )
    assert code == 0 and "balance: 1000 satoshis in 1 coin" in out

    code, out, err = await farebox_inline(capsys, "pay", "--max", "10", f"{base}/archive/pages/6")
    assert code == 1 and out == ""
    assert "costs 25 satoshis; the limit per request is 10; nothing was paid" in err

    code, out, err = await farebox_inline(
        capsys, "pay", "--pay-endpoint", f"{base}/archive/datasets/air"
    )
    assert code == 0 and json.loads(out)["path"] == "/datasets/air"
    assert "paid 100 satoshis (fee 1) via the pay endpoint: txid" in err

    code, out, err = await farebox_inline(capsys, "pay", f"{base}/archive/nothing-here/../x")
    assert code == 0 and "paid nothing: no payment was asked" in err

    code, out, _ = await farebox_inline(capsys, "wallet", "balance")
    assert out.strip() == "899 satoshis in 1 coin"

    code, _, err = await farebox_inline(capsys, "pay", "--max", "0", f"{base}/x")
    assert code == 2 and "at least 1" in err
    code, _, err = await farebox_inline(capsys, "pay", "ftp://example/x")
    assert code == 2 and "http://" in err
    code, _, err = await farebox_inline(capsys, "pay")
    assert code == 2 and "URL" in err
