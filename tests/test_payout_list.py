"""Benefit lists (issue 15, point 3): the whole file is checked before anything
is paid, every bad row named by the line an editor shows; the result file is
written atomically.

Hypothesis feeds random text, random bytes and mangled good files: only a
ListError may come out. It also writes generated good lists in many CSV
spellings and reads them back to the same rows, lines included.
`FAREBOX_PROPERTY_EXAMPLES=2000 ./dev test tests/test_payout_list.py` runs a
longer search.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import unicodedata
from datetime import timedelta
from pathlib import Path

import pytest
from bsv import P2PKH, Network, PrivateKey, PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bsv.derivation import p2pkh_script
from gateway.payouts import listfile
from gateway.payouts.listfile import (
    MAX_SATOSHIS,
    ListError,
    Outcome,
    ResultRow,
    Row,
    parse_list,
    parse_result,
    read_list,
    read_result,
    render_result,
    result_path,
    result_rows,
    write_result,
)

EXAMPLES = int(os.environ.get("FAREBOX_PROPERTY_EXAMPLES", "200"))
KEY = PrivateKey(0x5EED1).public_key().hex()
MAIN = PrivateKey(0x5EED2).address()
TEST = PrivateKey(0x5EED3).address(network=Network.TESTNET)
HEADER = "id,recipient,satoshis,memo\n"
TXID = "ab" * 32


def _problems(data: str | bytes, **kwargs: object) -> list[tuple[int | None, str | None, str]]:
    with pytest.raises(ListError) as caught:
        parse_list(data, **kwargs)  # type: ignore[arg-type]
    return [(p.line, p.column, p.reason) for p in caught.value.problems]


def _only(data: str, **kwargs: object) -> tuple[int | None, str | None, str, str]:
    with pytest.raises(ListError) as caught:
        parse_list(data, **kwargs)  # type: ignore[arg-type]
    assert caught.value.count == 1, str(caught.value)
    p = caught.value.problems[0]
    return p.line, p.column, p.reason, p.message


# --- good files -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"id,recipient,satoshis,memo\na,{MAIN},500,rent\nb,{KEY},7,\n",
        f"id,recipient,satoshis,memo\r\na,{MAIN},500,rent\r\nb,{KEY},7,\r\n",
        f"id,recipient,satoshis,memo\ra,{MAIN},500,rent\rb,{KEY},7,\r",
        f"\ufeffid,recipient,satoshis,memo\na,{MAIN},500,rent\nb,{KEY},7,",
        f" MEMO ,Satoshis, RECIPIENT,ID\nrent,500,{MAIN},a\n,7,{KEY},b\n\n\n",
        f'"id","recipient","satoshis","memo"\n"a","{MAIN}","500","rent"\n"b","{KEY}","7",""\n',
        f"id,recipient,satoshis,memo\na,{MAIN},500,rent\n,,,\nb,{KEY.upper()},7,\n  \n",
        f"\n\nid,recipient,satoshis,memo\na,{MAIN},0000500,rent\nb,{KEY},7,\n",
    ],
)
def test_a_good_list_in_many_spellings(text: str) -> None:
    for data in (text, text.encode()):
        listed = parse_list(data, network="main")
        assert listed.count == 2
        assert listed.total == 507
        a, b = listed.rows
        assert (a.id, a.recipient.value, a.satoshis, a.memo) == ("a", MAIN, 500, "rent")
        assert (b.id, b.recipient.value, b.satoshis, b.memo) == ("b", KEY, 7, "")
        assert a.recipient.kind == "address" and a.recipient.network == "main"
        assert b.recipient.kind == "key" and b.recipient.network is None


def test_memo_is_optional_and_columns_come_in_any_order() -> None:
    listed = parse_list(f"satoshis,id,recipient\n1,x,{TEST}\n")
    assert listed.rows == (Row(2, "x", listed.rows[0].recipient, 1, ""),)
    assert listed.rows[0].recipient.network == "test"


def test_recipients_pay_the_p2pkh_script_of_the_address_or_key() -> None:
    a, k, t = parse_list(f"id,recipient,satoshis\n1,{MAIN},1\n2,{KEY},1\n3,{TEST},1\n").rows
    assert a.recipient.script == P2PKH().lock(MAIN).serialize()
    assert k.recipient.script == p2pkh_script(PublicKey(KEY))
    assert t.recipient.script == P2PKH().lock(TEST).serialize()


def test_lines_are_counted_as_an_editor_shows_them_across_quoted_line_breaks() -> None:
    text = (
        "id,recipient,satoshis,memo\r\n"
        f'a,{MAIN},1,"three\r\nline\nmemo"\r\n'
        "\r\n"
        f'b,{KEY},2,"two\rlines"\n'
        f"c,{KEY},3,\n"
    )
    assert [row.line for row in parse_list(text).rows] == [2, 6, 8]
    assert parse_list(text).rows[0].memo == "three\r\nline\nmemo"
    bad = text + f'd,{KEY},"x\ny",\n' + f"e,{KEY},0,\n"
    assert _problems(bad) == [(9, "satoshis", "bad-amount"), (11, "satoshis", "bad-amount")]


def test_the_id_may_be_128_characters_and_the_total_every_coin() -> None:
    half = MAX_SATOSHIS // 2
    listed = parse_list(f"id,recipient,satoshis\n{'x' * 128},{KEY},{half}\ny,{KEY},{half}\n")
    assert listed.total == MAX_SATOSHIS


def test_read_list_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "LIST.csv"
    path.write_bytes(f"\ufeffid,recipient,satoshis\r\n1,{MAIN},10\r\n".encode())
    assert read_list(path, network="main").total == 10
    with pytest.raises(ListError) as caught:
        read_list(tmp_path / "missing.csv")
    assert caught.value.problems[0].reason == "unreadable"
    assert str(caught.value).startswith(f"{tmp_path / 'missing.csv'}: 1 problem\n")


# --- bad rows, named by line and column ---------------------------------------


def _bad_checksum(address: str) -> str:
    last = "2" if address[-1] != "2" else "3"
    return address[:-1] + last


@pytest.mark.parametrize(
    ("recipient", "reason", "says"),
    [
        (_bad_checksum(MAIN), "bad-recipient", "checksum"),
        (_bad_checksum(TEST), "bad-recipient", "checksum"),
        ("02" + (5).to_bytes(32, "big").hex(), "bad-recipient", "not a point on the curve"),
        ("03" + "ff" * 32, "bad-recipient", "not a point on the curve"),
        (
            PrivateKey(9).public_key().serialize(compressed=False).hex(),
            "bad-recipient",
            "uncompressed",
        ),
        (KEY[:-2], "bad-recipient", "66 hex digits (02 or 03, then 64), not 64"),
        (KEY + "00", "bad-recipient", "not 68"),
        ("04" + KEY[2:], "bad-recipient", "uncompressed"),
        ("", "bad-recipient", "empty"),
        (f" {MAIN}", "bad-recipient", "spaces"),
        ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "bad-recipient", "not a BSV address"),
        ("bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a", "bad-recipient", "not a BSV"),
        (MAIN + "\n", "bad-recipient", "spaces"),
        ("1" * 34, "bad-recipient", "checksum"),
    ],
)
def test_a_bad_recipient_is_named(recipient: str, reason: str, says: str) -> None:
    text = f'id,recipient,satoshis\nok,{KEY},1\nbad,"{recipient}",5\n'
    line, column, why, message = _only(text)
    assert (line, column, why) == (3, "recipient", reason)
    assert says in message


@pytest.mark.parametrize(
    ("network", "address", "refused"),
    [("main", TEST, True), ("test", MAIN, True), ("main", MAIN, False), ("test", TEST, False)],
)
def test_an_address_of_the_other_network_is_refused_when_a_network_is_given(
    network: str, address: str, refused: bool
) -> None:
    text = f"id,recipient,satoshis\n1,{address},5\n2,{KEY},5\n"
    if refused:
        line, column, reason, message = _only(text, network=network)
        assert (line, column, reason) == (2, "recipient", "wrong-network")
        assert f"pays on {network}net" in message
    else:
        assert parse_list(text, network=network).count == 2
    assert parse_list(text).count == 2  # no network: both are accepted
    with pytest.raises(ValueError):
        parse_list(text, network="mainnet")


@pytest.mark.parametrize(
    ("amount", "says"),
    [
        ("0", "at least 1 satoshi"),
        ("000", "at least 1 satoshi"),
        ("-5", "no sign"),
        ("+5", "no sign"),
        ("1.5", "not a whole number"),
        ("10.0", "not a whole number"),
        ("1e3", "no exponent"),
        ("1E+3", "no exponent"),
        ("1,000", "thousands separators"),
        ("1 000", "thousands separators"),
        ("1_000", "thousands separators"),
        (" 10", "spaces"),
        ("10 ", "spaces"),
        ("", "empty"),
        ("2100000000000001", "more than 2100000000000000"),
        ("9" * 5000, "more than"),
        ("0x10", "not a whole number"),
        ("\u0661\u0660", "not a whole number"),  # Arabic-Indic digits: not 0-9
        ("ten", "not a whole number"),
        ("NaN", "not a whole number"),
    ],
)
def test_an_amount_that_is_not_a_positive_whole_number_is_named(amount: str, says: str) -> None:
    line, column, reason, message = _only(
        f'id,recipient,satoshis\nok,{KEY},1\nbad,{KEY},"{amount}"\n'
    )
    assert (line, column, reason) == (3, "satoshis", "bad-amount")
    assert says in message


@pytest.mark.parametrize(
    ("row_id", "says"),
    [("", "empty"), ("x" * 129, "more than 128"), (" a", "spaces"), ("a\nb", "control")],
)
def test_a_bad_id_is_named(row_id: str, says: str) -> None:
    line, column, reason, message = _only(f'id,recipient,satoshis\n"{row_id}",{KEY},1\n')
    assert (line, column, reason) == (2, "id", "bad-id")
    assert says in message


def test_a_duplicate_id_names_both_lines_even_on_a_bad_row() -> None:
    text = f"id,recipient,satoshis\na,{KEY},1\nb,{KEY},1\na,{KEY},2\na,{KEY},0\nA,{KEY},1\n"
    with pytest.raises(ListError) as caught:
        parse_list(text)
    found = [(p.line, p.column, p.reason, p.message) for p in caught.value.problems]
    assert found == [
        (4, "id", "duplicate-id", "'a' is also the id on line 2"),
        (5, "satoshis", "bad-amount", "'0': a payout is at least 1 satoshi"),
        (5, "id", "duplicate-id", "'a' is also the id on line 2"),
    ]


def test_a_memo_too_long_is_named() -> None:
    assert _only(f"id,recipient,satoshis,memo\n1,{KEY},1,{'m' * 1001}\n")[:3] == (
        2,
        "memo",
        "bad-memo",
    )


def test_rows_with_too_many_or_too_few_fields_are_named() -> None:
    text = f"id,recipient,satoshis\n1,{KEY},1,extra\n2,{KEY}\n3,{KEY},1\n"
    assert _problems(text) == [(2, None, "field-count"), (3, None, "field-count")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("id,recipient", [(1, "satoshis", "missing-column")]),
        ("id,recipient,satoshis,amount", [(1, "amount", "unknown-column")]),
        ("id,recipient,satoshis,", [(1, "column 4", "unknown-column")]),
        ("id,recipient,satoshis, ID", [(1, "id", "duplicate-column")]),
        (
            "recipient,satoshis,memo,memo",
            [(1, "memo", "duplicate-column"), (1, "id", "missing-column")],
        ),
        ("a1,1BoatSLRHtKNngkdXEeobR76b53LETtpyT,500", [(1, None, "no-header")]),
    ],
)
def test_a_bad_header_names_each_column(header: str, expected: list[tuple]) -> None:
    width = header.count(",") + 1
    row = ",".join([f"x{i}" for i in range(width)])
    assert _problems(f"{header}\n{row}\n")[: len(expected)] == expected


def test_with_a_column_missing_the_other_columns_are_still_checked() -> None:
    assert _problems(f"id,recipient,amount\na,{KEY},1\nb,nobody,1\na,{KEY},1\n") == [
        (1, "amount", "unknown-column"),
        (1, "satoshis", "missing-column"),
        (3, "recipient", "bad-recipient"),
        (4, "id", "duplicate-id"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [(1, None, "empty")]),
        ("\n\r\n  \n,,\n", [(1, None, "empty")]),
        (b"\xef\xbb\xbf", [(1, None, "empty")]),
        ("id,recipient,satoshis\n", [(1, None, "no-rows")]),
        ("\nid,recipient,satoshis\n\n,,\n", [(2, None, "no-rows")]),
    ],
)
def test_an_empty_list_or_a_header_alone_pays_no_one(
    text: str | bytes, expected: list[tuple]
) -> None:
    assert _problems(text) == expected


def test_csv_syntax_errors_are_named_where_they_are() -> None:
    text = f'id,recipient,satoshis\n1,{KEY},"5"x\n2,{KEY},5\n3,{KEY},"5\n4,{KEY},5\n'
    assert _problems(text) == [(2, None, "csv-syntax"), (4, None, "csv-syntax")]


def test_text_that_is_not_utf8_is_named_by_line() -> None:
    data = f"id,recipient,satoshis\n1,{KEY},5\n2,{KEY},5\n".encode() + b"3,caf\xe9,5\n"
    assert _problems(data) == [(4, None, "not-utf8")]
    assert _problems(("id,recipient,satoshis\n1,x,5\n").encode("utf-16")) == [(1, None, "not-utf8")]


def test_every_problem_is_reported_at_once_the_message_shows_the_first_ones() -> None:
    rows = [f"r{i},{KEY if i % 2 else 'nobody'},{i % 3}" for i in range(60)]
    with pytest.raises(ListError) as caught:
        parse_list("id,recipient,satoshis\n" + "\n".join(rows) + "\n")
    error = caught.value
    bad_recipients = 30
    bad_amounts = 20
    assert error.count == len(error.problems) == bad_recipients + bad_amounts
    lines = str(error).splitlines()
    assert lines[0] == "LIST.csv: 50 problems"
    assert (
        lines[1]
        == "LIST.csv:2: recipient: 'nobody' is not a BSV address (1..., or m.../n... on testnet) nor a compressed public key in hex (02 or 03 and 64 hex digits)"
    )
    assert lines[2] == "LIST.csv:2: satoshis: '0': a payout is at least 1 satoshi"
    assert len(lines) == 1 + listfile.SHOWN + 1
    assert lines[-1] == "... and 30 more"


def test_a_list_too_large_or_too_long_is_refused_plainly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(listfile, "MAX_ROWS", 3)
    rows = "".join(f"{i},{KEY},1\n" for i in range(5))
    assert _problems("id,recipient,satoshis\n" + rows) == [(5, None, "too-many-rows")]
    assert parse_list("id,recipient,satoshis\n" + rows[: rows.index("3,")]).count == 3
    monkeypatch.setattr(listfile, "MAX_BYTES", 100)
    path = tmp_path / "LIST.csv"
    path.write_text("id,recipient,satoshis\n" + "x" * 100)
    with pytest.raises(ListError) as caught:
        read_list(path)
    assert [p.reason for p in caught.value.problems] == ["too-large"]
    assert "larger than 100 bytes" in str(caught.value)


def test_a_list_of_more_than_every_coin_is_refused() -> None:
    text = f"id,recipient,satoshis\na,{KEY},{MAX_SATOSHIS}\nb,{KEY},1\n"
    assert _problems(text) == [(None, None, "list-total")]


# --- properties ---------------------------------------------------------------

GOOD = f'id,recipient,satoshis,memo\r\na,{MAIN},500,"x, ""y"""\r\nb,{KEY},7,\r\nc,{TEST},1,m\r\n'


