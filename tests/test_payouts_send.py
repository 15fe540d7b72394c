"""`farebox payouts send | status | show`, run as a user runs them.

A real devnet in this process and a funded treasury wallet file; every
command is a `farebox` process. What each run paid is checked on the devnet
itself: every row's txid, its output at the row's vout (the recipient's
script and the row's satoshis), nothing more, nothing twice.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import re
import socket
import stat
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bsv import P2PKH, PrivateKey, PublicKey

from gateway.bsv.beef import read_beef
from gateway.client import Wallet, fund
from gateway.devnet import Devnet, start

REPO = Path(__file__).resolve().parent.parent
FUNDS = 100_000
BRC29 = "2-3241645161d8"


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
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@dataclass(frozen=True)
class Person:
    """A row of a list, and the private key of whoever it pays."""

    id: str
    key: PrivateKey
    kind: str  # "address" or "key"
    satoshis: int

    @property
    def recipient(self) -> str:
        return self.key.address() if self.kind == "address" else self.key.public_key().hex()


def people(amounts: list[int], *, start_at: int = 0) -> list[Person]:
    """Rows paying `amounts`, recipients alternately an address and a public key."""
    return [
        Person(f"p{start_at + i}", PrivateKey(), ("address", "key")[(start_at + i) % 2], sats)
        for i, sats in enumerate(amounts)
    ]


def write_list(path: Path, rows: list[Person]) -> Path:
    lines = ["id,recipient,satoshis,memo"]
    lines += [f"{p.id},{p.recipient},{p.satoshis},benefit for {p.id}" for p in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_result(list_path: Path) -> list[dict[str, str]]:
    text = list_path.with_name(list_path.stem + ".result.csv").read_text()
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    assert header == ["id", "recipient", "satoshis", "status", "txid"], text
    return [dict(zip(header, row, strict=True)) for row in reader if row]


def ledger_of(list_path: Path) -> Path:
    return list_path.with_name(list_path.stem + ".payouts.db")


def tx_count(chain: Devnet) -> int:
    """Every transaction the devnet holds: mined (coinbases too) and waiting."""
    mined = sum(len(chain.block(h).txids) for h in range(chain.height + 1))
    return mined + chain.mempool_size


def all_txids(chain: Devnet) -> set[str]:
    """Every transaction the devnet holds, once what waits is mined."""
    if chain.mempool_size:
        chain.mine()
    return {txid for h in range(chain.height + 1) for txid in chain.block(h).txids}


def balance(treasury: Path) -> tuple[int, int]:
    """The treasury's spendable and reserved satoshis, read afresh from its file."""
    b = Wallet.open(treasury).balance()
    return b.satoshis, b.pending_satoshis


def fee_of(chain: Devnet, txid: str) -> int:
    tx = chain.get_transaction(txid)
    assert tx is not None, f"{txid} is not on the devnet"
    spent = 0
    for tx_in in tx.inputs:
        out = chain.get_output(tx_in.source_txid, tx_in.source_output_index)
        assert out is not None
        spent += out.satoshis
    return spent - sum(o.satoshis for o in tx.outputs)


def treasury_scripts(treasury: Path) -> set[bytes]:
    wallet = Wallet.open(treasury)
    return {
        P2PKH().lock(wallet.key(i).public_key().hash160()).serialize() for i in wallet.issued_keys()
    }


def paid_script(person: Person, shown: dict) -> bytes:
    """The script that pays `person`: P2PKH to the address, or to the BRC-29 key
    the recipient derives from the remittance `farebox payouts show` gives."""
    if person.kind == "address":
        assert shown.get("internalizeAction") is None, shown
        return P2PKH().lock(person.recipient).serialize()
    action = shown["internalizeAction"]
    (output,) = action["outputs"]
    assert output["outputIndex"] == shown["vout"]
    assert output["protocol"] == "wallet payment"
    remit = output["paymentRemittance"]
    child = person.key.derive_child(
        PublicKey(remit["senderIdentityKey"]),
        f"{BRC29}-{remit['derivationPrefix']} {remit['derivationSuffix']}",
    )
    return P2PKH().lock(child.public_key().hash160()).serialize()


