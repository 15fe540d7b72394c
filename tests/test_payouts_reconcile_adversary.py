"""Reconciling refused payout batches, attacked: a lying or forgetful ARC, a
wallet shared by two runs, lists copied and ledgers moved.

The rule under attack (DESIGN.md, money rule 7; gateway/payouts/engine.py): a
payout is paid at most once whatever crashes or lies, and never forgotten. A
refused batch's payouts are retried only by a batch spending its coins (so
that at most one of the two can be mined); they are never owed again from
other coins on the chain's word that a batch is gone (an admin cancels them);
`reconcile` takes them as paid (`revive`) when the chain has one after all,
and the treasury takes that batch's coins as spent and its change back.

The engine runs in this process over a real devnet (gateway.devnet), through
`Liar`: an ARC client that passes everything to the devnet unless told to lie
about a broadcast (`script`) or a status (`status_of`). What was really paid
is read from the devnet: how many unspent outputs pay each payout's script.

What this file found when it was written (payouts paid twice on ARC's 404 or
REJECTED, a retry signed on a stale view of a shared wallet, copies of a list
sent at once, a revived batch's change lost) is fixed; each test says the
sequence of answers that must not pay anyone twice nor strand coins.
ARC's own record backs the lies used here: a transaction can be answered
REJECTED and still be mined (bitcoin-sv/arc#759, #907: SEEN_ON_NETWORK
transactions marked REJECTED when not mined for a while), and GET /v1/tx
answers 404 for what an ARC never took or no longer keeps (bitcoin-sv/arc#49,
#840), e.g. after the operator switches ARC providers between two runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey

from gateway.bsv.derivation import p2pkh_script
from gateway.chain import BroadcastResult, ChainError
from gateway.chain.arc import ArcBroadcaster
from gateway.client import Wallet, fund
from gateway.devnet import Devnet, start
from gateway.payouts import listfile
from gateway.payouts.engine import PayoutEngine, new_payout
from gateway.payouts.ledgerfile import FileLedger, open_ledger
from gateway.payouts.records import MAX_ATTEMPTS, PAID

REPO = Path(__file__).resolve().parent.parent


# ----- answers an ARC may give ----------------------------------------------------------


def refused(txid: str) -> BroadcastResult:
    """POST answered 465: ARC's own fee policy refused it (the bytes are valid)."""
    return BroadcastResult(txid, "", False, True, "fee-too-low", "ARC 465: fee too low", 465)


def not_found(txid: str) -> BroadcastResult:
    """GET answered 404: this ARC does not know the txid (never took it, or forgot)."""
    return BroadcastResult(txid, "", False, False, "not-found", "not found", 404)


def said_rejected(txid: str, extra: str = "txn-mempool-conflict") -> BroadcastResult:
    """GET answered txStatus REJECTED (not a double spend by ARC's words)."""
    return BroadcastResult(txid, "REJECTED", False, True, "rejected", f"ARC REJECTED: {extra}")


def bad_request(txid: str) -> BroadcastResult:
    """What ArcBroadcaster.status makes of HTTP 400 to GET /v1/tx/{txid} (a proxy
    or an ARC refusing the request, not the transaction)."""
    return BroadcastResult(txid, "", False, True, "bad-request", "ARC 400: bad request", 400)


def said_double_spend(txid: str) -> BroadcastResult:
    return BroadcastResult(txid, "DOUBLE_SPEND_ATTEMPTED", False, True, "double-spend")


def stored(txid: str) -> BroadcastResult:
    return BroadcastResult(txid, "STORED", False, False, "pending")