@st.composite
def mangled(draw: st.DrawFn) -> str:
    text = GOOD
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = (
                text[:at]
                + draw(st.text(alphabet=',"\r\n \ufeff0x-.e', min_size=1, max_size=3))
                + text[at:]
            )
        else:
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
    return text


@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2))
@given(data=st.one_of(st.text(max_size=300), st.binary(max_size=300), mangled()))
def test_any_input_is_a_list_or_a_list_error(data: str | bytes) -> None:
    try:
        listed = parse_list(data)
    except ListError as error:
        assert error.count >= len(error.problems) >= 1
        assert all(p.reason and p.message for p in error.problems)
        assert str(error)
    else:
        assert listed.count == len(listed.rows) >= 1
        assert listed.total == sum(row.satoshis for row in listed.rows)
        assert len({row.id for row in listed.rows}) == listed.count


def _recipient(kind: int, secret: int) -> str:
    key = PrivateKey(secret)
    if kind == 0:
        return key.address()
    if kind == 1:
        return key.address(network=Network.TESTNET)
    return key.public_key().hex()


# Ids as the list keeps them: no control or invisible characters, in NFC.
ids = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Cf")), min_size=1, max_size=128
).filter(lambda s: s == s.strip() and s == unicodedata.normalize("NFC", s))
rows = st.lists(
    st.tuples(
        ids,
        st.builds(_recipient, st.integers(0, 2), st.integers(1, 2**200)),
        st.integers(1, MAX_SATOSHIS // 20),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    ),
    min_size=1,
    max_size=20,
    unique_by=lambda row: row[0],
)


def _breaks(text: str) -> int:
    return len(re.findall(r"\r\n|\r|\n", text))


@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2))
@given(
    written=rows,
    order=st.permutations(["id", "recipient", "satoshis", "memo"]),
    memo=st.booleans(),
    spelling=st.lists(
        st.sampled_from(["lower", "upper", "title", "spaced"]), min_size=4, max_size=4
    ),
    style=st.sampled_from(
        [("\r\n", csv.QUOTE_MINIMAL), ("\r\n", csv.QUOTE_ALL), ("\n", csv.QUOTE_ALL)]
    ),
    bom=st.booleans(),
    upper_keys=st.booleans(),
    trailing=st.sampled_from(["", "\r\n", "\n\n", ",,,\r\n"]),
)
def test_a_written_list_reads_back_to_the_same_rows(
    written: list[tuple[str, str, int, str]],
    order: list[str],
    memo: bool,
    spelling: list[str],
    style: tuple[str, int],
    bom: bool,
    upper_keys: bool,
    trailing: str,
) -> None:
    columns = [c for c in order if memo or c != "memo"]
    spell = {
        "lower": str.lower,
        "upper": str.upper,
        "title": str.title,
        "spaced": lambda s: f" {s} ",
    }
    terminator, quoting = style

    def record(fields: list[object]) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator=terminator, quoting=quoting).writerow(fields)
        return out.getvalue()

    text = record([spell[how](c) for how, c in zip(spelling, columns, strict=False)])
    expected = []
    for row_id, recipient, satoshis, note in written:
        given_recipient = recipient.upper() if upper_keys and len(recipient) == 66 else recipient
        values = {"id": row_id, "recipient": given_recipient, "satoshis": satoshis, "memo": note}
        expected.append((_breaks(text) + 1, row_id, recipient, satoshis, note if memo else ""))
        text += record([values[c] for c in columns])
    text += trailing
    data = ("\ufeff" if bom else "") + text
    listed = parse_list(data.encode())
    got = [(r.line, r.id, r.recipient.value, r.satoshis, r.memo) for r in listed.rows]
    assert got == expected
    assert listed.total == sum(row[2] for row in written)