async def show_all(list_path: Path, rows: list[Person]) -> dict[str, dict]:
    """Each row's payout as the ledger holds it (`payouts status --format json`),
    with `farebox payouts show`'s remittance for the rows paying a key."""
    code, out, err = await farebox("payouts", "status", list_path, "--format", "json")
    assert code == 0, err
    shown = {record["id"]: record for record in map(json.loads, out.splitlines())}
    for p in rows:
        if p.kind != "key":
            continue
        code, out, err = await farebox("payouts", "show", p.id, list_path)
        assert code == 0, err
        one = json.loads(out)
        assert {k: one[k] for k in shown[p.id]} == shown[p.id]
        shown[p.id] = one
    return shown


async def check_paid(
    chain: Devnet, treasury: Path, list_path: Path, rows: list[Person]
) -> dict[str, dict]:
    """Every row of the list is paid once, as the result file and the devnet say:
    its txid holds the row's script and satoshis at its vout, and every output of
    those transactions is a row's or the treasury's change. Returns `show` by id."""
    result = {r["id"]: r for r in read_result(list_path)}
    assert list(result) == [p.id for p in rows]
    shown = await show_all(list_path, rows)
    expected: dict[str, dict[int, tuple[bytes, int]]] = {}
    for p in rows:
        r = result[p.id]
        assert r["recipient"] == p.recipient and r["satoshis"] == str(p.satoshis)
        assert r["status"] in ("seen", "mined"), r
        assert re.fullmatch(r"[0-9a-f]{64}", r["txid"]), r
        s = shown[p.id]
        assert (s["status"], s["txid"], s["satoshis"]) == (r["status"], r["txid"], p.satoshis)
        assert isinstance(s["vout"], int)
        script = paid_script(p, s)
        out = chain.get_output(r["txid"], s["vout"])
        assert out is not None, f"{p.id}: no output {r['txid']}:{s['vout']} on the devnet"
        assert (out.locking_script.serialize(), out.satoshis) == (script, p.satoshis), p.id
        expected.setdefault(r["txid"], {})[s["vout"]] = (script, p.satoshis)
        if s.get("internalizeAction"):  # the BEEF a wallet takes it in with is that transaction
            beef = bytes(s["internalizeAction"]["tx"])
            assert base64.b64decode(s["beef"]) == beef
            parsed = read_beef(beef)
            assert parsed.atomic and parsed.subject.txid() == r["txid"]
    change = treasury_scripts(treasury)
    for txid, outputs in expected.items():
        tx = chain.get_transaction(txid)
        assert tx is not None
        for vout, out in enumerate(tx.outputs):
            if vout in outputs:
                continue
            # Anything but the rows' outputs is change back to the treasury.
            assert out.locking_script.serialize() in change, f"{txid}:{vout} pays a stranger"
    return shown


def assert_each_paid_once(chain: Devnet, before: set[str], scripts: dict[str, bytes]) -> None:
    """Across every transaction the devnet took since `before`, each row's
    script is paid exactly once."""
    paid: Counter[bytes] = Counter()
    for txid in all_txids(chain) - before:
        tx = chain.get_transaction(txid)
        assert tx is not None
        for out in tx.outputs:
            paid[out.locking_script.serialize()] += 1
    for pid, script in scripts.items():
        assert paid[script] == 1, f"{pid} paid {paid[script]} times"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----- fixtures ---------------------------------------------------------------------


@pytest.fixture
async def devnet() -> AsyncIterator[tuple[str, Devnet]]:
    runner, chain = await start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", chain
    await runner.cleanup()


@pytest.fixture
async def treasury(devnet: tuple[str, Devnet], tmp_path: Path) -> Path:
    url, _ = devnet
    wallet = Wallet.create(tmp_path / "treasury.json")
    await fund(wallet, FUNDS, url)
    return wallet.path