class Liar:
    """An ARC client over the devnet. Each broadcast takes the next action of
    `script` ("pass" when it is empty): "pass" sends it; "lie" sends it to the
    devnet (the network has it) and answers 465 fee-too-low; "lie-ds" sends
    it and answers DOUBLE_SPEND_ATTEMPTED; "refuse" answers 465 without
    sending it; "stored" answers STORED without sending it; "down" raises
    ChainError. `status_of(txid)` answers GET /v1/tx/{txid} instead of the
    devnet when it returns a result (or raises)."""

    def __init__(self, inner: ArcBroadcaster) -> None:
        self.inner = inner
        self.script: list[str] = []
        self.status_of: Callable[[str], BroadcastResult | None] = lambda txid: None
        self.sent: list[str] = []  # every txid broadcast, in order
        self.reached: list[str] = []  # those the devnet was given

    async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
        assert txid is not None
        self.sent.append(txid)
        action = self.script.pop(0) if self.script else "pass"
        if action == "down":
            raise ChainError("unreachable", "connection refused")
        if action == "refuse":
            return refused(txid)
        if action == "stored":
            return stored(txid)
        result = await self.inner.broadcast(tx, txid=txid)
        self.reached.append(txid)
        if action == "lie":
            return refused(txid)
        if action == "lie-ds":
            return said_double_spend(txid)
        return result

    async def status(self, txid: str) -> BroadcastResult:
        answer = self.status_of(txid)
        if answer is not None:
            return answer
        return await self.inner.status(txid)


# ----- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
async def devnet() -> AsyncIterator[tuple[str, Devnet]]:
    runner, chain = await start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", chain
    await runner.cleanup()


@pytest.fixture
async def liar(devnet: tuple[str, Devnet]) -> AsyncIterator[Liar]:
    inner = ArcBroadcaster(devnet[0])
    yield Liar(inner)
    await inner.close()


async def two_coin_treasury(tmp_path: Path, url: str) -> Wallet:
    """A treasury of two coins, 100,000 and 50,000 satoshis. A small batch
    spends the 50,000 one (the smallest coin that suffices); the other one is
    what a second payment, free to use any coin, is made from."""
    wallet = Wallet.create(tmp_path / "treasury.json")
    await fund(wallet, 100_000, url)
    await fund(wallet, 50_000, url)
    return wallet


def recipients(n: int, prefix: str = "p") -> list[tuple[str, str, int]]:
    return [(f"{prefix}-{i}", PrivateKey().public_key().hex(), 1000 + i) for i in range(n)]


def engine_for(
    ledger: FileLedger, wallet: Wallet, broadcaster: Liar, batch_size: int = 10, **kw
) -> PayoutEngine:
    return PayoutEngine(ledger, wallet, broadcaster, batch_size=batch_size, **kw)


async def record(engine: PayoutEngine, wallet: Wallet, wanted: list) -> None:
    await engine.record(
        [new_payout(pid, "t", key, sats, treasury=wallet.identity) for pid, key, sats in wanted]
    )


async def times_paid(ledger: FileLedger, chain: Devnet) -> dict[str, int]:
    """How many outputs on the devnet (mempool included) pay each payout's script."""
    return {
        p.id: len(chain.unspent_by_script(bytes.fromhex(p.script))) for p in await ledger.payouts()
    }


async def statuses(ledger: FileLedger) -> set[str]:
    return {p.status for p in await ledger.payouts()}


def on_chain(chain: Devnet, txid: str) -> bool:
    found = chain.status(txid)
    return found is not None and found.accepted


async def refused_after_reaching_the_network(
    engine: PayoutEngine, liar: Liar, chain: Devnet
) -> str:
    """The first batch reaches the network but is answered 465 fee-too-low; its
    retries spend its coin and the network refuses them as double spends, until
    the payouts fail. Returns the first batch's txid (in the mempool)."""
    liar.script = ["lie"]
    report = await engine.pay_owed()
    assert len(report.refused) == MAX_ATTEMPTS and not report.sent, report
    first = liar.reached[0]
    assert on_chain(chain, first)
    assert await statuses(engine.ledger) == {"failed"}
    return first


# ===== bugs: paid twice ==================================================================


@pytest.mark.parametrize("arc_now_says", ["404", "REJECTED", "GET-400"])
async def test_a_refused_batch_on_the_network_is_not_reowed_on_arcs_word(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path, arc_now_says: str
) -> None:
    url, chain = devnet
    wallet = await two_coin_treasury(tmp_path, url)
    ledger = open_ledger(tmp_path / "ledger.db")
    engine = engine_for(ledger, wallet, liar)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    await refused_after_reaching_the_network(engine, liar, chain)
    # Another ARC (or the same one after its retention ran out) is asked.
    answers = {"404": not_found, "REJECTED": said_rejected, "GET-400": bad_request}
    liar.status_of = answers[arc_now_says]
    await engine.reconcile()
    await engine.pay_owed()
    paid = await times_paid(ledger, chain)
    await ledger.close()
    assert paid == {"p-0": 1, "p-1": 1}, paid


