"""The payout engine against a real devnet: crashes at every step, outages, refusals.

Money rule 7 (DESIGN.md): an owed payout is recorded before anything is
sent, is paid at most once whatever crashes, and is never forgotten. The
crash tests run the engine as its own process (tests/payout_runner.py) and
SIGKILL it exactly at a step; a second run must then pay every payout, each
exactly once, as the devnet's UTXO set shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from bsv import PrivateKey

from gateway.chain import BroadcastResult, ChainError
from gateway.chain.arc import ArcBroadcaster
from gateway.client import Wallet, fund
from gateway.devnet import start
from gateway.payouts.engine import PayoutEngine, new_payout
from gateway.payouts.ledgerfile import open_ledger
from gateway.payouts.records import MAX_ATTEMPTS

REPO = Path(__file__).resolve().parent.parent
STEPS = ("recorded", "signed", "batched", "broadcast", "marked")


@pytest.fixture
async def devnet() -> AsyncIterator[tuple[str, object]]:
    runner, chain = await start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", chain
    await runner.cleanup()


async def treasury(tmp_path: Path, url: str, satoshis: int = 100_000) -> Wallet:
    wallet = Wallet.create(tmp_path / "treasury.json")
    await fund(wallet, satoshis, url)
    return wallet


def recipients(n: int) -> list[tuple[str, str, int]]:
    return [(f"p-{i}", PrivateKey().public_key().hex(), 1000 + i) for i in range(n)]


async def run_engine(tmp_path: Path, url: str, wanted: list, at: str = "") -> int:
    payouts = tmp_path / "payouts.json"
    payouts.write_text(json.dumps(wanted))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.payout_runner", str(tmp_path / "ledger.db"),
        str(tmp_path / "treasury.json"), url, str(payouts), at,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode in (0, -9), err.decode()
    return proc.returncode or 0


async def paid_once(tmp_path: Path, chain, wanted: list) -> None:
    """Every payout in the ledger is paid, and the devnet holds exactly one
    output paying each one's script, of its amount."""
    ledger = open_ledger(tmp_path / "ledger.db", write=False)
    try:
        stored = {p.id: p for p in await ledger.payouts()}
    finally:
        await ledger.close()
    assert set(stored) == {pid for pid, _, _ in wanted}  # none forgotten
    for pid, _, sats in wanted:
        payout = stored[pid]
        assert payout.status in ("seen", "mined"), payout
        outputs = chain.unspent_by_script(bytes.fromhex(payout.script))
        assert [(txid, vout, amount) for txid, vout, amount, _ in outputs] == [
            (payout.txid, payout.vout, sats)
        ], pid


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("nth", [1, 2])
async def test_a_crash_at_any_step_never_pays_twice_nor_forgets(
    devnet, tmp_path: Path, step: str, nth: int
) -> None:
    url, chain = devnet
    wallet = await treasury(tmp_path, url)
    wanted = recipients(5)  # three batches of at most two
    if step == "recorded" and nth == 2:
        pytest.skip("payouts are recorded once a run")
    code = await run_engine(tmp_path, url, wanted, f"{step}:{nth}")
    assert code == -9  # killed exactly there
    assert await run_engine(tmp_path, url, wanted) == 0
    await paid_once(tmp_path, chain, wanted)
    # The treasury kept nothing reserved, and lost exactly what was paid and the fees.
    wallet.reload()
    assert wallet.pending() == []
    ledger = open_ledger(tmp_path / "ledger.db", write=False)
    try:
        batches = await ledger.batches(("seen", "mined", "failed"))
    finally:
        await ledger.close()
    fees = sum(b.fee for b in batches if b.status != "failed")
    assert wallet.balance().satoshis == 100_000 - sum(s for _, _, s in wanted) - fees


async def test_a_crash_then_a_second_crash_still_pays_once(devnet, tmp_path: Path) -> None:
    url, chain = devnet
    await treasury(tmp_path, url)
    wanted = recipients(4)
    assert await run_engine(tmp_path, url, wanted, "broadcast:1") == -9
    assert await run_engine(tmp_path, url, wanted, "signed:1") == -9
    assert await run_engine(tmp_path, url, wanted) == 0
    await paid_once(tmp_path, chain, wanted)