SEVEN = [1000, 1500, 2000, 2500, 3000, 3500, 4000]  # 17,500 satoshis


# ----- send ---------------------------------------------------------------------------


async def test_send_pays_every_row_once_and_a_rerun_pays_nothing(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    rows = people(SEVEN)
    assert {p.kind for p in rows} == {"address", "key"}
    total = sum(SEVEN)
    listed = write_list(tmp_path / "benefits.csv", rows)
    count_before = tx_count(chain)

    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url, "--batch-size", "3"
    )
    assert code == 0, out + err
    assert f"7 rows, {total} satoshis; 0 paid before (skipped), 7 to pay: {total} satoshis" in out
    assert "(3 transactions)" in out.splitlines()[0]
    assert f"{FUNDS} satoshis spendable" in out
    for line in ("paid 3 of 7 payouts (1 transaction)", "paid 6 of 7 payouts (2 transactions)",
                 "paid 7 of 7 payouts (3 transactions)"):  # fmt: skip
        assert line in out, out
    fees_said = re.search(
        r"paid this run:\s+7 payouts, (\d+) satoshis, 3 transactions, fees (\d+)", out
    )
    assert fees_said is not None, out
    assert int(fees_said.group(1)) == total
    assert "skipped:        0" in out
    assert f"paid in all:    7 of 7, {total} of {total} satoshis" in out
    assert "failed:         0" in out and "not paid yet:   0" in out
    assert "transactions:   3" in out
    assert f"result: {listed.with_name('benefits.result.csv')}" in out
    assert f"ledger: {ledger_of(listed)}" in out
    # The ledger and the result say who was paid: the owner's eyes only.
    assert stat.S_IMODE(ledger_of(listed).stat().st_mode) == 0o600
    assert stat.S_IMODE(listed.with_name("benefits.result.csv").stat().st_mode) == 0o600

    await check_paid(chain, treasury, listed, rows)
    result = read_result(listed)
    txids = sorted({r["txid"] for r in result})
    assert len(txids) == 3 and all(t in out for t in txids)
    assert [sum(1 for r in result if r["txid"] == t) for t in txids].count(3) == 2
    assert sum(int(r["satoshis"]) for r in result) == total
    assert tx_count(chain) == count_before + 3
    fees = sum(fee_of(chain, t) for t in txids)
    assert fees == int(fees_said.group(2))
    assert balance(treasury) == (FUNDS - total - fees, 0)

    # 2. The same command again: everything is skipped, nothing is sent.
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url, "--batch-size", "3"
    )
    assert code == 0, out + err
    assert "7 paid before (skipped), 0 to pay: 0 satoshis" in out
    assert "skipped:        7 paid by an earlier run" in out
    assert "paid this run:  0 payouts, 0 satoshis, 0 transactions" in out
    assert f"paid in all:    7 of 7, {total} of {total} satoshis" in out
    assert tx_count(chain) == count_before + 3
    assert balance(treasury) == (FUNDS - total - fees, 0)
    assert read_result(listed) == result

    # Mined since: a run that pays nothing still learns it, and says so.
    chain.mine()
    count_mined = tx_count(chain)
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url
    )
    assert code == 0, out + err
    assert "paid this run:  0 payouts" in out
    assert tx_count(chain) == count_mined
    assert [r["status"] for r in read_result(listed)] == ["mined"] * 7
    assert [r["txid"] for r in read_result(listed)] == [r["txid"] for r in result]
    assert balance(treasury) == (FUNDS - total - fees, 0)


