"""`farebox payouts send | status | show` attacked: odd lists, odd ledgers, a lying ARC.

The money rule under attack (DESIGN.md, rule 7; `farebox payouts send --help`):
an owed payout is recorded before anything is sent, is paid at most once
whatever happens, and is never forgotten; a treasury that cannot cover the
list is refused before anything is sent; bad input gets a clear error, never
a traceback.

Every command runs as a `farebox` process against a devnet in this process.
A `FakeArc` sits between the command and the devnet when a test needs the
chain to misbehave: it passes everything through unless a rule answers a
broadcast (POST /v1/tx) or a status query (GET /v1/tx/{txid}) first. What
was really paid is read from the devnet: each payout's locking script (from
the ledger) and how many unspent outputs pay it.

Each test is an attack the code must withstand; what they found when they
were written (double payment after a refusal, a lost batch never resent,
tracebacks) is fixed.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import sqlite3
import sys
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey
from bsv.constants import Network

from gateway.client import Wallet, fund
from gateway.devnet import Devnet, start
from gateway.payouts import listfile
from gateway.payouts.engine import fee_estimate
from gateway.payouts.ledgerfile import open_ledger
from gateway.payouts.records import Payout

REPO = Path(__file__).resolve().parent.parent
FUNDS = 100_000


# ----- helpers ----------------------------------------------------------------------


async def farebox(*args: str | Path) -> tuple[int, str, str]:
    """Run `farebox ARGS...` as a process; (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *map(str, args),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def send(listed: Path, treasury: Path, url: str, *extra: str | Path) -> tuple[int, str, str]:
    return await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url, *extra
    )


def write_list(path: Path, rows: list[tuple[str, str, int]], *, newline: str = "\n") -> Path:
    lines = ["id,recipient,satoshis"] + [f"{i},{r},{s}" for i, r, s in rows]
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


def addresses(n: int) -> list[str]:
    return [PrivateKey().address() for _ in range(n)]


def ledger_of(listed: Path) -> Path:
    return listed.with_name(listed.stem + ".payouts.db")


async def recorded(ledger: Path) -> dict[str, Payout]:
    db = open_ledger(ledger, write=False)
    try:
        return {p.id: p for p in await db.payouts()}
    finally:
        await db.close()


async def times_paid(chain: Devnet, ledger: Path) -> dict[str, int]:
    """How many outputs on the devnet (mempool included) pay each recorded payout's script."""
    return {
        pid: len(chain.unspent_by_script(bytes.fromhex(p.script)))
        for pid, p in (await recorded(ledger)).items()
    }


def spendable(treasury: Path) -> int:
    return Wallet.open(treasury).balance().satoshis


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


