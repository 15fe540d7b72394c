"""Benefit payouts taken in by a real BRC-100 wallet: @bsv/wallet-toolbox on the devnet.

`farebox payouts send` pays a list from a treasury wallet (a Farebox wallet
file); a row whose recipient is a public key is paid BRC-29, to a key derived
from it. `farebox payouts show ID` prints what the recipient's wallet needs
to take it in: the arguments of BRC-100's `internalizeAction`. Here the
recipient is the toolbox's own `Wallet` (tests/interop/toolbox.mjs, driven by
tests/toolbox_support.py, as tests/test_wallet_toolbox.py drives it): it takes
each payout in and its balance grows by exactly the payout's amount, once,
however often the same payout is shown to it, and whether or not the payout
was mined in between. A participation reward (a reward route, tests/test_rewards.py)
is the same: paid by the gateway's payout engine, read at the URL the answer gave
(X-Farebox-Payout), taken in once, and another resident's output in the same
transaction refused.

What the toolbox does, as found here (wallet-toolbox in tests/interop):
- it checks the remittance: a derivation suffix or an output index that is not
  the BRC-29 key's is refused ("must be locked by script conforming to BRC-29");
- the same payout internalized again is accepted (`accepted: true`) and adds
  nothing;
- a payout mined after it was signed is taken in from the BEEF `show` prints,
  which carries no merkle path for it (the ledger keeps the bytes it signed):
  the toolbox does not ask for one, and its monitor fetches the proof later;
- two payouts in one transaction are taken in one `internalizeAction` each (the
  second merges into the action the first made; listActions keeps the first
  call's amount as the action's, the balance counts both).

Needs node and tests/interop/node_modules, as tests/test_wallet_toolbox.py does
(`require_node()` skips without node, installs the packages when missing).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bsv import PrivateKey, PublicKey

from gateway.bsv.derivation import invoice_number, p2pkh_script
from gateway.chain.arc import ArcBroadcaster
from gateway.client import Wallet, fund
from gateway.client.beef import transaction_from_beef
from gateway.devnet import start
from gateway.payouts.runner import PayoutRunner
from tests.survey_upstream import running_survey
from tests.test_rewards import city, credential, respond
from tests.test_rewards import fetch as read_payout
from tests.toolbox_support import Toolbox, ToolboxError, require_node, toolbox

REPO = Path(__file__).resolve().parent.parent
FIRST, SECOND, ELSEWHERE = 1_234, 4_321, 777
NOT_BRC29 = "The paymentRemittance parameter must be locked by script conforming to BRC-29"


@pytest.fixture(scope="session")
def node() -> str:
    return require_node()


@pytest.fixture
async def devnet() -> AsyncIterator[tuple[str, Any]]:
    runner, chain = await start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", chain
    await runner.cleanup()


@pytest.fixture
async def treasury(tmp_path: Path, devnet: tuple[str, Any]) -> Wallet:
    url, _ = devnet
    wallet = Wallet.create(tmp_path / "treasury.json")
    await fund(wallet, 100_000, url)
    return wallet


async def farebox(*args: str) -> tuple[int, str, str]:
    """`farebox ARGS` as a user runs it (the devnet answers from this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


def write_list(path: Path, rows: list[tuple[str, str, int, str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("id", "recipient", "satoshis", "memo"), *rows])
    return path


async def send(payout_list: Path, treasury: Wallet, url: str) -> str:
    code, out, err = await farebox(
        "payouts", "send", str(payout_list), "--wallet", str(treasury.path),
        "--devnet-url", url, "--batch-size", "2",
    )  # fmt: skip
    assert code == 0, out + err
    return out


async def show(payout_id: str, payout_list: Path) -> dict[str, Any]:
    code, out, err = await farebox("payouts", "show", payout_id, str(payout_list))
    assert code == 0, err
    [line] = out.splitlines()  # one JSON line
    return json.loads(line)


def receive_args(shown: dict[str, Any]) -> dict[str, Any]:
    """The toolbox's `receive` op's arguments from what `payouts show` printed."""
    action = shown["internalizeAction"]
    [output] = action["outputs"]
    remittance = output["paymentRemittance"]
    return {
        "beef": base64.b64encode(bytes(action["tx"])).decode(),
        "vout": output["outputIndex"],
        "prefix": remittance["derivationPrefix"],
        "suffix": remittance["derivationSuffix"],
        "sender": remittance["senderIdentityKey"],
        "description": action["description"],
    }


async def take_in(wallet: Toolbox, shown: dict[str, Any], *, grows_by: int) -> int:
    """`internalizeAction` of a shown payout; the balance grows by `grows_by`."""
    before = await wallet.balance()
    taken = await wallet.call("receive", **receive_args(shown))
    assert taken["accepted"] is True, taken
    assert (taken["balanceBefore"], taken["balance"]) == (before, before + grows_by), taken
    assert await wallet.balance() == before + grows_by
    return taken["balance"]


def check_shown(shown: dict[str, Any], treasury: Wallet, satoshis: int) -> None:
    """What `show` prints for a BRC-29 payout is internalizeAction's arguments
    (BRC-100's JSON shape) for the transaction the ledger holds."""
    action = shown["internalizeAction"]
    assert shown["satoshis"] == satoshis and shown["status"] in ("seen", "mined"), shown
    beef = bytes(action["tx"])
    assert beef[:4] == b"\x01\x01\x01\x01", "not Atomic BEEF (BRC-95)"
    assert beef[4:36][::-1].hex() == shown["txid"]
    assert base64.b64decode(shown["beef"]) == beef
    [output] = action["outputs"]
    assert output["outputIndex"] == shown["vout"]
    assert output["protocol"] == "wallet payment"
    assert output["paymentRemittance"]["senderIdentityKey"] == treasury.identity_key
    assert 5 <= len(action["description"].encode()) <= 50  # BRC-100's bounds
    assert action["labels"] == ["farebox payout"]


async def test_a_toolbox_wallet_takes_in_its_payouts(
    node: str, tmp_path: Path, devnet: tuple[str, Any], treasury: Wallet
) -> None:
    url, chain = devnet
    someone = PrivateKey()
    async with toolbox(node, url) as wallet:
        me = (await wallet.call("identity"))["identityKey"]
        assert me == wallet.identity_key
        assert await wallet.balance() == 0
        payout_list = write_list(
            tmp_path / "LIST.csv",
            [
                ("rent-1", me, FIRST, "rent"),
                ("rent-2", me, SECOND, "rent, again"),
                ("other", someone.address(), ELSEWHERE, "not the toolbox's"),
            ],
        )
        out = await send(payout_list, treasury, url)
        assert f"paid in all:    3 of 3, {FIRST + SECOND + ELSEWHERE} of" in out, out

        first, second = await show("rent-1", payout_list), await show("rent-2", payout_list)
        check_shown(first, treasury, FIRST)
        check_shown(second, treasury, SECOND)
        # Batches of two: both of the toolbox's payouts in one transaction.
        assert first["txid"] == second["txid"] and {first["vout"], second["vout"]} == {0, 1}
        # A payout to an address needs nothing taken in: its key spends it.
        elsewhere = await show("other", payout_list)
        assert elsewhere["internalizeAction"] is None and elsewhere["satoshis"] == ELSEWHERE
        paid = chain.get_transaction(elsewhere["txid"])
        assert paid is not None
        out_to = paid.outputs[elsewhere["vout"]]
        assert (out_to.satoshis, out_to.locking_script.serialize()) == (
            ELSEWHERE,
            p2pkh_script(someone.public_key()),
        )

        # The toolbox checks the remittance: a suffix not the payout's is not its key.
        wrong = {**receive_args(first), "suffix": base64.b64encode(b"not the suffix").decode()}
        with pytest.raises(ToolboxError) as refused:
            await wallet.call("receive", **wrong)
        assert NOT_BRC29 in str(refused.value)
        assert refused.value.answer["code"] == "WERR_INVALID_PARAMETER"
        # Nor is the other output (the toolbox's too, but under the other derivation).
        with pytest.raises(ToolboxError, match=NOT_BRC29):
            await wallet.call("receive", **{**receive_args(first), "vout": second["vout"]})
        assert await wallet.balance() == 0

        # Each payout taken in grows the balance by exactly its amount.
        await take_in(wallet, first, grows_by=FIRST)
        total = await take_in(wallet, second, grows_by=SECOND)
        assert total == FIRST + SECOND
        [action] = [a for a in await wallet.call("actions") if a["txid"] == first["txid"]]
        assert "received" in action["labels"] and action["status"] == "unproven"

        # Its monitor broadcasts it (the devnet has it already), then proves it mined.
        sent = await wallet.call("sendWaiting")
        assert first["txid"] in sent["posted"], sent
        chain.mine()
        await wallet.call("checkForProofs")
        [action] = [a for a in await wallet.call("actions") if a["txid"] == first["txid"]]
        assert action["status"] == "completed"
        assert await wallet.balance() == FIRST + SECOND


async def test_the_same_payout_taken_in_twice_counts_once(
    node: str, tmp_path: Path, devnet: tuple[str, Any], treasury: Wallet
) -> None:
    url, _ = devnet
    async with toolbox(node, url) as wallet:
        me = wallet.identity_key
        # Batches of two: rent-1 with the address row, rent-2 alone in the next
        # transaction (which spends the first one's change).
        payout_list = write_list(
            tmp_path / "LIST.csv",
            [
                ("rent-1", me, FIRST, ""),
                ("other", PrivateKey().address(), ELSEWHERE, ""),
                ("rent-2", me, SECOND, ""),
            ],
        )
        await send(payout_list, treasury, url)
        first, second = await show("rent-1", payout_list), await show("rent-2", payout_list)
        assert first["txid"] != second["txid"]

        # The later transaction first, then its parent: each counted once.
        await take_in(wallet, second, grows_by=SECOND)
        await take_in(wallet, second, grows_by=0)  # accepted again, nothing added
        await take_in(wallet, first, grows_by=FIRST)
        await take_in(wallet, first, grows_by=0)
        await take_in(wallet, second, grows_by=0)
        assert await wallet.balance() == FIRST + SECOND
        # `show` again prints the same payout, and it still counts once.
        again = await show("rent-1", payout_list)
        assert again["internalizeAction"] == first["internalizeAction"]
        await take_in(wallet, again, grows_by=0)

        mine = [a for a in await wallet.call("actions") if "received" in a["labels"]]
        assert sorted((a["txid"], a["satoshis"]) for a in mine) == sorted(
            [(first["txid"], FIRST), (second["txid"], SECOND)]
        )
        assert await wallet.balance() == FIRST + SECOND


async def test_a_payout_mined_before_it_is_taken_in(
    node: str, tmp_path: Path, devnet: tuple[str, Any], treasury: Wallet
) -> None:
    url, chain = devnet
    async with toolbox(node, url) as wallet:
        me = wallet.identity_key
        payout_list = write_list(
            tmp_path / "LIST.csv",
            [
                ("rent-1", me, FIRST, ""),
                ("rent-2", me, SECOND, ""),
                ("other", PrivateKey().address(), ELSEWHERE, ""),
            ],
        )
        await send(payout_list, treasury, url)
        txid = (await show("rent-1", payout_list))["txid"]
        chain.mine()
        status = chain.status(txid)
        assert status is not None and str(status.status) == "MINED"
        # Sending the list again pays nothing and learns that it was mined.
        out = await send(payout_list, treasury, url)
        assert "3 paid before (skipped), 0 to pay" in out, out
        first, second = await show("rent-1", payout_list), await show("rent-2", payout_list)
        assert first["status"] == second["status"] == "mined"
        check_shown(first, treasury, FIRST)
        # The BEEF is the one signed before the block: no merkle path for the
        # payout itself. The toolbox takes it in all the same.
        beef = bytes(first["internalizeAction"]["tx"])
        assert transaction_from_beef(beef, txid).merkle_path is None
        await take_in(wallet, first, grows_by=FIRST)
        await take_in(wallet, second, grows_by=SECOND)
        await take_in(wallet, first, grows_by=0)
        # Its monitor broadcasts it (stored unsent, as any unproven payment),
        # the devnet answers that it is mined, and the proof follows.
        sent = await wallet.call("sendWaiting")
        assert txid in sent["posted"], sent
        await wallet.call("checkForProofs")
        [action] = [a for a in await wallet.call("actions") if a["txid"] == txid]
        assert action["status"] == "completed"
        assert await wallet.balance() == FIRST + SECOND


async def test_a_toolbox_wallet_takes_in_its_participation_reward(
    node: str, gateway, tmp_path: Path, devnet: tuple[str, Any], treasury: Wallet
) -> None:
    """A reward route's payout (tests/test_rewards.py's city: 500 satoshis a
    resident, once per credential subject), paid by the payout engine and read
    at the URL the answer gave, is what the toolbox's internalizeAction takes."""
    url, chain = devnet
    broadcaster = ArcBroadcaster(url)
    neighbour = PrivateKey()  # another resident, whose wallet is not the toolbox
    try:
        async with running_survey() as survey, toolbox(node, url) as wallet:
            c = await city(gateway, survey, tmp_path)
            me = (await wallet.call("identity"))["identityKey"]
            status, body, headers = await respond(c.base, token=credential("r-toolbox"), to=me)
            assert status == 201 and body == {"recorded": 1}, body
            assert headers["X-Farebox-Reward"] == "500"
            mine_url = headers["X-Farebox-Payout"]
            # The answer sent again, before the payout is paid: the same payout.
            status, _, again = await respond(c.base, token=credential("r-toolbox"), to=me)
            assert status == 201 and again["X-Farebox-Payout"] == mine_url
            status, _, theirs = await respond(
                c.base, token=credential("r-neighbour"), to=neighbour.public_key().hex()
            )
            assert status == 201 and theirs["X-Farebox-Payout"] != mine_url
            theirs_url = theirs["X-Farebox-Payout"]
            assert [p.status for p in await c.ledger.payouts()] == ["owed", "owed"]

            # Both owed before the engine looks: one batch, one transaction.
            engine = PayoutRunner(c.ledger, treasury.path, broadcaster, interval=0, batch_size=10)
            report = await engine.tick()
            assert report is not None and report.payouts == 2, report
            assert report.campaigns == {"park-2027": [2, 1000]}
            assert (await engine.tick()).payouts == 0  # nothing more to pay
            status, shown = await read_payout(mine_url)
            assert status == 200, shown
            status, other = await read_payout(theirs_url)
            assert status == 200, other
            assert (shown["status"], shown["satoshis"], shown["recipient"]) == ("seen", 500, me)
            assert other["txid"] == shown["txid"] and {shown["vout"], other["vout"]} == {0, 1}
            action = shown["internalizeAction"]
            beef = bytes(action["tx"])
            assert beef[:4] == b"\x01\x01\x01\x01", "not Atomic BEEF (BRC-95)"
            assert beef[4:36][::-1].hex() == shown["txid"]
            assert other["internalizeAction"]["tx"] == action["tx"]
            [output] = action["outputs"]
            assert (output["outputIndex"], output["protocol"]) == (shown["vout"], "wallet payment")
            # The neighbour's output is theirs: their key (BRC-29) spends it.
            remittance = other["internalizeAction"]["outputs"][0]["paymentRemittance"]
            theirs_key = neighbour.derive_child(
                PublicKey(remittance["senderIdentityKey"]),
                invoice_number(remittance["derivationPrefix"], remittance["derivationSuffix"]),
            )
            unspent = chain.unspent_by_script(p2pkh_script(theirs_key.public_key()))
            assert [(t, v, s) for t, v, s, _ in unspent] == [(other["txid"], other["vout"], 500)]

            # The toolbox refuses the neighbour's payout: not its BRC-29 key.
            assert await wallet.balance() == 0
            with pytest.raises(ToolboxError) as refused:
                await wallet.call("receive", **receive_args(other))
            assert NOT_BRC29 in str(refused.value)
            assert refused.value.answer["code"] == "WERR_INVALID_PARAMETER"
            assert await wallet.balance() == 0

            # Its own: the balance grows by exactly the reward, once.
            assert await take_in(wallet, shown, grows_by=500) == 500
            await take_in(wallet, shown, grows_by=0)
            # A resubmission after it was paid shows the same payout; still once.
            status, _, later = await respond(
                c.base, token=credential("r-toolbox"), to=me, answer="still more trees"
            )
            assert status == 201 and later["X-Farebox-Payout"] == mine_url
            assert later["X-Farebox-Reward"] == "500"
            status, shown_again = await read_payout(mine_url)
            assert shown_again["internalizeAction"] == action
            await take_in(wallet, shown_again, grows_by=0)
            assert len(await c.ledger.payouts()) == 2
            assert len(survey.responses) == 4

            # Mined, the proof follows; the balance stays the reward.
            sent = await wallet.call("sendWaiting")
            assert shown["txid"] in sent["posted"], sent
            chain.mine()
            await wallet.call("checkForProofs")
            received = [a for a in await wallet.call("actions") if "received" in a["labels"]]
            assert [(a["txid"], a["satoshis"], a["status"]) for a in received] == [
                (shown["txid"], 500, "completed")
            ]
            assert await wallet.balance() == 500
    finally:
        await broadcaster.close()