async def test_rows_appended_later_are_the_only_ones_paid(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    first, later = people([1100, 1200, 1300, 1400]), people([2100, 2200, 2300], start_at=4)
    listed = write_list(tmp_path / "march.csv", first)
    before = all_txids(chain)
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url, "--batch-size", "3"
    )
    assert code == 0, out + err
    old = {r["id"]: r["txid"] for r in read_result(listed)}
    spendable, _ = balance(treasury)
    count = tx_count(chain)

    write_list(listed, first + later)
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url, "--batch-size", "3"
    )
    assert code == 0, out + err
    assert "7 rows, 11600 satoshis; 4 paid before (skipped), 3 to pay: 6600 satoshis" in out
    assert "paid this run:  3 payouts, 6600 satoshis, 1 transaction" in out
    assert "skipped:        4 paid by an earlier run" in out
    assert "paid in all:    7 of 7, 11600 of 11600 satoshis" in out
    assert tx_count(chain) == count + 1
    result = read_result(listed)
    assert {r["id"]: r["txid"] for r in result[:4]} == old  # the old rows untouched
    (new_txid,) = {r["txid"] for r in result[4:]}
    assert new_txid not in old.values()
    assert balance(treasury) == (spendable - 6600 - fee_of(chain, new_txid), 0)
    shown = await check_paid(chain, treasury, listed, first + later)
    scripts = {p.id: paid_script(p, shown[p.id]) for p in first + later}
    assert_each_paid_once(chain, before, scripts)


async def test_the_same_list_under_another_name_is_not_paid_again(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    """The ids are the treasury's: a list renamed, copied or moved (its own
    ledger is new) is refused, not paid a second time; given its ledger, it
    goes on where it stopped."""
    url, chain = devnet
    rows = people([1500, 2500])
    listed = write_list(tmp_path / "winter.csv", rows)
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url
    )
    assert code == 0, out + err
    count, spendable = tx_count(chain), balance(treasury)
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    for copy in (tmp_path / "winter-final.csv", elsewhere / "winter.csv"):
        copy.write_bytes(listed.read_bytes())
        code, out, err = await farebox(
            "payouts", "send", copy, "--wallet", treasury, "--devnet-url", url
        )
        assert code == 1 and "recorded 2 of these ids in another ledger" in err, out + err
        assert f"--ledger {ledger_of(listed).resolve()}" in err
        assert not ledger_of(copy).exists() or "0 paid before" not in out
    code, out, err = await farebox(
        "payouts", "send", tmp_path / "winter-final.csv", "--wallet", treasury,
        "--devnet-url", url, "--ledger", ledger_of(listed),
    )  # fmt: skip
    assert code == 0 and "2 paid before (skipped), 0 to pay" in out, out + err
    assert (tx_count(chain), balance(treasury)) == (count, spendable)


async def test_coins_a_restarted_devnet_never_had_are_set_aside_before_paying(
    treasury: Path, tmp_path: Path
) -> None:
    """The treasury was funded on a devnet that is gone (the demo restarted): its
    coins are set aside before the coverage check, so the list is refused for
    what can really be spent, then paid from coins the new chain has."""
    runner, chain = await start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        listed = write_list(tmp_path / "after-restart.csv", people([1200, 800]))
        code, out, err = await farebox(
            "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url, "--dry-run"
        )
        assert code == 1, out + err
        assert "1 coin set aside: not unspent on" in out and "devnet was restarted" in out
        assert "it holds 0" in err
        await fund(Wallet.open(treasury), 5_000, url)
        code, out, err = await farebox(
            "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url
        )
        assert code == 0 and "paid in all:    2 of 2" in out, out + err
        first = read_result(listed)[0]  # an address row: paid P2PKH on the new chain
        assert len(chain.unspent_by_script(P2PKH().lock(first["recipient"]).serialize())) == 1
    finally:
        await runner.cleanup()


