"""Key custody: rotating token and identity keys, sweeping payments to a treasury.

Real parts throughout: real payments on a devnet (in-process, or served over
HTTP to a real `farebox sweep` process), real receipts, real key files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from bsv import PrivateKey, PublicKey, Transaction

from gateway.bsv.derivation import p2pkh_script, payee_key_for_sender, spending_key
from gateway.chain import BroadcastResult, ChainError
from gateway.chain.local import LocalBroadcaster
from gateway.custody import rotate
from gateway.custody.sweep import (
    Coin,
    DevnetUtxos,
    StoreReceipts,
    SweepError,
    build_sweep,
    extended_format,
    parse_since,
    sweep,
    treasury_script,
)
from gateway.devnet import Devnet
from gateway.devnet.wire import parse_submission
from gateway.payments.checkout import ANYONE, ANYONE_HEX
from gateway.store.memory import MemoryStore
from gateway.store.receipts import Receipt
from gateway.tokens import KeyRing, Tokens, payer_hash
from tests.chainkit import brc121_headers, spend
from tests.conftest import PAID_SERVER
from tests.farebox_process import run
from tests.test_tokens import grant

# --- helpers: real payments to a server key ------------------------------------------------


@dataclass
class ListReceipts:
    """The smallest ReceiptSource: receipts in a list."""

    items: list[Receipt]

    async def receipts(self, since: int | None = None):
        for receipt in self.items:
            if since is None or receipt.time >= since:
                yield receipt


def pay_server(
    chain: Devnet,
    server: PublicKey,
    satoshis: int,
    *,
    sender: PrivateKey | None = None,
    prefix: str | None = None,
    when: int | None = None,
) -> Receipt:
    """A client (or, for a checkout, the "anyone" sender) pays `server` by
    BRC-29 on `chain`; the receipt the cashier records for it."""
    client = PrivateKey()
    payer = sender or client
    prefix = prefix or base64.b64encode(os.urandom(12)).decode()
    when = when or int(time.time() * 1000)
    suffix = base64.b64encode(str(when).encode()).decode()
    payee = payee_key_for_sender(server, payer, prefix, suffix)
    parent = chain.faucet(client.address(), satoshis + 10_000)
    tx = spend(parent, 0, client, [(payee, satoshis), (client.public_key(), 9_999)])
    assert chain.submit(tx).accepted
    return Receipt(
        txid=tx.txid(),
        vout=0,
        satoshis=satoshis,
        service="archive",
        resource="/archive/pages/1",
        method="GET",
        grant_id=os.urandom(8).hex(),
        time=when // 1000,
        expires=when // 1000 + 3600,
        payer=payer_hash(payer.public_key().hex()),
        sender=payer.public_key().hex(),
        prefix=prefix,
        suffix=suffix,
    )


def balance(chain: Devnet, address: str) -> int:
    return sum(s for _, _, s, _ in chain.unspent_by_script(treasury_script(address)))


def swept_tx(chain: Devnet, txid: str) -> Transaction:
    tx = chain.get_transaction(txid)
    assert tx is not None
    return tx


# --- the receipt keeps what sweeping needs ---------------------------------------------------


def test_receipt_round_trips_derivation_data_and_reads_old_records() -> None:
    chain = Devnet()
    receipt = pay_server(chain, PrivateKey().public_key(), 500)
    assert receipt.sweepable
    assert Receipt.from_json(json.loads(json.dumps(receipt.to_json()))) == receipt
    old = {k: v for k, v in receipt.to_json().items() if k not in ("sender", "prefix", "suffix")}
    legacy = Receipt.from_json(old)
    assert not legacy.sweepable and legacy.sender == "" and legacy.txid == receipt.txid
    with pytest.raises(KeyError):
        Receipt.from_json({k: v for k, v in old.items() if k != "payer"})


# --- sweeping ----------------------------------------------------------------------------------


async def test_sweep_moves_every_payment_to_the_treasury_once() -> None:
    chain = Devnet()
    server = PrivateKey()
    receipts = [
        pay_server(chain, server.public_key(), 1_000),
        pay_server(chain, server.public_key(), 2_500),
        # A checkout paid from a phone: the "anyone" sender, the checkout id as prefix.
        pay_server(chain, server.public_key(), 700, sender=ANYONE),
    ]
    assert receipts[2].sender == ANYONE_HEX
    chain.mine()  # some confirmed, some not: both are swept
    receipts.append(pay_server(chain, server.public_key(), 4_000))
    treasury = PrivateKey().address()
    lines: list[str] = []

    report = await sweep(
        server,
        treasury,
        ListReceipts(receipts),
        DevnetUtxos(chain),
        LocalBroadcaster(chain),
        progress=lines.append,
    )

    total = sum(r.satoshis for r in receipts)
    assert report.outputs == 4 and report.satoshis == total and report.fee > 0
    (batch,) = report.batches
    assert batch.status == "accepted" and batch.sent == total - report.fee
    assert balance(chain, treasury) == total - report.fee
    for receipt in receipts:
        assert not chain.is_unspent(receipt.txid, receipt.vout)
    tx = swept_tx(chain, batch.txid)
    assert {(i.source_txid, i.source_output_index) for i in tx.inputs} == {
        (r.txid, 0) for r in receipts
    }
    # The fee is what was asked for (1 sat/kB) on the real size, and the devnet took it.
    assert report.fee >= chain.required_fee(len(tx.serialize()))
    assert any(batch.txid in line for line in lines)

    again = await sweep(
        server, treasury, ListReceipts(receipts), DevnetUtxos(chain), LocalBroadcaster(chain)
    )
    assert again.batches == [] and again.spent == 4 and again.outputs == 0
    assert balance(chain, treasury) == total - report.fee


async def test_sweep_batches_inputs_and_pays_the_fee_rate_asked() -> None:
    chain = Devnet()
    server = PrivateKey()
    receipts = [pay_server(chain, server.public_key(), 3_000 + i) for i in range(5)]
    treasury = PrivateKey().address()
    report = await sweep(
        server,
        treasury,
        ListReceipts(receipts),
        DevnetUtxos(chain),
        LocalBroadcaster(chain),
        max_inputs=2,
        fee_rate=50,
    )
    assert [b.inputs for b in report.batches] == [2, 2, 1]
    assert all(b.status == "accepted" for b in report.batches)
    for batch in report.batches:
        size = len(swept_tx(chain, batch.txid).serialize())
        assert size * 50 / 1000 <= batch.fee <= (size + batch.inputs * 2) * 50 / 1000 + 1
    assert balance(chain, treasury) == sum(r.satoshis for r in receipts) - report.fee


async def test_dry_run_signs_but_sends_nothing() -> None:
    chain = Devnet()
    server = PrivateKey()
    receipts = [pay_server(chain, server.public_key(), 900) for _ in range(2)]
    report = await sweep(
        server, PrivateKey().address(), ListReceipts(receipts), DevnetUtxos(chain), None,
        dry_run=True,
    )  # fmt: skip
    (batch,) = report.batches
    assert batch.status == "dry-run" and batch.inputs == 2 and batch.txid
    assert chain.status(batch.txid) is None
    assert all(chain.is_unspent(r.txid, 0) for r in receipts)


async def test_sweep_skips_what_it_cannot_or_must_not_spend() -> None:
    chain = Devnet()
    server = PrivateKey()
    good = pay_server(chain, server.public_key(), 1_200)
    # Recorded before Farebox kept derivation data: counted, not sweepable.
    legacy = pay_server(chain, server.public_key(), 800)
    legacy = Receipt.from_json(
        {k: v for k, v in legacy.to_json().items() if k not in ("sender", "prefix", "suffix")}
    )
    # Paid to another server key: the derived address holds nothing.
    foreign = pay_server(chain, PrivateKey().public_key(), 600)
    # A receipt whose amount the chain contradicts is left alone.
    lying = pay_server(chain, server.public_key(), 500)
    lying = Receipt.from_json({**lying.to_json(), "satoshis": 5_000})
    # The same checkout address paid twice: the second payment has no receipt
    # (the checkout was paid) but is the server's to spend.
    checkout = base64.b64encode(b"checkout-id-").decode()
    when = int(time.time() * 1000)
    first = pay_server(chain, server.public_key(), 300, sender=ANYONE, prefix=checkout, when=when)
    pay_server(chain, server.public_key(), 300, sender=ANYONE, prefix=checkout, when=when)
    treasury = PrivateKey().address()
    source = ListReceipts([good, legacy, foreign, lying, first, good])  # `good` listed twice

    report = await sweep(server, treasury, source, DevnetUtxos(chain), LocalBroadcaster(chain))

    assert report.receipts == 5 and report.without_derivation == 1
    assert report.spent == 1 and report.mismatched == 1 and report.extra == 1
    assert report.outputs == 3 and report.satoshis == 1_200 + 300 + 300
    assert chain.is_unspent(lying.txid, 0) and chain.is_unspent(foreign.txid, 0)
    assert balance(chain, treasury) == 1_800 - report.fee


async def test_sweep_refuses_clearly() -> None:
    chain = Devnet()
    server = PrivateKey()
    source = ListReceipts([pay_server(chain, server.public_key(), 1_000)])
    utxos, broadcaster = DevnetUtxos(chain), LocalBroadcaster(chain)
    address = PrivateKey().address()
    bad = address[:-1] + ("2" if address[-1] != "2" else "3")  # a broken checksum
    for address, reason in (
        ("not-an-address", "not a valid P2PKH address"),
        (bad, "not a valid P2PKH address"),
        (server.address(), "not on this server"),
    ):
        with pytest.raises(SweepError, match=reason):
            await sweep(server, address, source, utxos, broadcaster)
    with pytest.raises(SweepError, match="testnet address"):
        await sweep(server, PrivateKey().address(), source, utxos, broadcaster, network="test")
    with pytest.raises(SweepError, match="no broadcaster"):
        await sweep(server, PrivateKey().address(), source, utxos, None)
    # A fee rate that eats the whole batch: nothing sent, and said so.
    report = await sweep(server, PrivateKey().address(), source, utxos, broadcaster, fee_rate=1e6)
    (batch,) = report.batches
    assert batch.status == "too-small" and "do not cover a fee" in batch.detail
    assert chain.is_unspent(source.items[0].txid, 0)


async def test_unreachable_chain_stops_the_sweep_and_loses_nothing() -> None:
    chain = Devnet()
    server = PrivateKey()
    receipts = [pay_server(chain, server.public_key(), 1_000 + i) for i in range(3)]

    class Down:
        async def unspent(self, script: bytes):
            raise ChainError("unreachable", "connection refused")

    class Flaky:
        def __init__(self) -> None:
            self.inner = LocalBroadcaster(chain)
            self.calls = 0

        async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
            self.calls += 1
            if self.calls > 1:
                raise ChainError("timeout", "no answer")
            return await self.inner.broadcast(tx, txid=txid)

        async def status(self, txid: str) -> BroadcastResult:
            return await self.inner.status(txid)

    treasury = PrivateKey().address()
    with pytest.raises(ChainError):
        await sweep(server, treasury, ListReceipts(receipts), Down(), LocalBroadcaster(chain))
    report = await sweep(
        server, treasury, ListReceipts(receipts), DevnetUtxos(chain), Flaky(), max_inputs=1
    )
    assert [b.status for b in report.batches] == ["accepted", "unknown"]
    assert report.failed and "chain unreachable" in report.stopped
    # Run again with the chain back: only what is still unspent goes.
    again = await sweep(
        server, treasury, ListReceipts(receipts), DevnetUtxos(chain), LocalBroadcaster(chain)
    )
    assert again.spent == 1 and again.outputs == 2 and not again.failed
    assert balance(chain, treasury) == sum(r.satoshis for r in receipts) - report.fee - again.fee


def test_extended_format_is_what_arc_reads() -> None:
    chain = Devnet()
    server = PrivateKey()
    receipt = pay_server(chain, server.public_key(), 1_000)
    key = spending_key(server, PublicKey(receipt.sender), receipt.prefix, receipt.suffix)
    coin = Coin(receipt.txid, 0, 1_000, key, p2pkh_script(key.public_key()), True)
    tx, fee = build_sweep([coin], treasury_script(PrivateKey().address()), 1)
    parsed = parse_submission(extended_format(tx))
    assert parsed.format == "ef" and parsed.subject == tx.txid()
    (tx_input,) = parsed.subject_entry.tx.inputs
    assert tx_input.satoshis == 1_000
    assert tx_input.locking_script.serialize() == p2pkh_script(key.public_key())
    assert parsed.subject_entry.tx.outputs[0].satoshis == 1_000 - fee


def test_since_reads_durations_dates_and_seconds() -> None:
    now = 1_700_000_000
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("1700000000", now) == 1_700_000_000
    assert parse_since("2023-11-14", now) == 1_699_920_000
    assert parse_since("2023-11-14T22:13:20+00:00", now) == now
    with pytest.raises(SweepError, match="--since"):
        parse_since("last tuesday", now)


async def test_store_receipts_pages_through_the_index() -> None:
    store = MemoryStore()
    chain = Devnet()
    server = PrivateKey()
    receipts = [pay_server(chain, server.public_key(), 400 + i) for i in range(7)]
    for receipt in receipts:
        await store.complete(receipt.txid, receipt, "token")
    listed = [r async for r in StoreReceipts(store, page=3).receipts()]
    assert sorted(r.txid for r in listed) == sorted(r.txid for r in receipts)
    assert all(r.sweepable for r in listed)
    newest = max(r.time for r in receipts)
    assert {r.txid for r in [x async for x in StoreReceipts(store).receipts(since=newest)]} == {
        r.txid for r in receipts if r.time >= newest
    }


# --- through a real gateway and cashier --------------------------------------------------------


async def test_payments_through_the_gateway_are_swept(paid_gateway) -> None:
    import aiohttp

    chain = Devnet()
    paid = await paid_gateway(chain, LocalBroadcaster(chain))
    server_hex = PAID_SERVER.public_key().hex()
    txids = []
    async with aiohttp.ClientSession() as http:
        for page, sats in ((1, 25), (2, 25), (3, 25)):
            client = PrivateKey()
            parent = chain.faucet(client.address(), 5_000)
            headers, txid = brc121_headers(server_hex, client, parent, sats)
            async with http.get(f"{paid.base}/archive/pages/{page}", headers=headers) as r:
                assert r.status == 200, await r.text()
            txids.append(txid)
    receipts = [await paid.store.receipt(txid) for txid in txids]
    assert all(r is not None for r in receipts)
    assert all(r.sweepable for r in receipts)  # type: ignore[union-attr]
    treasury = PrivateKey().address()
    report = await sweep(
        PAID_SERVER,
        treasury,
        ListReceipts(receipts),  # type: ignore[arg-type]
        DevnetUtxos(chain),
        LocalBroadcaster(chain),
    )
    assert report.outputs == 3 and report.satoshis == 75
    assert balance(chain, treasury) == 75 - report.fee
    assert not any(chain.is_unspent(txid, 0) for txid in txids)


# --- the command -------------------------------------------------------------------------------


def write_receipts(path: Path, receipts: list[Receipt]) -> None:
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in receipts))


async def test_sweep_command_on_a_devnet_over_http(tmp_path: Path, devnet_http) -> None:
    url, chain = devnet_http
    key_file = tmp_path / "server.key"
    assert run("keys", "generate", "--out", str(key_file)).returncode == 0
    server = rotate.load_key_file(key_file)
    receipts = [pay_server(chain, server.public_key(), 1_000 * (i + 1)) for i in range(3)]
    write_receipts(tmp_path / "receipts.jsonl", receipts)
    treasury = PrivateKey().address()
    args = ("sweep", "--to", treasury, "--key-file", str(key_file),
            "--receipts", str(tmp_path / "receipts.jsonl"), "--devnet-url", url)  # fmt: skip

    dry = await asyncio.to_thread(run, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would sweep 3 outputs, 6000 satoshis" in dry.stdout
    assert balance(chain, treasury) == 0

    done = await asyncio.to_thread(run, *args)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "swept 3 outputs, 6000 satoshis" in done.stdout
    fee = int(done.stdout.split("fee ")[-1].split(":")[0])
    assert balance(chain, treasury) == 6_000 - fee
    assert not any(chain.is_unspent(r.txid, 0) for r in receipts)

    again = await asyncio.to_thread(run, *args)
    assert again.returncode == 0 and "nothing to sweep" in again.stdout
    assert "3 spent already" in again.stdout


async def test_sweep_command_reads_the_redis_store(tmp_path: Path, devnet_http) -> None:
    from tests.redis_servers import RedisServer, need_redis, running

    need_redis()
    from gateway.store.redis import RedisStore

    url, chain = devnet_http
    key_file = tmp_path / "server.key"
    assert run("keys", "generate", "--out", str(key_file)).returncode == 0
    server = rotate.load_key_file(key_file)
    redis = RedisServer(tmp_path)
    with running(redis):
        store = RedisStore.from_url(redis.url)
        receipts = [pay_server(chain, server.public_key(), 2_000) for _ in range(2)]
        for receipt in receipts:
            await store.complete(receipt.txid, receipt, "token")
        await store.close()
        treasury = PrivateKey().address()
        done = await asyncio.to_thread(
            run, "sweep", "--to", treasury, "--store", redis.url, "--devnet-url", url,
            env={"FAREBOX_KEY_FILE": str(key_file)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        assert "swept 2 outputs, 4000 satoshis" in done.stdout
        assert not any(chain.is_unspent(r.txid, 0) for r in receipts)


def test_sweep_command_refuses_clearly(tmp_path: Path) -> None:
    key_file = tmp_path / "server.key"
    assert run("keys", "generate", "--out", str(key_file)).returncode == 0
    receipts = tmp_path / "receipts.jsonl"
    write_receipts(receipts, [pay_server(Devnet(), PrivateKey().public_key(), 1_000)])
    treasury = PrivateKey().address()
    base = ("sweep", "--key-file", str(key_file))

    bad = run(*base, "--to", "1NotAnAddress", "--receipts", str(receipts), "--devnet-url", "x")
    assert bad.returncode == 1 and "not a valid P2PKH address" in bad.stderr
    memory = run(*base, "--to", treasury, "--devnet-url", "http://127.0.0.1:1")
    assert memory.returncode == 1 and "memory store" in memory.stderr
    nochain = run(*base, "--to", treasury, "--receipts", str(receipts))
    assert nochain.returncode == 1 and "no chain" in nochain.stderr
    down = run(*base, "--to", treasury, "--receipts", str(receipts),
               "--devnet-url", "http://127.0.0.1:1")  # fmt: skip
    assert down.returncode == 1 and "chain unreachable, nothing sent" in down.stderr
    assert "Traceback" not in down.stderr


# --- rotating token keys -------------------------------------------------------------------


def test_rotate_keeps_old_tokens_valid_and_signs_with_the_new_key(tmp_path: Path) -> None:
    folder = tmp_path / "ring"
    before = Tokens(KeyRing.load(folder))
    old_token = before.mint(grant())

    result = run("keys", "rotate", "--token-keys", str(folder))
    assert result.returncode == 0, result.stderr
    new_kid = result.stdout.split("new signing key: ")[1].split()[0]
    assert f"{new_kid}  active" in result.stdout
    assert f"{before.ring.active}  verifies" in result.stdout

    after = Tokens(KeyRing.load(folder))  # what a restarted gateway loads
    assert after.ring.active == new_kid != before.ring.active
    assert after.verify(old_token) is not None
    assert jwt.get_unverified_header(after.mint(grant()))["kid"] == new_kid
    assert {k["kid"] for k in after.ring.jwks()["keys"]} == {before.ring.active, new_kid}
    for pem in folder.glob("*.pem"):
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600


def test_rotations_in_quick_succession_each_take_over(tmp_path: Path) -> None:
    folder = tmp_path / "ring"
    kids = [rotate.rotate_token_keys(folder) for _ in range(5)]
    assert KeyRing.load(folder).active == kids[-1]
    assert [k.kid for k in rotate.ring_keys(folder)] == kids


def test_prune_removes_long_retired_keys_never_the_active_one(tmp_path: Path) -> None:
    folder = tmp_path / "ring"
    day = 86400
    now = time.time()
    kids = []
    for age in (200, 100, 95):  # days since each key was added; the last is active
        kid = rotate.rotate_token_keys(folder)
        os.utime(folder / f"{kid}.pem", (now - age * day, now - age * day))
        kids.append(kid)
    tokens = Tokens(KeyRing.load(folder))
    assert tokens.ring.active == kids[2]
    token = tokens.mint(grant())

    result = run("keys", "rotate", "--token-keys", str(folder), "--prune", "--older-than", "90d")
    assert result.returncode == 0, result.stderr
    new_kid = result.stdout.split("new signing key: ")[1].split()[0]
    assert f"pruned: {kids[0]}" in result.stdout and f"pruned: {kids[1]}" in result.stdout
    # The key active until now was retired just now: it stays and verifies.
    assert [k.kid for k in rotate.ring_keys(folder)] == [kids[2], new_kid]
    assert Tokens(KeyRing.load(folder)).verify(token) is not None

    # An active key is kept however old it is.
    lone = tmp_path / "lone"
    kid = rotate.rotate_token_keys(lone)
    os.utime(lone / f"{kid}.pem", (now - 400 * day, now - 400 * day))
    assert rotate.prune_token_keys(lone, 1) == []
    assert KeyRing.load(lone, create=False).active == kid


def test_prune_goes_by_retirement_not_by_age(tmp_path: Path) -> None:
    folder = tmp_path / "ring"
    day = 86400
    now = time.time()
    kids = []
    for age in (200, 100, 10):  # retired 100 days ago, retired 10 days ago, active
        kid = rotate.rotate_token_keys(folder)
        os.utime(folder / f"{kid}.pem", (now - age * day, now - age * day))
        kids.append(kid)
    gone = rotate.prune_token_keys(folder, 90 * day)
    # The second key is 100 days old but signed tokens until 10 days ago: kept.
    assert [k.kid for k in gone] == [kids[0]]
    assert [k.kid for k in rotate.ring_keys(folder)] == kids[1:]
    bad = run("keys", "rotate", "--token-keys", str(folder), "--prune", "--older-than", "soon")
    assert bad.returncode == 1 and "--older-than" in bad.stderr


# --- rotating the identity key --------------------------------------------------------------


def test_identity_rotation_keeps_the_previous_key_private(tmp_path: Path) -> None:
    key_file = tmp_path / "server.key"
    old_public = run("keys", "generate", "--out", str(key_file)).stdout.split("public key: ")[1]
    old_text = key_file.read_text()

    result = run("keys", "rotate", "--identity", "--key-file", str(key_file))
    assert result.returncode == 0, result.stderr
    previous = tmp_path / "server.key.previous"
    assert previous.read_text() == old_text
    for path in (key_file, previous):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    new_public = run("keys", "show-public", "--key-file", str(key_file)).stdout.strip()
    assert new_public != old_public.strip()
    assert f"new public key: {new_public}" in result.stdout
    assert f"farebox sweep --key-file {previous}" in result.stdout
    assert run("keys", "show-public", "--key-file", str(previous)).stdout == old_public

    # A second rotation would overwrite a key that may still hold payments: refused.
    again = run("keys", "rotate", "--identity", "--key-file", str(key_file))
    assert again.returncode == 1 and "previous exists" in again.stderr
    assert previous.read_text() == old_text
    assert run("keys", "show-public", "--key-file", str(key_file)).stdout.strip() == new_public
    assert not (tmp_path / "server.key.new").exists()


def test_identity_rotation_refuses_an_open_key_or_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "server.key"
    run("keys", "generate", "--out", str(key_file))
    key_file.chmod(0o644)
    opened = run("keys", "rotate", "--identity", "--key-file", str(key_file))
    assert opened.returncode == 1 and "readable by others" in opened.stderr
    key_file.chmod(0o600)
    env = run("keys", "rotate", "--identity", "--key-file", str(key_file),
              env={"FAREBOX_KEY": "11" * 32})  # fmt: skip
    assert env.returncode == 1 and "FAREBOX_KEY is set" in env.stderr
    assert not (tmp_path / "server.key.previous").exists()
    missing = run("keys", "rotate", "--identity")
    assert missing.returncode == 1 and "--key-file" in missing.stderr


async def test_payments_to_the_old_identity_are_swept_with_previous(
    tmp_path: Path, devnet_http
) -> None:
    url, chain = devnet_http
    key_file = tmp_path / "server.key"
    run("keys", "generate", "--out", str(key_file))
    old = rotate.load_key_file(key_file)
    before = [pay_server(chain, old.public_key(), 1_500) for _ in range(2)]
    assert run("keys", "rotate", "--identity", "--key-file", str(key_file)).returncode == 0
    new = rotate.load_key_file(key_file)
    after = [pay_server(chain, new.public_key(), 2_500)]
    write_receipts(tmp_path / "r.jsonl", before + after)
    treasury = PrivateKey().address()

    def sweep_with(path: Path):
        return run("sweep", "--to", treasury, "--key-file", str(path),
                   "--receipts", str(tmp_path / "r.jsonl"), "--devnet-url", url)  # fmt: skip

    with_new = await asyncio.to_thread(sweep_with, key_file)
    assert with_new.returncode == 0 and "swept 1 output, 2500 satoshis" in with_new.stdout
    with_old = await asyncio.to_thread(sweep_with, tmp_path / "server.key.previous")
    assert with_old.returncode == 0 and "swept 2 outputs, 3000 satoshis" in with_old.stdout
    assert not any(chain.is_unspent(r.txid, 0) for r in before + after)


async def test_serve_journals_receipts_that_sweep_spends(tmp_path: Path, devnet_http) -> None:
    """The memory store dies with the gateway; the receipts file keeps what sweeping needs."""
    import os
    import stat

    import aiohttp

    from tests.chainkit import brc121_headers, faucet
    from tests.farebox_process import serve

    url, chain = devnet_http
    key_file = tmp_path / "server.key"
    server_pub = run("keys", "generate", "--out", str(key_file)).stdout.split("public key: ")[1]
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        "services:\n  s:\n    upstream: http://127.0.0.1:9\n    routes:\n"
        "      - {path: /page/*, price: 700, grant: {lasts: 1h}}\n"
    )
    journal = tmp_path / "receipts.jsonl"
    client = PrivateKey()
    args = ("--policies", str(folder), "--key-file", str(key_file), "--port", "0",
            "--devnet-url", url, "--token-keys", str(tmp_path / "tk"),
            "--receipts-file", str(journal))  # fmt: skip
    async with serve(*args) as gw, aiohttp.ClientSession() as http:
        for n in range(2):
            parent = await faucet(url, client, 10_000)
            headers, _ = brc121_headers(server_pub.strip(), client, parent, 700)
            async with http.get(f"{gw.base}/page/{n}", headers=headers) as r:
                assert r.status in (200, 502)  # paid; the upstream is down on purpose
                assert "X-Farebox-Token" in r.headers
    assert stat.S_IMODE(os.stat(journal).st_mode) == 0o600
    assert len(journal.read_text().splitlines()) == 2
    treasury = PrivateKey().address()
    done = await asyncio.to_thread(
        run, "sweep", "--to", treasury, "--key-file", str(key_file),
        "--receipts", str(journal), "--devnet-url", url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "swept 2 outputs, 1400 satoshis" in done.stdout
    fee = int(done.stdout.split("fee ")[-1].split(":")[0])
    assert balance(chain, treasury) == 1_400 - fee


async def test_sighup_rereads_the_token_keys(tmp_path: Path, devnet_http) -> None:
    """After `keys rotate`, SIGHUP makes a running gateway sign with the new key."""
    import signal

    import aiohttp
    import jwt

    from tests.chainkit import brc121_headers, faucet
    from tests.farebox_process import serve

    url, _ = devnet_http
    key_file = tmp_path / "server.key"
    server_pub = run("keys", "generate", "--out", str(key_file)).stdout.split("public key: ")
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        "services:\n  s:\n    upstream: http://127.0.0.1:9\n    routes:\n"
        "      - {path: /page/*, price: 50, grant: {lasts: 1h}}\n"
    )
    ring = tmp_path / "tk"
    args = ("--policies", str(folder), "--key-file", str(key_file), "--port", "0",
            "--devnet-url", url, "--token-keys", str(ring))  # fmt: skip
    client = PrivateKey()

    async def buy(http: aiohttp.ClientSession, base: str, n: int) -> str:
        parent = await faucet(url, client, 10_000)
        headers, _ = brc121_headers(server_pub[1].strip(), client, parent, 50)
        async with http.get(f"{base}/page/{n}", headers=headers) as r:
            return r.headers["X-Farebox-Token"]

    async with serve(*args) as gw, aiohttp.ClientSession() as http:
        old = await buy(http, gw.base, 1)
        new_kid = run("keys", "rotate", "--token-keys", str(ring)).stdout
        # What the command tells the admin to do is what works: SIGHUP, no restart.
        assert "SIGHUP" in new_kid and "Restart the gateways" not in new_kid
        gw.proc.send_signal(signal.SIGHUP)
        await gw.wait_for_log(r"token keys reloaded", timeout=10)
        fresh = await buy(http, gw.base, 2)
        assert jwt.get_unverified_header(fresh)["kid"] in new_kid
        assert jwt.get_unverified_header(fresh)["kid"] != jwt.get_unverified_header(old)["kid"]
        # The old token still opens its page.
        async with http.get(f"{gw.base}/page/1", headers={"Authorization": f"Bearer {old}"}) as r:
            assert r.status == 502  # admitted; the upstream is down on purpose