class Flaky:
    """A broadcaster over the devnet that fails on purpose: `down` raises
    ChainError (nobody knows), `refuse` answers a definite REJECTED without
    sending, `pending` sends but answers STORED (ARC took it, not the network)."""

    def __init__(self, inner: ArcBroadcaster) -> None:
        self.inner = inner
        self.down = 0
        self.refuse = 0
        self.refuse_reason = "fee-too-low"
        self.pending = 0
        self.lie = 0  # sends it, then answers a double-spend refusal
        self.sent: list[str] = []

    async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
        assert txid is not None
        self.sent.append(txid)
        if self.down:
            self.down -= 1
            raise ChainError("unreachable", "connection refused")
        if self.refuse:
            self.refuse -= 1
            return BroadcastResult(txid, "REJECTED", False, True, self.refuse_reason, code=465)
        if self.lie:
            self.lie -= 1
            await self.inner.broadcast(tx, txid=txid)
            return BroadcastResult(txid, "DOUBLE_SPEND_ATTEMPTED", False, True, "double-spend")
        result = await self.inner.broadcast(tx, txid=txid)
        if self.pending:
            self.pending -= 1
            return replace(result, status="STORED", accepted=False)
        return result

    async def status(self, txid: str) -> BroadcastResult:
        return await self.inner.status(txid)


@pytest.fixture
async def flaky(devnet) -> AsyncIterator[Flaky]:
    inner = ArcBroadcaster(devnet[0])
    yield Flaky(inner)
    await inner.close()


async def engine_for(tmp_path: Path, wallet: Wallet, broadcaster: Flaky, **kw) -> PayoutEngine:
    ledger = open_ledger(tmp_path / "ledger.db")
    return PayoutEngine(ledger, wallet, broadcaster, batch_size=kw.pop("batch_size", 10), **kw)


async def record(engine: PayoutEngine, wallet: Wallet, wanted: list) -> None:
    await engine.record(
        [new_payout(pid, "t", key, sats, treasury=wallet.identity) for pid, key, sats in wanted]
    )