async def test_a_missing_ledger_is_refused_until_forgotten_and_failed_rows_are_cancelled(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, _ = devnet
    old = write_list(tmp_path / "march.csv", people([1000]))
    code, out, err = await farebox(
        "payouts", "send", old, "--wallet", treasury, "--devnet-url", url
    )
    assert code == 0, out + err
    gone = ledger_of(old)
    gone.rename(tmp_path / "archived.db")  # the folder tidied away, say
    new = write_list(tmp_path / "april.csv", people([2000], start_at=5))
    code, out, err = await farebox(
        "payouts", "send", new, "--wallet", treasury, "--devnet-url", url
    )
    assert code == 1 and "which is missing" in err and "farebox payouts forget" in err, err
    code, out, err = await farebox("payouts", "forget", gone.resolve(), "--wallet", treasury)
    assert code == 0 and "no longer checks" in out, out + err
    code, out, err = await farebox(
        "payouts", "send", new, "--wallet", treasury, "--devnet-url", url
    )
    assert code == 0, out + err
    # cancel: only failed payouts; a paid one is named and left alone.
    paid_id = people([1000])[0].id
    code, out, err = await farebox(
        "payouts", "cancel", paid_id, "nope", "--ledger", tmp_path / "archived.db",
        "--reason", "checked",
    )  # fmt: skip
    assert code == 1 and "cancelled 0 payouts" in out, out + err
    assert f"{paid_id}: seen" in out or f"{paid_id}: mined" in out
    assert "nope: not in the ledger" in out
    code, out, err = await farebox(
        "payouts", "cancel", paid_id, "--list", tmp_path / "nowhere.csv", "--reason", "x"
    )
    assert code == 1 and "no such ledger" in err, out + err


async def test_dry_run_says_what_it_would_pay_and_pays_nothing(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    listed = write_list(tmp_path / "benefits.csv", people(SEVEN))
    count = tx_count(chain)
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--batch-size", "3", "--dry-run"
    )
    assert code == 0, out + err
    said = re.search(
        r"7 rows, 17500 satoshis; 0 paid before \(skipped\), 7 to pay: 17500 satoshis "
        r"\+ at most (\d+) in fees \(3 transactions\)",
        out,
    )
    assert said is not None and int(said.group(1)) > 0, out
    assert "dry run: nothing was recorded or paid" in out
    assert not ledger_of(listed).exists()
    assert not listed.with_name("benefits.result.csv").exists()
    assert tx_count(chain) == count and balance(treasury) == (FUNDS, 0)

    # With a devnet given too, a dry run still sends nothing.
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url, "--dry-run"
    )
    assert code == 0 and "dry run: nothing was recorded or paid" in out, out + err
    assert not ledger_of(listed).exists()
    assert tx_count(chain) == count and balance(treasury) == (FUNDS, 0)


async def test_bad_rows_are_all_named_by_line_and_nothing_is_paid(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    good = people([1000, 1000])
    listed = tmp_path / "bad.csv"
    listed.write_text(
        "id,recipient,satoshis\n"  # line 1
        f"a,{good[0].recipient},1000\n"  # 2: good
        "b,1NotAnAddressAtAll0000000000000,1000\n"  # 3: bad recipient
        f"c,{good[1].recipient},1.5\n"  # 4: a point
        f"d,{good[0].recipient},0\n"  # 5: nothing
        f"e,{good[1].recipient},-3\n"  # 6: a sign
        f"a,{good[1].recipient},700\n"  # 7: the id of line 2 again
        f"f,{good[1].recipient},900\n"  # 8: good
    )
    count = tx_count(chain)
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url
    )
    assert code == 2, out + err
    assert f"{listed}: 5 problems" in err
    for line, column, words in (
        (3, "recipient", "is not a BSV address"),
        (4, "satoshis", "not a whole number"),
        (5, "satoshis", "at least 1 satoshi"),
        (6, "satoshis", "no sign"),
        (7, "id", "is also the id on line 2"),
    ):
        assert re.search(rf"{re.escape(str(listed))}:{line}: {column}: .*{words}", err), (line, err)
    assert f"{listed}:2:" not in err and f"{listed}:8:" not in err
    assert "nothing was paid" in err
    assert not ledger_of(listed).exists()
    assert not listed.with_name("bad.result.csv").exists()
    assert tx_count(chain) == count and balance(treasury) == (FUNDS, 0)