@pytest.mark.parametrize("arc_now_says", ["404", "REJECTED"])
async def test_a_batch_seen_then_refused_is_never_paid_again_even_after_reconcile(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path, arc_now_says: str
) -> None:
    url, chain = devnet
    wallet = await two_coin_treasury(tmp_path, url)
    ledger = open_ledger(tmp_path / "ledger.db")
    engine = engine_for(ledger, wallet, liar)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    (seen,) = (await engine.pay_owed()).sent
    assert await statuses(ledger) == {"seen"}
    # The next run goes through ARC-2: it never took the batch, and refuses its bytes.
    liar.status_of = not_found if arc_now_says == "404" else said_rejected
    liar.script = ["refuse"] if arc_now_says == "404" else []  # 404: the bytes sent again
    await engine.refresh()
    payouts = await ledger.payouts()
    assert {p.status for p in payouts} == {"failed"}
    assert all("seen, then refused" in p.reason for p in payouts)
    assert on_chain(chain, seen)  # the network has it all along
    await engine.reconcile()
    await engine.pay_owed()
    paid = await times_paid(ledger, chain)
    await ledger.close()
    assert paid == {"p-0": 1, "p-1": 1}, paid


async def test_fee_too_low_is_not_final_so_its_payouts_are_never_paid_from_other_coins(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = await two_coin_treasury(tmp_path, url)
    ledger = open_ledger(tmp_path / "ledger.db")
    engine = engine_for(ledger, wallet, liar)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    liar.script = ["refuse"] * MAX_ATTEMPTS
    await engine.pay_owed()
    assert await statuses(ledger) == {"failed"}
    first = await ledger.batch(liar.sent[0])
    assert first is not None and not on_chain(chain, first.txid)
    liar.status_of = not_found
    assert await engine.reconcile() == 0  # ARC's 404 proves nothing: still failed
    await ledger.retry_failed()
    await record(engine, wallet, [("big", PrivateKey().public_key().hex(), 60_000)])
    await engine.pay_owed()
    # A miner with a lower fee floor is handed the first batch's bytes.
    await liar.inner.broadcast(first.beef, txid=first.txid)
    liar.status_of = lambda txid: None
    assert await engine.reconcile() in (0, 2)  # revived once the chain has it
    paid = await times_paid(ledger, chain)
    await ledger.close()
    assert paid == {"p-0": 1, "p-1": 1, "big": 1}, paid


async def test_a_retry_conflicts_with_the_refused_batch_though_another_run_shares_the_wallet(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = await two_coin_treasury(tmp_path, url)
    other_list = "ledger:" + "b" * 32
    taken: list[str] = []

    def another_run_signs(step: str) -> None:
        # Right after the refusal freed the 50,000 coin, list B (another process,
        # the same treasury file) signs a batch: it takes that coin.
        if step == "marked" and not taken:
            other = Wallet.open(wallet.path)
            script = p2pkh_script(PrivateKey().public_key())
            taken.append(other.sign_outputs([(script, 1000)], label=other_list).txid)

    ledger = open_ledger(tmp_path / "ledger.db")
    engine = engine_for(ledger, wallet, liar, checkpoint=another_run_signs)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    liar.script = ["lie"]
    report = await engine.pay_owed()
    first = liar.reached[0]
    assert on_chain(chain, first) and taken
    retry = await ledger.batch(report.sent[0]) if report.sent else None
    refused_batch = await ledger.batch(first)
    assert refused_batch is not None
    paid = await times_paid(ledger, chain)
    await ledger.close()
    assert retry is None or set(retry.inputs) & set(refused_batch.inputs), (retry, paid)
    assert paid == {"p-0": 1, "p-1": 1}, paid


class Crash(Exception):
    """The process stopped here (SIGKILL in tests/payout_runner.py)."""


async def test_a_revived_batch_still_pays_a_payout_that_was_rebatched_meanwhile(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = await two_coin_treasury(tmp_path, url)
    ledger = open_ledger(tmp_path / "ledger.db")

    def crash_once_marked(step: str) -> None:
        if step == "marked":
            raise Crash

    first_run = engine_for(ledger, wallet, liar, batch_size=2, checkpoint=crash_once_marked)
    wanted = recipients(2)
    await record(first_run, wallet, wanted)
    liar.script = ["lie"]
    with pytest.raises(Crash):
        await first_run.pay_owed()
    b1 = liar.reached[0]
    # A rerun with --batch-size 1: P's retry spends B1's coin, ARC only stores it.
    wallet.reload()
    rerun = engine_for(ledger, wallet, liar, batch_size=1)
    liar.script = ["stored"]
    await rerun.pay_owed()
    p, q = await ledger.get("p-0"), await ledger.get("p-1")
    assert p is not None and q is not None
    assert (p.status, q.status) == ("sent", "failed"), (p, q)
    await rerun.reconcile()  # honest: the network has B1, but P is in flight in B2
    q = await ledger.get("p-1")
    assert q is not None and q.status == "failed"  # B1 left alone while P is elsewhere
    await rerun.refresh()  # B2 unknown: sent again, refused (B1 spent its coin)
    await rerun.pay_owed()  # and again, until P fails
    p = await ledger.get("p-0")
    assert p is not None and p.status == "failed", p
    await rerun.reconcile()  # honest answers: every payout of B1 failed, B1 on chain
    p, q = await ledger.get("p-0"), await ledger.get("p-1")
    paid = await times_paid(ledger, chain)
    await ledger.close()
    # The chain pays P and Q in B1: they are paid, not failed, and only once.
    assert on_chain(chain, b1)
    assert p is not None and p.status in PAID and p.txid == b1, p
    assert q is not None and q.status in PAID and q.txid == b1, q
    assert paid == {"p-0": 1, "p-1": 1}, paid


# ===== bugs: the treasury's coins ========================================================


@pytest.mark.parametrize("how", ["refused-when-sent", "seen-then-refused"])
async def test_a_revived_batch_gives_its_change_back_to_the_treasury(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path, how: str
) -> None:
    url, chain = devnet
    wallet = Wallet.create(tmp_path / "treasury.json")
    await fund(wallet, 100_000, url)
    ledger = open_ledger(tmp_path / "ledger.db")
    engine = engine_for(ledger, wallet, liar)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    if how == "refused-when-sent":
        first = await refused_after_reaching_the_network(engine, liar, chain)
    else:
        (first,) = (await engine.pay_owed()).sent
        liar.status_of = said_rejected
        await engine.refresh()
        assert await statuses(ledger) == {"failed"}
        liar.status_of = lambda txid: None
    assert await engine.reconcile() == 2
    chain.mine()
    await engine.refresh()
    assert await statuses(ledger) == {"mined"}
    batch = await ledger.batch(first)
    await ledger.close()
    assert batch is not None
    wallet.reload()
    expected = 100_000 - sum(s for _, _, s in wanted) - batch.fee
    assert wallet.balance().satoshis == expected, wallet.coins()


# ===== bugs: the CLI's "ids are the treasury's" ==========================================


async def farebox(*args: str | Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *map(str, args),
        cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def send(listed: Path, treasury: Path, url: str) -> tuple[int, str, str]:
    return await farebox("payouts", "send", listed, "--wallet", treasury, "--devnet-url", url)


def write_list(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["id,recipient,satoshis"] + [f"{i},{r},{s}" for i, r, s in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def paid_to(chain: Devnet, listed: Path) -> dict[str, int]:
    rows = listfile.parse_list(listed.read_bytes()).rows
    return {r.id: len(chain.unspent_by_script(r.recipient.script)) for r in rows}


async def test_a_copy_of_a_list_whose_folder_was_archived_is_not_paid_again(
    devnet: tuple[str, Devnet], tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = Wallet.create(tmp_path / "treasury.json")
    await fund(wallet, 100_000, url)
    march = tmp_path / "march"
    march.mkdir()
    rows = [(f"m{i}", PrivateKey().address(), 1000) for i in range(2)]
    listed = write_list(march / "l.csv", rows)
    code, out, err = await send(listed, wallet.path, url)
    assert code == 0, out + err
    march.rename(tmp_path / "march-done")
    april = tmp_path / "april"
    april.mkdir()
    copy = april / "l.csv"
    shutil.copy(tmp_path / "march-done" / "l.csv", copy)
    code, out, err = await send(copy, wallet.path, url)
    assert paid_to(chain, copy) == {"m0": 1, "m1": 1}, (code, out, err)


class Lockstep:
    """The devnet behind a proxy that holds each "what is unspent" query (the
    first thing `payouts send` asks) until a second one arrives, then answers
    both: two runs started together leave that step at the same instant."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self._waiting: list[asyncio.Future[None]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path.endswith("/unspent"):
            mine = asyncio.get_running_loop().create_future()
            self._waiting.append(mine)
            if len(self._waiting) >= 2:
                for waiting in self._waiting:
                    if not waiting.done():
                        waiting.set_result(None)
                self._waiting = []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(mine), 10)
        assert self._session is not None
        keep = ("content-type", "accept", "x-waitfor", "x-maxtimeout")
        headers = {k: v for k, v in request.headers.items() if k.lower() in keep}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type
            )


async def test_two_copies_of_a_list_sent_at_once_pay_each_id_once(
    devnet: tuple[str, Devnet], tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = Wallet.create(tmp_path / "treasury.json")
    for _ in range(2):
        await fund(wallet, 30_000, url)
    proxy = Lockstep(url)
    await proxy.start()
    outcomes = []
    try:
        for attempt in range(3):  # a race: any one attempt paying twice is the bug
            rows = [(f"r{attempt}-{i}", PrivateKey().address(), 1000) for i in range(2)]
            first = write_list(tmp_path / f"benefits-{attempt}.csv", rows)
            second = write_list(tmp_path / f"benefits-{attempt}-copy.csv", rows)
            results = await asyncio.gather(
                send(first, wallet.path, proxy.url), send(second, wallet.path, proxy.url)
            )
            for listed in (first, second):  # each finished by a rerun, as an operator would
                await send(listed, wallet.path, url)
            outcomes.append((paid_to(chain, first), [r[0] for r in results]))
    finally:
        await proxy.stop()
    assert all(set(paid.values()) == {1} for paid, _ in outcomes), outcomes


# ===== what holds ========================================================================


async def test_double_spend_attempted_keeps_it_failed_then_seen_revives_it(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path
) -> None:
    """DOUBLE_SPEND_ATTEMPTED is not final: while ARC says it, nothing is owed
    again; once the batch is seen, its payouts are paid by it, once."""
    url, chain = devnet
    wallet = await two_coin_treasury(tmp_path, url)
    ledger = open_ledger(tmp_path / "ledger.db")
    engine = engine_for(ledger, wallet, liar)
    wanted = recipients(2)
    await record(engine, wallet, wanted)
    liar.script = ["lie-ds"]
    await engine.pay_owed()
    assert await statuses(ledger) == {"failed"}
    first = liar.reached[0]
    liar.status_of = said_double_spend
    assert await engine.reconcile() == 0
    assert await ledger.owed(10) == [] and not (await engine.pay_owed()).sent
    liar.status_of = lambda txid: None  # the truth: the first batch is in the mempool
    assert await engine.reconcile() == 2
    assert {(p.status, p.txid) for p in await ledger.payouts()} == {("seen", first)}
    assert not (await engine.pay_owed()).sent
    paid = await times_paid(ledger, chain)
    await ledger.close()
    assert paid == {"p-0": 1, "p-1": 1}


async def test_answers_about_another_txid_or_no_answer_change_nothing(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path
) -> None:
    """A status about another transaction (MINED or REJECTED), an unreachable
    ARC, or one refused batch in doubt while the others are 'never': the
    payouts stay failed, with their reason."""
    url, chain = devnet
    wallet = await two_coin_treasury(tmp_path, url)
    ledger = open_ledger(tmp_path / "ledger.db")
    engine = engine_for(ledger, wallet, liar)
    await record(engine, wallet, recipients(2))
    liar.script = ["refuse"] * MAX_ATTEMPTS
    await engine.pay_owed()
    assert await statuses(ledger) == {"failed"}
    refused_txids = list(liar.sent)
    other = "ef" * 32
    mined_elsewhere = BroadcastResult(other, "MINED", True, False, block_height=chain.height)

    def down(txid: str) -> BroadcastResult:
        raise ChainError("unreachable", "connection refused")

    def one_in_doubt(txid: str) -> BroadcastResult:
        if txid == refused_txids[1]:
            return said_double_spend(txid)
        return not_found(txid)

    for answer in (
        lambda txid: mined_elsewhere,
        lambda txid: said_rejected(other),
        lambda txid: not_found(other),
        down,
        one_in_doubt,
    ):
        liar.status_of = answer
        assert await engine.reconcile() == 0
        assert await statuses(ledger) == {"failed"}
        assert {p.reason for p in await ledger.payouts()} == {"fee-too-low"}
    await ledger.close()


async def test_a_batch_seen_then_refused_that_the_chain_has_is_revived(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path
) -> None:
    """Seen, then a REJECTED status (ARC's stale verdict): failed and never
    retried by pay_owed, not even after retry_failed; asked again, the chain
    has it, and the payouts are paid by it, once."""
    url, chain = devnet
    wallet = await two_coin_treasury(tmp_path, url)
    ledger = open_ledger(tmp_path / "ledger.db")
    engine = engine_for(ledger, wallet, liar)
    await record(engine, wallet, recipients(2))
    (seen,) = (await engine.pay_owed()).sent
    liar.status_of = said_rejected
    await engine.refresh()
    assert await statuses(ledger) == {"failed"}
    await ledger.retry_failed()
    assert not (await engine.pay_owed()).sent
    assert await statuses(ledger) == {"failed"}
    liar.status_of = lambda txid: None
    assert await engine.reconcile() == 2
    assert {(p.status, p.txid) for p in await ledger.payouts()} == {("seen", seen)}
    paid = await times_paid(ledger, chain)
    await ledger.close()
    assert paid == {"p-0": 1, "p-1": 1}


async def test_a_crash_inside_reconcile_loses_nothing(
    devnet: tuple[str, Devnet], liar: Liar, tmp_path: Path
) -> None:
    """A run stopped inside reconcile, after the treasury took a revived batch
    and before the ledger did: the next reconcile finishes the job; nothing is
    paid twice or forgotten."""
    url, chain = devnet
    wallet = await two_coin_treasury(tmp_path, url)
    ledger = open_ledger(tmp_path / "ledger.db")
    engine = engine_for(ledger, wallet, liar, batch_size=1)
    await record(engine, wallet, recipients(2))
    # p-0: refused 465 thrice without reaching anyone; p-1: reached the network.
    liar.script = ["refuse"] * MAX_ATTEMPTS + ["lie"]
    await engine.pay_owed()
    assert await statuses(ledger) == {"failed"}
    never = set(liar.sent[:MAX_ATTEMPTS])
    liar.status_of = lambda txid: not_found(txid) if txid in never else None
    real_revive = ledger.revive

    async def crash(txid: str, status: str) -> int:
        raise Crash

    ledger.revive = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):  # after the treasury took the batch, before the ledger did
        await engine.reconcile()
    ledger.revive = real_revive  # type: ignore[method-assign]
    assert await engine.reconcile() == 1  # finished by the next round
    p0, p1 = await ledger.get("p-0"), await ledger.get("p-1")
    assert p1 is not None and p1.status == "seen"
    # p-0's batches never reached anyone, but ARC's 404 is no proof: it stays
    # failed for an admin to cancel, never paid from other coins on that word.
    assert p0 is not None and p0.status == "failed"
    await ledger.retry_failed()
    report = await engine.pay_owed()
    assert not report.sent
    paid = await times_paid(ledger, chain)
    await ledger.close()
    assert paid == {"p-0": 0, "p-1": 1}