def farebox_here(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """`farebox ARGS...` in this process (no network): (exit status, stdout, stderr).
    Anything but SystemExit escaping is the traceback a user would see."""
    from gateway.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


Rule = Callable[["FakeArc", web.Request, bytes], Awaitable[web.StreamResponse | None]]


class FakeArc:
    """An ARC in front of the devnet. Requests pass through to the devnet
    unless `on_post` (POST /v1/tx) or `on_status` (GET /v1/tx/{txid}) answers
    (a rule returning None passes the request through)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.on_post: Rule | None = None
        self.on_status: Rule | None = None
        self.posts = 0
        self.posted: list[str] = []  # txids the devnet was given through us
        self.url = ""
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

    async def forward(self, request: web.Request, body: bytes) -> tuple[int, bytes]:
        """The devnet's answer to `request`: (HTTP status, body)."""
        assert self._session is not None
        keep = ("content-type", "accept", "x-waitfor", "x-maxtimeout")
        headers = {k: v for k, v in request.headers.items() if k.lower() in keep}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as resp:
            return resp.status, await resp.read()

    async def forward_json(self, request: web.Request, body: bytes) -> tuple[int, dict]:
        status, raw = await self.forward(request, body)
        answer = json.loads(raw)
        if request.method == "POST" and isinstance(answer.get("txid"), str):
            self.posted.append(answer["txid"])
        return status, answer

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rule = None
        if request.method == "POST" and request.path == "/v1/tx":
            self.posts += 1
            rule = self.on_post
        elif request.method == "GET" and request.path.startswith("/v1/tx/"):
            rule = self.on_status
        if rule is not None:
            answer = await rule(self, request, body)
            if answer is not None:
                return answer
        if request.method == "POST" and request.path == "/v1/tx":
            status, data = await self.forward_json(request, body)
            return web.json_response(data, status=status)
        status, raw = await self.forward(request, body)
        return web.Response(status=status, body=raw, content_type="application/json")


# ----- fixtures ---------------------------------------------------------------------


@pytest.fixture
async def devnet() -> AsyncIterator[tuple[str, Devnet]]:
    runner, chain = await start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", chain
    await runner.cleanup()


@pytest.fixture
async def treasury(devnet: tuple[str, Devnet], tmp_path: Path) -> Path:
    """A treasury holding one coin of FUNDS satoshis."""
    wallet = Wallet.create(tmp_path / "treasury.json")
    await fund(wallet, FUNDS, devnet[0])
    return wallet.path


@pytest.fixture
async def arc(devnet: tuple[str, Devnet]) -> AsyncIterator[FakeArc]:
    fake = FakeArc(devnet[0])
    await fake.start()
    yield fake
    await fake.stop()


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ===== the chain lies: money paid twice, or never ======================================


@pytest.mark.parametrize("said", ["DOUBLE_SPEND_ATTEMPTED", "REJECTED"])
async def test_double_spend_attempted_then_the_retry_pays_everyone_again(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path, said: str
) -> None:
    """The first batch reaches the network, but ARC answers DOUBLE_SPEND_ATTEMPTED
    (a competitor showed up; it may still lose the race) or REJECTED (then the
    retry spending the same coin is refused by the devnet itself as a double
    spend of... the engine's own first batch). Either way the retry ends up paid
    from another coin, and the first batch stands."""
    url, chain = devnet
    await fund(Wallet.open(treasury), 50_000, url)  # a second coin

    async def first_says_double_spend(
        fake: FakeArc, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        if fake.posts != 1:
            return None
        # The devnet takes it (it wins the race), ARC says otherwise.
        status, answer = await fake.forward_json(request, body)
        assert status == 200 and answer["txStatus"] == "SEEN_ON_NETWORK", answer
        answer["txStatus"] = said
        if said == "DOUBLE_SPEND_ATTEMPTED":
            answer["competingTxs"] = ["ab" * 32]
        return web.json_response(answer)

    arc.on_post = first_says_double_spend
    listed = write_list(
        tmp_path / "l.csv", [(f"p{i}", a, 1000) for i, a in enumerate(addresses(3))]
    )
    _, out, err = await send(listed, treasury, arc.url)
    no_traceback(err)
    paid = await times_paid(chain, ledger_of(listed))
    assert paid == {"p0": 1, "p1": 1, "p2": 1}, (paid, out, err)


async def test_seen_then_refused_on_status_retry_spends_the_refused_batchs_change(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path
) -> None:
    url, chain = devnet

    async def later_says_double_spend(
        fake: FakeArc, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        txid = request.path.rsplit("/", 1)[1]
        if txid not in fake.posted:
            return None
        return web.json_response(
            {"txid": txid, "txStatus": "DOUBLE_SPEND_ATTEMPTED", "competingTxs": ["cd" * 32]}
        )

    arc.on_status = later_says_double_spend
    listed = write_list(
        tmp_path / "l.csv", [(f"p{i}", a, 1000) for i, a in enumerate(addresses(2))]
    )
    _, out, err = await send(listed, treasury, arc.url)
    no_traceback(err)
    assert arc.posted, out + err
    # The operator runs it again against an honest chain.
    _, out, err = await send(listed, treasury, url)
    no_traceback(err)
    paid = await times_paid(chain, ledger_of(listed))
    assert paid == {"p0": 1, "p1": 1}, (paid, out, err)


async def test_a_batch_arc_queued_then_lost_is_never_broadcast_again(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path
) -> None:
    url, chain = devnet

    async def queue_and_drop(
        fake: FakeArc, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        return web.json_response({"txStatus": "QUEUED", "extraInfo": ""})

    arc.on_post = queue_and_drop
    listed = write_list(
        tmp_path / "l.csv", [(f"p{i}", a, 1000) for i, a in enumerate(addresses(2))]
    )
    code, out, err = await send(listed, treasury, arc.url)
    no_traceback(err)
    first_code = code
    for _ in range(2):  # run again, twice, against the honest devnet
        code, out, err = await send(listed, treasury, url)
        no_traceback(err)
    paid = await times_paid(chain, ledger_of(listed))
    assert paid == {"p0": 1, "p1": 1}, (first_code, paid, out, err)


async def test_a_status_answer_about_another_txid_is_not_believed(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path
) -> None:
    chain = devnet[1]

    async def queue_and_drop(
        fake: FakeArc, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        return web.json_response({"txStatus": "QUEUED"})

    async def mined_someone_else(
        fake: FakeArc, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        return web.json_response(
            {"txid": "ef" * 32, "txStatus": "MINED", "blockHeight": chain.height or 1}
        )

    arc.on_post = queue_and_drop
    arc.on_status = mined_someone_else
    listed = write_list(tmp_path / "l.csv", [("p0", addresses(1)[0], 1000)])
    _, out, err = await send(listed, treasury, arc.url)
    no_traceback(err)
    stored = await recorded(ledger_of(listed))
    assert chain.unspent_by_script(bytes.fromhex(stored["p0"].script)) == []
    assert stored["p0"].status != "mined", (out, err)


async def test_a_pending_broadcast_answer_does_not_strand_the_rest_of_the_list(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path
) -> None:
    """ARC answers STORED (its X-MaxTimeout ran out before SEEN_ON_NETWORK): the
    one-coin treasury keeps the coin reserved and the change unknown, so today
    the first run stops short after one batch ('the treasury ran short ... add
    coins', though it covers the list); the rerun counts the change coming back
    and pays the rest, once."""
    url, chain = devnet

    async def stored_only(
        fake: FakeArc, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        status, answer = await fake.forward_json(request, body)
        answer["txStatus"] = "STORED"  # ARC's X-MaxTimeout ran out before SEEN_ON_NETWORK
        return web.json_response(answer, status=status)

    arc.on_post = stored_only
    listed = write_list(
        tmp_path / "l.csv", [(f"p{i}", a, 1000) for i, a in enumerate(addresses(2))]
    )
    code, out, err = await send(listed, treasury, arc.url, "--batch-size", "1")
    no_traceback(err)
    first = (code, out, err)
    code, out, err = await send(listed, treasury, url, "--batch-size", "1")  # honest chain
    no_traceback(err)
    paid = await times_paid(chain, ledger_of(listed))
    assert (code, paid) == (0, {"p0": 1, "p1": 1}), (first, out, err)


async def test_a_garbled_arc_answer_is_a_clear_error_not_a_traceback(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path
) -> None:
    async def garbled(
        fake: FakeArc, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        return web.json_response({"txStatus": "SEEN_ON_NETWORK", "competingTxs": 5})

    arc.on_post = garbled
    listed = write_list(tmp_path / "l.csv", [("p0", addresses(1)[0], 1000)])
    code, _, err = await send(listed, treasury, arc.url)
    no_traceback(err)
    # The odd field is ignored; the status is believed, and what the chain
    # says later (it never had it) sends the same bytes again.
    assert code in (0, 1) and all(line.startswith("farebox:") for line in err.splitlines()), err


async def test_a_garbled_answer_then_a_rerun_pays_once(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path
) -> None:
    """Whatever the garbled answer did to the first run, the batch was recorded
    signed before it was sent: the rerun sends the same bytes, and pays once."""
    url, chain = devnet

    async def forward_then_garble(
        fake: FakeArc, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        await fake.forward_json(request, body)
        return web.json_response({"txStatus": "SEEN_ON_NETWORK", "competingTxs": 5})

    arc.on_post = forward_then_garble
    listed = write_list(tmp_path / "l.csv", [(f"p{i}", a, 700) for i, a in enumerate(addresses(2))])
    code, _, err = await send(listed, treasury, arc.url)
    no_traceback(err)
    code, out, err = await send(listed, treasury, url)
    assert code == 0, out + err
    assert await times_paid(chain, ledger_of(listed)) == {"p0": 1, "p1": 1}
    assert arc.posted == [p.txid for p in (await recorded(ledger_of(listed))).values()][:1]


@pytest.mark.parametrize("forwarded", [False, True], ids=["lost-request", "lost-answer"])
async def test_a_500_then_a_rerun_pays_each_row_once(
    devnet: tuple[str, Devnet],
    treasury: Path,
    arc: FakeArc,
    tmp_path: Path,
    forwarded: bool,
) -> None:
    """ARC fails with 500 before the transaction reached the network, or after
    (the answer lost): either way the run stops with the batch signed, and
    the rerun broadcasts the very same transaction."""
    url, chain = devnet

    async def fail(fake: FakeArc, request: web.Request, body: bytes) -> web.StreamResponse | None:
        if forwarded:
            await fake.forward_json(request, body)
        return web.json_response({"status": 500, "title": "boom"}, status=500)

    arc.on_post = fail
    listed = write_list(tmp_path / "l.csv", [(f"p{i}", a, 800) for i, a in enumerate(addresses(3))])
    code, out, err = await send(listed, treasury, arc.url, "--batch-size", "2")
    no_traceback(err)
    assert code == 1 and "stopped" in err, out + err
    before = await recorded(ledger_of(listed))
    assert [p.status for p in before.values()] == ["signed", "signed", "owed"]
    rows = list(csv.reader(listfile.result_path(listed).read_text().splitlines()))
    assert [r[3] for r in rows[1:]] == ["signed", "signed", "owed"]
    code, out, err = await send(listed, treasury, url, "--batch-size", "2")
    assert code == 0, out + err
    after = await recorded(ledger_of(listed))
    assert after["p0"].txid == before["p0"].txid  # the same transaction, sent again
    assert await times_paid(chain, ledger_of(listed)) == {"p0": 1, "p1": 1, "p2": 1}


async def test_unknown_txstatus_is_not_taken_for_a_refusal(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path
) -> None:
    """200 with a txStatus no ARC has (a newer ARC?) is not a refusal: the batch is
    never signed again, the coins stay reserved, a rerun asks and moves on."""
    url, chain = devnet

    async def odd_status(
        fake: FakeArc, request: web.Request, body: bytes
    ) -> web.StreamResponse | None:
        status, answer = await fake.forward_json(request, body)
        answer["txStatus"] = "BANANA"
        return web.json_response(answer, status=status)

    arc.on_post = odd_status
    listed = write_list(tmp_path / "l.csv", [("p0", addresses(1)[0], 900)])
    code, out, err = await send(listed, treasury, arc.url)
    no_traceback(err)
    assert (await recorded(ledger_of(listed)))["p0"].status in ("sent", "seen")
    code, out, err = await send(listed, treasury, url)
    assert code == 0, out + err
    assert await times_paid(chain, ledger_of(listed)) == {"p0": 1}
    assert len(arc.posted) == 1


# ===== crashes and concurrency ==========================================================


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def interrupted_run(listed: Path, treasury: Path, arc: FakeArc) -> tuple[int, str]:
    """`payouts send` through a slow ARC, Ctrl-C (SIGINT) once 3 of 8 rows are
    paid; (exit status, stderr)."""

    async def slow(fake: FakeArc, request: web.Request, body: bytes) -> web.StreamResponse | None:
        await asyncio.sleep(0.3)
        return None

    arc.on_post = slow
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "payouts", "send", str(listed)),
        *("--wallet", str(treasury), "--devnet-url", arc.url, "--batch-size", "1"),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        # As at a terminal: a test run started in the background (`cmd &` in a
        # script) passes SIGINT on ignored, and Python would keep ignoring it.
        preexec_fn=_sigint_default,
    )
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "the run ended before it was interrupted"
        if "paid 3 of 8" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, err.decode()


async def test_ctrl_c_mid_run_then_a_rerun_pays_each_row_once(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path
) -> None:
    url, chain = devnet
    listed = write_list(tmp_path / "l.csv", [(f"p{i}", a, 600) for i, a in enumerate(addresses(8))])
    code, _ = await interrupted_run(listed, treasury, arc)
    assert code != 0
    statuses = [p.status for p in (await recorded(ledger_of(listed))).values()]
    assert statuses.count("owed") >= 3, statuses  # interrupted mid-run indeed
    code, out, err = await send(listed, treasury, url, "--batch-size", "1")
    assert code == 0, out + err
    assert set((await times_paid(chain, ledger_of(listed))).values()) == {1}
    assert Wallet.open(treasury).balance().pending_satoshis == 0


async def test_ctrl_c_says_run_it_again_without_a_traceback(
    devnet: tuple[str, Devnet], treasury: Path, arc: FakeArc, tmp_path: Path
) -> None:
    listed = write_list(tmp_path / "l.csv", [(f"p{i}", a, 600) for i, a in enumerate(addresses(8))])
    code, err = await interrupted_run(listed, treasury, arc)
    no_traceback(err)
    assert code in (1, 130) and "again" in err, err


async def test_two_lists_on_one_treasury_do_not_release_each_others_coins(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    """List A is left with a batch signed (chain down), its coins reserved. List B,
    paid from the same treasury meanwhile, must not free them in its recover()
    (Wallet.labelled is per ledger), nor spend them. Then A pays once."""
    url, chain = devnet
    await fund(Wallet.open(treasury), 40_000, url)
    list_a = write_list(
        tmp_path / "a.csv", [(f"a{i}", x, 1000) for i, x in enumerate(addresses(2))]
    )
    list_b = write_list(
        tmp_path / "b.csv", [(f"b{i}", x, 1000) for i, x in enumerate(addresses(2))]
    )
    code, out, err = await send(list_a, treasury, closed_port_url())
    assert code == 1, out + err
    held = Wallet.open(treasury).balance().pending_satoshis
    assert held > 0
    # B twice at once (one is turned away by the ledger lock), then A and B together.
    results = await asyncio.gather(
        send(list_b, treasury, url), send(list_b, treasury, url), return_exceptions=True
    )
    assert sorted(r[0] for r in results) in ([0, 0], [0, 1]), results  # type: ignore[index]
    assert Wallet.open(treasury).balance().pending_satoshis == held
    assert await times_paid(chain, ledger_of(list_b)) == {"b0": 1, "b1": 1}
    # A (its signed batch sent again) and a new list C started at the same time:
    # one treasury pays out one list at a time, the other is turned away whole;
    # sent again, it pays.
    list_c = write_list(tmp_path / "c.csv", [(f"c{i}", x, 900) for i, x in enumerate(addresses(3))])
    a, c = await asyncio.gather(
        send(list_a, treasury, url), send(list_c, treasury, url, "--batch-size", "1")
    )
    assert sorted((a[0], c[0])) in ([0, 0], [0, 1]), (a, c)
    for listed, run in ((list_a, a), (list_c, c)):
        if run[0] == 1:
            assert "is in use" in run[2], run
            again = await send(listed, treasury, url, "--batch-size", "1")
            assert again[0] == 0, again
    assert await times_paid(chain, ledger_of(list_a)) == {"a0": 1, "a1": 1}
    assert await times_paid(chain, ledger_of(list_b)) == {"b0": 1, "b1": 1}
    assert await times_paid(chain, ledger_of(list_c)) == {"c0": 1, "c1": 1, "c2": 1}
    assert Wallet.open(treasury).balance().pending_satoshis == 0


# ===== the treasury: refused before anything is sent ===================================


async def refused_up_front(
    chain: Devnet, listed: Path, treasury: Path, url: str, *extra: str
) -> str:
    txs = chain.mempool_size
    code, out, err = await send(listed, treasury, url, *extra)
    no_traceback(err)
    assert code == 1 and "cannot cover the list" in err, out + err
    assert not ledger_of(listed).exists()  # nothing recorded either
    assert chain.mempool_size == txs
    return err


async def test_a_list_whose_total_fits_but_fees_do_not_is_refused(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    rows = [(f"p{i}", a, FUNDS // 4) for i, a in enumerate(addresses(4))]  # exactly FUNDS
    await refused_up_front(chain, write_list(tmp_path / "l.csv", rows), treasury, url)


async def test_a_list_that_fits_to_the_satoshi_with_fees_is_paid(
    devnet: tuple[str, Devnet], tmp_path: Path
) -> None:
    """The fee estimate is an upper bound: a treasury holding exactly the amounts
    plus the estimate (in several coins) pays the whole list."""
    url, chain = devnet
    amounts = [3000, 1, 2500, 4000, 1700]
    fees = fee_estimate(len(amounts), 2, 1.0, 3)
    need = sum(amounts) + fees
    wallet = Wallet.create(tmp_path / "exact.json")
    for part in (need // 3, need // 3, need - 2 * (need // 3)):
        await fund(wallet, part, url)
    listed = write_list(
        tmp_path / "l.csv",
        [(f"p{i}", a, s) for i, (a, s) in enumerate(zip(addresses(5), amounts, strict=True))],
    )
    code, out, err = await send(listed, wallet.path, url, "--batch-size", "2")
    assert code == 0, out + err
    assert set((await times_paid(chain, ledger_of(listed))).values()) == {1}


async def test_coins_set_aside_or_held_by_a_gateway_payment_do_not_count(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    wallet = Wallet.open(treasury)
    coin = await fund(wallet, 60_000, url)
    wallet.set_aside_coins([coin.outpoint], "spent elsewhere, says a gateway")
    # A gateway payment in flight holds the first coin.
    wallet.prepare_payment(PrivateKey().public_key(), 500)
    assert spendable(treasury) == 0
    rows = [("p0", addresses(1)[0], 10_000)]
    await refused_up_front(chain, write_list(tmp_path / "l.csv", rows), treasury, url)


async def test_an_amount_of_every_coin_there_is_is_refused_before_anything(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    rows = [("whale", addresses(1)[0], 21_000_000 * 100_000_000)]
    await refused_up_front(chain, write_list(tmp_path / "l.csv", rows), treasury, url)
    # One satoshi more than exist, in one row or in the total: a bad list.
    for rows in (
        [("whale", addresses(1)[0], 21_000_000 * 100_000_000 + 1)],
        [("a", addresses(1)[0], 21_000_000 * 100_000_000), ("b", addresses(1)[0], 1)],
    ):
        code, _, err = await send(write_list(tmp_path / "m.csv", rows), treasury, url)
        no_traceback(err)
        assert code == 2 and "more than" in err, err


# ===== ids: what counts as the same payout ==============================================


@pytest.mark.parametrize(
    "twin",
    [unicodedata.normalize("NFD", "café"), "caf\u00e9\u200b", "\ufeffcaf\u00e9"],
    ids=["nfd", "zero-width-space", "bom"],
)
def test_ids_that_look_the_same_are_one_id(twin: str) -> None:
    a = addresses(1)[0]
    text = f"id,recipient,satoshis\ncaf\u00e9,{a},100\n{twin},{a},100\n"
    with pytest.raises(listfile.ListError) as caught:
        listfile.parse_list(text.encode())
    # Decomposed accents are the same id (NFC); invisible characters are refused.
    assert caught.value.problems[0].reason in ("duplicate-id", "bad-id")


async def test_a_list_resaved_in_another_unicode_form_is_not_paid_again(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    a = addresses(1)[0]
    listed = write_list(tmp_path / "l.csv", [("Zoë-Müller", a, 1000)])
    code, out, err = await send(listed, treasury, url)
    assert code == 0, out + err
    write_list(listed, [(unicodedata.normalize("NFD", "Zoë-Müller"), a, 1000)])
    code, out, err = await send(listed, treasury, url)
    assert (
        len(
            chain.unspent_by_script(
                listfile.parse_list(listed.read_bytes()).rows[0].recipient.script
            )
        )
        == 1
    )


async def test_ids_differing_in_case_and_one_recipient_twice_are_separate_payouts(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    """Documented: ids compare exactly, and one person may be on a list twice."""
    url, chain = devnet
    key = PrivateKey()
    identity = Wallet.open(treasury).identity_key  # the treasury paying itself: allowed
    listed = write_list(
        tmp_path / "l.csv",
        [
            ("P1", key.address(), 1000),
            ("p1", key.address(), 1000),
            ("self", identity, 700),
            ("self-again", identity.upper().replace("X", "x"), 700),
        ],
    )
    code, out, err = await send(listed, treasury, url)
    assert code == 0, out + err
    # P1 and p1 pay one address (its script is paid twice); each key row its own key.
    paid = await times_paid(chain, ledger_of(listed))
    assert paid == {"P1": 2, "p1": 2, "self": 1, "self-again": 1}, paid
    code, out, err = await send(listed, treasury, url)  # and still once each
    assert code == 0 and "4 paid before (skipped), 0 to pay" in out, out + err


# ===== the list file ===================================================================


def dry_list(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "odd.csv"
    path.write_bytes(data)
    return path


GOOD = "id,recipient,satoshis\np1,{a},100\np2,{a},200\n"


@pytest.mark.parametrize(
    ("encode", "ok"),
    [
        (lambda t: t.encode("utf-16"), False),
        (lambda t: t.encode("utf-16-le"), False),
        (lambda t: t.encode("utf-32"), False),
        (lambda t: t.encode("utf-8-sig"), True),
        (lambda t: t.replace("\n", "\r").encode(), True),
        (lambda t: t.replace("\n", "\r\n").encode(), True),
        (lambda t: t.replace("p1", "p\x001").encode(), False),
        (lambda t: t.replace("200", "200\x00").encode(), False),
        (lambda t: t.replace("p1,", '"p\n1",').encode(), False),
        (lambda t: t.replace("p1,", '"p1').encode(), False),
        (lambda t: t.encode("latin-1") + b"\xff", False),
        (lambda t: t.replace("p2", "p1").encode(), False),
        (lambda t: t.replace("p2", " p2").encode(), False),
        (lambda t: t.replace("200", "2e2").encode(), False),
        (lambda t: t.replace("200", "-200").encode(), False),
        (lambda t: t.replace("200", "\u0662\u0660\u0660").encode(), False),  # Arabic-Indic
        (lambda t: t.replace("200", "\uff10").encode(), False),  # fullwidth digit
    ],
    ids=[
        "utf16-bom",
        "utf16le",
        "utf32",
        "utf8-bom",
        "cr-only",
        "crlf",
        "nul-in-id",
        "nul-in-amount",
        "newline-in-quoted-id",
        "unclosed-quote",
        "latin1",
        "duplicate-id",
        "space-before-id",
        "exponent",
        "negative",
        "arabic-digits",
        "fullwidth-digit",
    ],
)
def test_odd_encodings_are_read_or_refused_by_line(
    tmp_path: Path, encode: Callable[[str], bytes], ok: bool
) -> None:
    a = addresses(1)[0]
    data = encode(GOOD.format(a=a))
    if ok:
        parsed = listfile.read_list(dry_list(tmp_path, data))
        assert [(r.id, r.satoshis) for r in parsed.rows] == [("p1", 100), ("p2", 200)]
        return
    with pytest.raises(listfile.ListError) as caught:
        listfile.read_list(dry_list(tmp_path, data))
    assert caught.value.count >= 1
    assert all(p.line is None or p.line >= 1 for p in caught.value.problems)


def test_bad_lists_and_options_get_clear_errors_from_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a person meets them: exit 2 (or argparse's 2), a `farebox:` line, no traceback,
    nothing recorded."""
    wallet = Wallet.create(tmp_path / "w.json").path
    main, test = PrivateKey().address(), PrivateKey().address(network=Network.TESTNET)
    good = write_list(tmp_path / "good.csv", [("p1", main, 100)])
    cases: list[tuple[list[str | Path], str]] = [
        ([dry_list(tmp_path, GOOD.format(a=main).encode("utf-16")), "--dry-run"], "not UTF-8"),
        ([write_list(tmp_path / "t.csv", [("p1", main, 100)]), "--network", "test", "--dry-run"],
         "mainnet address"),
        ([write_list(tmp_path / "m.csv", [("p1", test, 100)]), "--arc-url", "http://127.0.0.1:9"],
         "testnet address"),
        ([good, "--batch-size", "0", "--dry-run"], "must be 1 to 1000"),
        ([good, "--batch-size", "1001", "--dry-run"], "must be 1 to 1000"),
        ([good, "--batch-size", "abc", "--dry-run"], "not a whole number"),
        ([good], "--devnet-url"),
        ([tmp_path / "missing.csv", "--dry-run"], "cannot read it"),
        ([tmp_path, "--dry-run"], "cannot read it"),
    ]  # fmt: skip
    for args, said in cases:
        code, out, err = farebox_here(
            capsys, "payouts", "send", args[0], "--wallet", wallet, *args[1:]
        )
        assert code in (1, 2) and said in err, (args, code, out, err)
        assert not ledger_of(Path(args[0])).exists()
    code, out, err = farebox_here(
        capsys, "payouts", "send", good, "--wallet", tmp_path / "nope.json", "--dry-run"
    )
    assert code == 1 and "no wallet" in err
    # --ledger naming the treasury's own wallet file, or the list: refused, both untouched.
    before = wallet.read_bytes()
    for other in (wallet, good):
        code, out, err = farebox_here(
            capsys, "payouts", "send", good, "--wallet", wallet, "--ledger", other, "--dry-run"
        )
        assert code == 1 and "not a payout ledger" in err, err
    assert wallet.read_bytes() == before


# ===== the ledger ======================================================================


def test_status_and_show_on_missing_or_foreign_ledgers_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = write_list(tmp_path / "l.csv", [("p1", addresses(1)[0], 100)])
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    text = tmp_path / "notes.db"
    text.write_text("not a database at all\n" * 100)
    for where in (["--ledger", tmp_path / "none.db"], [listed], ["--ledger", foreign],
                  ["--ledger", text], ["--ledger", tmp_path]):  # fmt: skip
        for command in (["status"], ["status", "--format", "json"], ["show", "p1"]):
            code, _, err = farebox_here(capsys, "payouts", *command, *where)
            assert code == 1 and err.startswith("farebox: "), (command, where, err)


async def test_show_an_unknown_id_and_status_of_an_edited_result(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    """`show` of an id the ledger lacks says so; LIST.result.csv is output only:
    editing it (or filling it with garbage) changes nothing, and is rewritten."""
    url, chain = devnet
    listed = write_list(tmp_path / "l.csv", [("p1", addresses(1)[0], 100)])
    code, out, err = await send(listed, treasury, url)
    assert code == 0, out + err
    for unknown in ("P1", "' OR 1=1 --"):
        code, out, err = await farebox("payouts", "show", unknown, listed)
        no_traceback(err)
        assert code == 1 and "no payout" in err, (unknown, err)
    result = listfile.result_path(listed)
    result.write_text("id,recipient,satoshis,status,txid\r\np1,x,100,owed,\r\n\x00garbage\r\n")
    code, out, err = await send(listed, treasury, url)
    assert code == 0 and "0 to pay" in out, out + err
    (row,) = listfile.read_result(result)
    assert row.outcome.status == "seen"
    assert await times_paid(chain, ledger_of(listed)) == {"p1": 1}


async def test_a_damaged_ledger_is_a_clear_error(tmp_path: Path) -> None:
    listed = write_list(tmp_path / "l.csv", [("p1", addresses(1)[0], 100)])
    ledger = open_ledger(ledger_of(listed))
    await ledger.add([Payout(f"p{i}", "c", "1x", "76a9", 100, "memo " * 100) for i in range(200)])
    await ledger.close()
    size = ledger_of(listed).stat().st_size
    with ledger_of(listed).open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * (size - size // 2))
    wallet = Wallet.create(tmp_path / "w.json").path
    for args in (["status", listed], ["send", listed, "--wallet", wallet, "--dry-run"]):
        code, _, err = await farebox("payouts", *args)
        no_traceback(err)
        assert code == 1 and err.startswith("farebox: "), err


# The ledger schema as the first release of `payouts send` wrote it (commit 3a58abe,
# meta format "1"): the same format number the code claims today.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE payouts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, campaign TEXT NOT NULL,
    recipient TEXT NOT NULL, script TEXT NOT NULL,
    satoshis INTEGER NOT NULL CHECK (satoshis > 0), memo TEXT NOT NULL DEFAULT '',
    sender TEXT, prefix TEXT, suffix TEXT, status TEXT NOT NULL, txid TEXT, vout INTEGER,
    reason TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0, retry_of TEXT,
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX payouts_by_status ON payouts (status, seq);
CREATE INDEX payouts_by_txid ON payouts (txid);
CREATE TABLE batches (
    txid TEXT PRIMARY KEY, beef BLOB NOT NULL, inputs TEXT NOT NULL, fee INTEGER NOT NULL,
    satoshis INTEGER NOT NULL, outputs INTEGER NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', block_height INTEGER,
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX batches_by_status ON batches (status);
"""


def test_a_ledger_from_the_first_release_is_still_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = addresses(1)[0]
    listed = write_list(tmp_path / "l.csv", [("p1", address, 100)])
    script = listfile.parse_list(listed.read_bytes()).rows[0].recipient.script.hex()
    with sqlite3.connect(ledger_of(listed)) as db:
        db.executescript(FIRST_RELEASE_SCHEMA)
        db.execute(
            "INSERT INTO meta VALUES ('format', '1'), ('id', 'ledger:' || hex(randomblob(16)))"
        )
        db.execute(
            "INSERT INTO payouts (id, campaign, recipient, script, satoshis, status, created, "
            "updated) VALUES ('p1', 'list:l.csv', ?, ?, 100, 'owed', 1, 1)",
            (address, script),
        )
    code, out, err = farebox_here(capsys, "payouts", "status", listed)
    assert code == 0 and "owed" in out, (out, err)


async def test_a_ledger_in_a_missing_folder_is_a_clear_error(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url = devnet[0]
    listed = write_list(tmp_path / "l.csv", [("p1", addresses(1)[0], 100)])
    code, _, err = await send(listed, treasury, url, "--ledger", tmp_path / "no" / "l.db")
    no_traceback(err)
    assert code == 1 and err.startswith("farebox: "), err


async def test_an_unwritable_result_file_is_a_clear_error(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    listed = write_list(tmp_path / "l.csv", [("p1", addresses(1)[0], 100)])
    listfile.result_path(listed).mkdir()
    code, out, err = await send(listed, treasury, url)
    assert await times_paid(chain, ledger_of(listed)) == {"p1": 1}  # paid, whatever comes next
    no_traceback(err)
    assert "reconciliation" in out and code == 1, out + err


async def test_a_foreign_sqlite_file_is_not_turned_into_a_ledger(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url = devnet[0]
    listed = write_list(tmp_path / "l.csv", [("p1", addresses(1)[0], 100)])
    foreign = tmp_path / "census.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE citizens (name TEXT)")
    code, out, err = await send(listed, treasury, url, "--ledger", foreign, "--dry-run")
    assert code == 1 and "not a payout ledger" in err, out + err
    code, out, err = await send(listed, treasury, url, "--ledger", foreign)
    with sqlite3.connect(foreign) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"citizens"} and code == 1, (tables, out, err)


async def test_a_truncated_ledger_does_not_pay_the_list_again(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    listed = write_list(tmp_path / "l.csv", [("p1", addresses(1)[0], 1000)])
    code, out, err = await send(listed, treasury, url)
    assert code == 0, out + err
    script = bytes.fromhex((await recorded(ledger_of(listed)))["p1"].script)
    ledger_of(listed).write_bytes(b"")
    code, out, err = await send(listed, treasury, url)
    no_traceback(err)
    assert len(chain.unspent_by_script(script)) == 1, out + err


async def test_an_owed_payout_not_on_the_list_is_not_paid_silently(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    """An owed row struck out of the list (found to be fraud) is not paid by the
    next run: the run stops and names it."""
    url, chain = devnet
    good, bad = addresses(2)
    listed = write_list(tmp_path / "l.csv", [("ok-1", good, 1000), ("fraud-7", bad, 5000)])
    code, out, err = await send(listed, treasury, closed_port_url(), "--batch-size", "1")
    assert code == 1, out + err
    assert (await recorded(ledger_of(listed)))["fraud-7"].status == "owed"
    write_list(listed, [("ok-1", good, 1000)])  # the operator strikes the row out
    code, out, err = await send(listed, treasury, url, "--batch-size", "1")
    no_traceback(err)
    paid = await times_paid(chain, ledger_of(listed))
    assert code == 2 and "'fraud-7'" in err and "nothing was paid" in err, (out, err)
    assert paid["fraud-7"] == 0, paid


async def test_a_new_ledger_is_private_and_a_locked_one_is_refused(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    listed = write_list(tmp_path / "l.csv", [("p1", addresses(1)[0], 100)])
    waiting = chain.mempool_size
    holder = open_ledger(ledger_of(listed))  # another run pays from it
    try:
        code, out, err = await send(listed, treasury, url)
        no_traceback(err)
        assert code == 1 and "in use" in err, out + err
    finally:
        await holder.close()
    assert chain.mempool_size == waiting
    code, out, err = await send(listed, treasury, url)
    assert code == 0, out + err
    assert ledger_of(listed).stat().st_mode & 0o077 == 0
    assert listfile.result_path(listed).stat().st_mode & 0o077 == 0