async def test_a_treasury_too_small_is_refused_before_anything_is_sent(
    devnet: tuple[str, Devnet], tmp_path: Path
) -> None:
    url, chain = devnet
    small = Wallet.create(tmp_path / "small.json")
    await fund(small, 5_000, url)
    listed = write_list(tmp_path / "benefits.csv", people(SEVEN))
    count = tx_count(chain)
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", small.path, "--devnet-url", url, "--batch-size", "3"
    )
    assert code == 1, out + err
    said = re.search(
        r"the treasury cannot cover the list: it needs (\d+) satoshis "
        r"\(17500 \+ fees (\d+)\), it holds 5000; nothing was paid",
        err,
    )
    assert said is not None, err
    assert int(said.group(1)) == 17500 + int(said.group(2))
    assert not ledger_of(listed).exists()
    assert not listed.with_name("benefits.result.csv").exists()
    assert tx_count(chain) == count and balance(small.path) == (5_000, 0)


async def test_a_row_changed_after_it_was_paid_is_refused(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    rows = people([1000, 2000, 3000])
    listed = write_list(tmp_path / "benefits.csv", rows)
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url
    )
    assert code == 0, out + err
    paid = read_result(listed)
    spendable = balance(treasury)
    count = tx_count(chain)

    changed = [rows[0], Person(rows[1].id, rows[1].key, rows[1].kind, 2500), rows[2]]
    write_list(listed, [*changed, *people([700], start_at=3)])  # and a new row besides
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url
    )
    assert code == 2, out + err
    assert "1 row differs from what was recorded" in err
    assert (
        f"line 3: id 'p1' was recorded for {rows[1].recipient}, 2000 satoshis (seen); "
        f"the list now says {rows[1].recipient}, 2500"
    ) in err
    assert "nothing was paid: give a changed row a new id" in err
    assert tx_count(chain) == count and balance(treasury) == spendable
    assert read_result(listed) == paid  # the result of the paid run stands
    code, out, _ = await farebox("payouts", "status", listed, "--format", "csv")
    assert code == 0 and "p3" not in out  # the new row was not even recorded


# ----- status and show ------------------------------------------------------------------


async def test_status_lists_payouts_by_state_and_show_prints_one(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, _ = devnet
    rows = people([1000, 2000, 3000, 4000])
    listed = write_list(tmp_path / "benefits.csv", rows)
    code, out, err = await farebox("payouts", "status", listed)
    assert code == 1 and "no such ledger" in err, out + err
    assert not ledger_of(listed).exists()  # asking made none

    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url, "--batch-size", "3"
    )
    assert code == 0, out + err
    result = {r["id"]: r for r in read_result(listed)}

    code, out, err = await farebox("payouts", "status", listed)
    assert code == 0, err
    assert re.search(r"^seen\s+4 payouts\s+10000 satoshis$", out, re.M), out
    assert "\nseen:\n" in out
    for p in rows:
        assert re.search(
            rf"^  {p.id}\s+{p.satoshis} {p.recipient}  {result[p.id]['txid']}$", out, re.M
        )

    code, out, err = await farebox(
        "payouts", "status", "--ledger", ledger_of(listed), "--format", "csv"
    )
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["id", "recipient", "satoshis", "status", "txid", "reason"]
    assert [
        (r["id"], r["recipient"], int(r["satoshis"]), r["status"], r["txid"]) for r in table
    ] == [(p.id, p.recipient, p.satoshis, "seen", result[p.id]["txid"]) for p in rows]

    code, out, err = await farebox("payouts", "status", listed, "--format", "json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["status"], r["txid"], r["memo"]) for r in records] == [
        (p.id, "seen", result[p.id]["txid"], f"benefit for {p.id}") for p in rows
    ]
    assert [r["vout"] for r in records] == [0, 1, 2, 0]

    code, out, err = await farebox(
        "payouts", "status", listed, "--state", "owed", "--format", "json"
    )
    assert code == 0 and out == "", out + err
    code, out, err = await farebox(
        "payouts", "status", listed, "--state", "seen", "--format", "csv"
    )
    assert code == 0 and len(list(csv.DictReader(io.StringIO(out)))) == 4, out + err

    # show: one payout as JSON; a key's payout carries its remittance.
    key_row = next(p for p in rows if p.kind == "key")
    code, out, err = await farebox("payouts", "show", key_row.id, listed)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["id"] == key_row.id and shown["recipient"] == key_row.recipient
    remit = shown["internalizeAction"]["outputs"][0]["paymentRemittance"]
    assert remit["senderIdentityKey"] == Wallet.open(treasury).identity_key
    assert set(remit) == {"derivationPrefix", "derivationSuffix", "senderIdentityKey"}
    # An address's payout needs no remittance: the address's own key spends it.
    address_row = next(p for p in rows if p.kind == "address")
    code, out, err = await farebox("payouts", "show", address_row.id, listed)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["internalizeAction"] is None and shown["txid"] == result[address_row.id]["txid"]
    assert read_beef(base64.b64decode(shown["beef"])).subject.txid() == shown["txid"]
    code, out, err = await farebox("payouts", "show", "nobody", listed)
    assert code == 1 and "no payout 'nobody'" in err, out + err