# --- LIST.result.csv ------------------------------------------------------------


def test_result_rows_follow_the_list_and_default_to_owed() -> None:
    listed = parse_list(f"id,recipient,satoshis\na,{MAIN},5\nb,{KEY.upper()},7\nc,{TEST},9\n")
    outcomes = {"b": Outcome("sent", TXID), "c": Outcome("failed"), "zz": Outcome("mined", TXID)}
    assert result_rows(listed.rows, outcomes) == (
        ResultRow("a", MAIN, 5, Outcome("owed")),
        ResultRow("b", KEY, 7, Outcome("sent", TXID)),
        ResultRow("c", TEST, 9, Outcome("failed")),
    )


@pytest.mark.parametrize(
    ("status", "txid"),
    [
        ("paid", None),
        ("sent", None),
        ("mined", None),
        ("owed", TXID),
        ("sent", "AB" * 32),
        ("sent", "ab"),
    ],
)
def test_an_outcome_is_consistent(status: str, txid: str | None) -> None:
    with pytest.raises(ValueError):
        Outcome(status, txid)


def test_the_result_file_round_trips_and_is_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = result_path(tmp_path / "LIST.csv")
    assert path == tmp_path / "LIST.result.csv"
    assert result_path("benefits.txt").name == "benefits.txt.result.csv"
    first = (
        ResultRow("a", MAIN, 5, Outcome("owed")),
        ResultRow('b, "odd"\nid', KEY, 7, Outcome("seen", TXID)),
        ResultRow("c", TEST, 9, Outcome("skipped")),
        ResultRow("d", TEST, 9, Outcome("failed", TXID)),
    )
    write_result(path, first)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it says who was paid
    assert read_result(path) == first
    assert path.read_bytes().startswith(b"id,recipient,satoshis,status,txid\r\n")
    assert parse_result(render_result(first)) == first

    path.chmod(0o640)
    second = (ResultRow("a", MAIN, 5, Outcome("mined", TXID)),)
    write_result(path, second)
    assert read_result(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LIST.result.csv"]

    def crash(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(listfile.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_result(path, first)
    assert read_result(path) == second  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LIST.result.csv"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("id,recipient,satoshis\n", "bad-header"),
        ("", "empty"),
        (f"id,recipient,satoshis,status,txid\na,{KEY},5,paid,\n", "bad-outcome"),
        (f"id,recipient,satoshis,status,txid\na,{KEY},5,sent,\n", "bad-outcome"),
        (f"id,recipient,satoshis,status,txid\na,{KEY},-5,owed,\n", "bad-amount"),
        (f"id,recipient,satoshis,status,txid\na,{KEY},5,owed\n", "field-count"),
    ],
)
def test_a_bad_result_file_is_a_list_error(text: str, reason: str) -> None:
    with pytest.raises(ListError) as caught:
        parse_result(text)
    assert [p.reason for p in caught.value.problems] == [reason]