async def test_an_outage_keeps_the_signed_batch_and_sends_the_same_bytes_later(
    devnet, flaky: Flaky, tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = await treasury(tmp_path, url)
    engine = await engine_for(tmp_path, wallet, flaky)
    wanted = recipients(3)
    await record(engine, wallet, wanted)
    flaky.down = 1
    report = await engine.pay_owed()
    assert report.unsent and "could not be reached" in report.stopped
    (signed,) = await engine.ledger.batches(("signed",))
    assert {p.status for p in await engine.ledger.payouts()} == {"signed"}
    # Back up: the same transaction goes out, not a second one.
    report = await engine.recover()
    assert report.sent == [signed.txid]
    assert await engine.pay_owed() is not None
    assert flaky.sent == [signed.txid, signed.txid]
    await engine.ledger.close()
    await paid_once(tmp_path, chain, wanted)


async def test_a_refused_batch_is_retried_by_one_spending_its_coins(
    devnet, flaky: Flaky, tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = await treasury(tmp_path, url)
    engine = await engine_for(tmp_path, wallet, flaky)
    wanted = recipients(3)
    await record(engine, wallet, wanted)
    flaky.refuse = 1
    report = await engine.pay_owed()
    (refused_txid,) = report.refused
    assert report.refused[refused_txid] == "fee-too-low"
    (retry_txid,) = report.sent
    refused = await engine.ledger.batch(refused_txid)
    retry = await engine.ledger.batch(retry_txid)
    assert refused is not None and retry is not None and refused.status == "failed"
    # The two conflict: at most one of them can ever be mined.
    assert set(refused.inputs) & set(retry.inputs)
    payouts = await engine.ledger.payouts()
    assert {p.attempts for p in payouts} == {1} and {p.reason for p in payouts} == {""}
    await engine.ledger.close()
    await paid_once(tmp_path, chain, wanted)


async def test_refused_again_and_again_the_payout_fails_with_the_reason(
    devnet, flaky: Flaky, tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = await treasury(tmp_path, url)
    engine = await engine_for(tmp_path, wallet, flaky)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    flaky.refuse = MAX_ATTEMPTS
    report = await engine.pay_owed()
    assert len(report.refused) == MAX_ATTEMPTS and not report.sent
    payouts = await engine.ledger.payouts()
    assert {(p.status, p.reason, p.attempts) for p in payouts} == {
        ("failed", "fee-too-low", MAX_ATTEMPTS)
    }
    assert wallet.balance().satoshis == 100_000 and wallet.pending() == []  # coins free again
    # An admin owes them again: paid, once.
    assert await engine.ledger.retry_failed() == 2
    report = await engine.pay_owed()
    assert len(report.sent) == 1
    await engine.ledger.close()
    await paid_once(tmp_path, chain, wanted)


async def test_a_double_spend_refusal_is_retried_only_on_the_same_coins(
    devnet, flaky: Flaky, tmp_path: Path
) -> None:
    """ARC's DOUBLE_SPEND_ATTEMPTED is not final: the refused batch may still be
    mined. Its retry spends the same coins, never the treasury's other coin,
    so the two can never both stand; refused every time, the payout fails and
    the coins are set aside."""
    url, chain = devnet
    wallet = await treasury(tmp_path, url, 50_000)
    await fund(wallet, 50_000, url)
    engine = await engine_for(tmp_path, wallet, flaky)
    wanted = recipients(1)
    await record(engine, wallet, wanted)
    flaky.refuse, flaky.refuse_reason = 1, "double-spend"
    report = await engine.pay_owed()
    (refused_txid,) = report.refused
    (retry_txid,) = report.sent
    refused = await engine.ledger.batch(refused_txid)
    retry = await engine.ledger.batch(retry_txid)
    assert set(retry.inputs) == set(refused.inputs)  # not the other coin
    await paid_once(tmp_path, chain, wanted)
    # Refused as many times as a payout is tried: failed, its coins never offered again.
    await record(engine, wallet, [("late", PrivateKey().public_key().hex(), 700)])
    flaky.refuse = MAX_ATTEMPTS
    report = await engine.pay_owed()
    assert len(report.refused) == MAX_ATTEMPTS and not report.sent
    late = await engine.ledger.get("late")
    assert (late.status, late.reason) == ("failed", "double-spend")
    first = await engine.ledger.batch(next(iter(report.refused)))
    aside = {c.outpoint for c in wallet.coins() if c.set_aside}
    assert aside == set(first.inputs)
    await engine.ledger.close()


async def test_a_batch_seen_then_refused_is_never_paid_again(
    devnet, flaky: Flaky, tmp_path: Path
) -> None:
    url, _ = devnet
    wallet = await treasury(tmp_path, url)
    engine = await engine_for(tmp_path, wallet, flaky)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    (txid,) = (await engine.pay_owed()).sent
    refused = BroadcastResult(txid, "DOUBLE_SPEND_ATTEMPTED", False, True, "double-spend")
    batch = await engine.ledger.batch(txid)
    assert await engine._apply(batch, refused)
    payouts = await engine.ledger.payouts()
    assert {p.status for p in payouts} == {"failed"}
    assert all("seen, then refused" in p.reason and txid in p.reason for p in payouts)
    assert await engine.ledger.owed(10) == []  # nothing paid a second time
    assert [c for c in wallet.coins() if c.txid == txid and c.spendable] == []
    # Owed again by an admin: the refused batch's coins are gone, so still not paid.
    await engine.ledger.retry_failed()
    report = await engine.pay_owed()
    assert not report.sent and {p.status for p in await engine.ledger.payouts()} == {"failed"}
    await engine.ledger.close()


async def test_a_batch_arc_only_stored_keeps_its_coins_until_the_network_has_it(
    devnet, flaky: Flaky, tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = await treasury(tmp_path, url)
    engine = await engine_for(tmp_path, wallet, flaky)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    flaky.pending = 1
    await engine.pay_owed()
    assert {p.status for p in await engine.ledger.payouts()} == {"sent"}
    assert wallet.balance().pending_coins == 1  # still reserved: it may yet be refused
    assert await engine.refresh() == 1  # the devnet has it
    assert wallet.pending() == [] and wallet.balance().pending_coins == 0
    chain.mine()
    assert await engine.refresh() == 1
    assert {p.status for p in await engine.ledger.payouts()} == {"mined"}
    await engine.ledger.close()
    await paid_once(tmp_path, chain, wanted)


async def test_recording_twice_keeps_the_first_record(devnet, flaky: Flaky, tmp_path: Path) -> None:
    url, _ = devnet
    wallet = await treasury(tmp_path, url)
    engine = await engine_for(tmp_path, wallet, flaky)
    key = PrivateKey().public_key().hex()
    first = new_payout("same", "t", key, 500, treasury=wallet.identity)
    again = new_payout("same", "t", key, 500, treasury=wallet.identity)
    assert first.script != again.script  # fresh derivation each time...
    (stored,) = await engine.record([first])
    (kept,) = await engine.record([again])
    assert kept.script == stored.script == first.script  # ...but the first one is what is paid
    await engine.ledger.close()


async def test_payouts_waiting_on_a_batch_the_chain_never_had_stay_failed_until_cancelled(
    devnet, flaky: Flaky, tmp_path: Path
) -> None:
    """A coin the chain does not know (a devnet restarted) is refused again and
    again: the payout fails and the coin is set aside. That the chain does not
    know the refused batch is no proof it never will (ARC forgets, and refuses
    what is later mined): the payouts stay failed, with the reason, until an
    admin cancels them; they are never paid from other coins on that word."""
    url, _ = devnet
    wallet = await treasury(tmp_path, url)
    engine = await engine_for(tmp_path, wallet, flaky)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    flaky.refuse, flaky.refuse_reason = MAX_ATTEMPTS, "invalid-merkle-roots"
    await engine.pay_owed()
    assert {p.status for p in await engine.ledger.payouts()} == {"failed"}
    assert wallet.balance().satoshis == 0  # the refused coin is set aside
    await fund(wallet, 30_000, url)
    assert await engine.reconcile() == 0
    await engine.ledger.retry_failed()
    report = await engine.pay_owed()
    assert not report.sent
    payouts = await engine.ledger.payouts()
    assert {p.status for p in payouts} == {"failed"}
    assert all("farebox payouts cancel" in p.reason for p in payouts)
    assert await engine.ledger.cancel([p.id for p in payouts], "checked: never mined") == 2
    assert {p.status for p in await engine.ledger.payouts()} == {"cancelled"}
    assert await engine.ledger.owed(10) == []
    await engine.ledger.close()


async def test_a_batch_refused_but_on_chain_after_all_is_paid_not_paid_again(
    devnet, flaky: Flaky, tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = await treasury(tmp_path, url)
    engine = await engine_for(tmp_path, wallet, flaky)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    flaky.lie = MAX_ATTEMPTS  # sent, and answered "double spend" every time
    report = await engine.pay_owed()
    assert not report.sent and {p.status for p in await engine.ledger.payouts()} == {"failed"}
    # The chain has the first one: asked, its payouts are paid (by it), never again.
    assert await engine.reconcile() == 2
    payouts = await engine.ledger.payouts()
    first = next(iter(report.refused))
    assert {(p.status, p.txid) for p in payouts} == {("seen", first)}
    assert await engine.ledger.owed(10) == []
    # The treasury takes the revived batch's coins as spent and its change back.
    batch = await engine.ledger.batch(first)
    assert not {c.outpoint for c in wallet.coins()} & set(batch.inputs)
    change = [c for c in wallet.coins() if c.txid == first]
    assert len(change) == 1 and change[0].spendable
    assert wallet.balance().satoshis == 100_000 - batch.satoshis - batch.fee
    await engine.ledger.close()
    await paid_once(tmp_path, chain, wanted)