# ----- runs at once, and the chain away -------------------------------------------------


async def test_two_sends_at_once_pay_every_row_exactly_once(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, chain = devnet
    rows = people(SEVEN)
    listed = write_list(tmp_path / "benefits.csv", rows)
    before = all_txids(chain)
    args = (
        "payouts",
        "send",
        listed,
        "--wallet",
        treasury,
        "--devnet-url",
        url,
        "--batch-size",
        "2",
    )
    runs = await asyncio.gather(farebox(*args), farebox(*args))
    codes = sorted(code for code, _, _ in runs)
    assert 0 in codes, runs
    for code, out, err in runs:
        if code == 0:
            continue
        assert code == 1 and "is in use" in err, (code, out, err)
    paid_now = [int(m) for _, out, _ in runs for m in re.findall(r"paid this run:\s+(\d+)", out)]
    assert sum(paid_now) == 7, runs
    shown = await check_paid(chain, treasury, listed, rows)
    assert_each_paid_once(chain, before, {p.id: paid_script(p, shown[p.id]) for p in rows})
    assert balance(treasury)[1] == 0


async def test_an_unreachable_chain_leaves_one_batch_signed_and_a_rerun_sends_it(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    """All the rows in one batch: signed while the chain is away, then sent as it is."""
    url, chain = devnet
    rows = people([1000, 2000, 3000])
    listed = write_list(tmp_path / "benefits.csv", rows)
    before = all_txids(chain)
    count = tx_count(chain)
    away = f"http://127.0.0.1:{free_port()}"
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", away
    )
    assert code == 1, out + err
    assert "stopped: the chain could not be reached" in err and "run the same command again" in err
    assert "not paid yet:   3" in out
    assert tx_count(chain) == count
    (signed,) = {r["txid"] for r in read_result(listed)}
    assert [r["status"] for r in read_result(listed)] == ["signed"] * 3

    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url
    )
    assert code == 0, out + err
    assert "paid in all:    3 of 3, 6000 of 6000 satoshis" in out
    assert {r["txid"] for r in read_result(listed)} == {signed}  # the same transaction
    shown = await check_paid(chain, treasury, listed, rows)
    assert_each_paid_once(chain, before, {p.id: paid_script(p, shown[p.id]) for p in rows})
    assert balance(treasury) == (FUNDS - 6000 - fee_of(chain, signed), 0)


async def test_an_unreachable_chain_loses_nothing_and_a_rerun_pays_everything_once(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    """Several batches: the first is signed while the chain is away, the rest stay
    owed. Topped up or not (the next test: the signed batch's change counts), the
    rerun sends the signed batch as it is and pays the rest, each row once."""
    url, chain = devnet
    rows = people(SEVEN)
    listed = write_list(tmp_path / "benefits.csv", rows)
    before = all_txids(chain)
    count = tx_count(chain)
    away = f"http://127.0.0.1:{free_port()}"
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", away, "--batch-size", "3"
    )
    assert code == 1, out + err
    assert "stopped: the chain could not be reached" in err
    assert "paid in all:    0 of 7" in out and "not paid yet:   7" in out
    assert tx_count(chain) == count
    # Nothing lost: every row is recorded, in the one signed batch or owed.
    result = read_result(listed)
    assert [(r["id"], r["status"]) for r in result] == [
        (p.id, "signed" if i < 3 else "owed") for i, p in enumerate(rows)
    ]
    (signed,) = {r["txid"] for r in result[:3]}
    assert all(r["txid"] == "" for r in result[3:])
    code, out, err = await farebox(
        "payouts", "status", listed, "--state", "owed", "--format", "json"
    )
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["p3", "p4", "p5", "p6"]
    code, out, err = await farebox("payouts", "status", listed)
    assert code == 0, err
    assert re.search(r"^owed\s+4 payouts\s+13000 satoshis$", out, re.M), out
    assert re.search(r"^signed\s+3 payouts\s+4500 satoshis$", out, re.M), out
    assert re.search(rf"^  p0\s+1000 \S+  {signed}$", out, re.M), out

    await fund(Wallet.open(treasury), 50_000, url)
    code, out, err = await farebox(
        "payouts", "send", listed, "--wallet", treasury, "--devnet-url", url, "--batch-size", "3"
    )
    assert code == 0, out + err
    assert f"paid in all:    7 of 7, {sum(SEVEN)} of {sum(SEVEN)} satoshis" in out
    after = read_result(listed)
    assert [r["txid"] for r in after[:3]] == [signed] * 3  # the batch signed in the outage
    txids = {r["txid"] for r in after}
    assert len(txids) == 3
    shown = await check_paid(chain, treasury, listed, rows)
    assert_each_paid_once(chain, before, {p.id: paid_script(p, shown[p.id]) for p in rows})
    fees = sum(fee_of(chain, t) for t in txids)
    assert balance(treasury) == (FUNDS + 50_000 - sum(SEVEN) - fees, 0)


async def test_a_rerun_after_an_outage_is_not_refused_for_coins_its_signed_batch_holds(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, _ = devnet
    listed = write_list(tmp_path / "benefits.csv", people(SEVEN))
    away = f"http://127.0.0.1:{free_port()}"
    args = ("payouts", "send", listed, "--wallet", treasury, "--batch-size", "3")
    code, out, err = await farebox(*args, "--devnet-url", away)
    assert code == 1 and "the chain could not be reached" in err, out + err
    # The treasury (100,000 satoshis) covers the list (17,500) many times over.
    code, out, err = await farebox(*args, "--devnet-url", url)
    assert "the treasury cannot cover the list" not in err, err
    assert code == 0, out + err
    assert [r["status"] for r in read_result(listed)] == ["seen"] * 7


async def test_the_reconciliation_after_an_outage_counts_each_row_once(
    devnet: tuple[str, Devnet], treasury: Path, tmp_path: Path
) -> None:
    url, _ = devnet
    listed = write_list(tmp_path / "benefits.csv", people([1000, 2000, 3000, 4000]))
    away = f"http://127.0.0.1:{free_port()}"
    args = ("payouts", "send", listed, "--wallet", treasury, "--batch-size", "2")
    code, out, err = await farebox(*args, "--devnet-url", away)
    assert code == 1, out + err
    await fund(Wallet.open(treasury), 50_000, url)  # around the bug above
    code, out, err = await farebox(*args, "--devnet-url", url)
    assert code == 0, out + err
    this_run = re.search(r"paid this run:\s+(\d+) payouts", out)
    skipped = re.search(r"skipped:\s+(\d+) paid by an earlier run", out)
    assert this_run is not None and skipped is not None, out
    assert (int(this_run.group(1)), int(skipped.group(1))) == (4, 0), out
    for done, of in re.findall(r"paid (\d+) of (\d+) payouts", out):
        assert int(done) <= int(of), out
