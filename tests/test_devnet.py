"""The devnet: a real in-memory chain checked with bsv-sdk, and its HTTP API on a real port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from bsv import (
    P2PKH,
    MerklePath,
    PrivateKey,
    Transaction,
    TransactionInput,
    TransactionOutput,
)
from bsv.hash import hash256
from bsv.transaction.beef import parse_beef_ex
from bsv.utils import Writer

from gateway.devnet import Devnet, Rejection, TxStatus, start
from gateway.devnet.blocks import REGTEST_BITS
from gateway.devnet.merkle import SingleTxMerklePath


def spend(
    parent: Transaction,
    vout: int,
    key: PrivateKey,
    pay: list[tuple[PrivateKey, int]],
    *,
    fee: int = 200,
) -> Transaction:
    """A signed P2PKH spend of parent:vout paying `pay`, leaving at least `fee`."""
    available = parent.outputs[vout].satoshis
    outputs = [TransactionOutput(P2PKH().lock(k.address()), sats) for k, sats in pay]
    tx = Transaction(
        [
            TransactionInput(
                source_transaction=parent,
                source_output_index=vout,
                unlocking_script_template=P2PKH().unlock(key),
            )
        ],
        outputs,
    )
    assert sum(o.satoshis for o in outputs) + fee <= available
    tx.sign()
    return tx


def split(parent: Transaction, vout: int, key: PrivateKey, n: int) -> Transaction:
    """Spend parent:vout into n equal outputs back to `key`."""
    each = (parent.outputs[vout].satoshis - 1000) // n
    return spend(parent, vout, key, [(key, each)] * n, fee=0)


@pytest.fixture
def devnet() -> Devnet:
    return Devnet()


@pytest.fixture
def alice() -> PrivateKey:
    return PrivateKey()


@pytest.fixture
def bob() -> PrivateKey:
    return PrivateKey()


# ----- the chain --------------------------------------------------------------


async def test_faucet_spend_submit_mine(devnet: Devnet, alice: PrivateKey, bob: PrivateKey):
    funded = devnet.faucet(alice.address(), 50_000)
    assert devnet.status(funded.txid()).status == TxStatus.MINED
    assert funded.outputs[0].satoshis == 50_000
    # The faucet hands out a proven parent: its BEEF stands alone.
    parent = Transaction.from_beef(funded.to_beef())
    assert await parent.merkle_path.verify(parent.txid(), devnet)

    tx = spend(parent, 0, alice, [(bob, 40_000), (alice, 9_000)])
    seen = devnet.submit(tx)
    assert seen.status == TxStatus.SEEN_ON_NETWORK and seen.txid == tx.txid()
    assert devnet.mempool_size == 1
    assert not devnet.is_unspent(parent.txid(), 0)
    assert devnet.is_unspent(tx.txid(), 0)
    # Unconfirmed, the tx still verifies through its proven parent.
    assert await tx.verify(devnet)

    (block,) = devnet.mine()
    mined = devnet.status(tx.txid())
    assert mined.status == TxStatus.MINED
    assert (mined.block_height, mined.block_hash) == (block.height, block.hash)
    assert devnet.mempool_size == 0
    path = devnet.merkle_path(tx.txid())
    root = path.compute_root(tx.txid())
    assert root == block.merkle_root == devnet.merkle_root(block.height)
    assert await devnet.is_valid_root_for_height(root, block.height)
    assert await path.verify(tx.txid(), devnet)
    assert await devnet.current_height() == block.height == devnet.height


async def test_faucet_accepts_pubkeys(devnet: Devnet, alice: PrivateKey):
    for recipient in (alice.public_key(), alice.public_key().hex()):
        funded = devnet.faucet(recipient, 1_000)
        assert funded.outputs[0].locking_script == P2PKH().lock(alice.address())
    with pytest.raises(ValueError):
        devnet.faucet(alice.address()[:-1] + "x", 1_000)  # checksum
    with pytest.raises(ValueError):
        devnet.faucet(alice.address(), 0)


def test_headers_link_and_hash(devnet: Devnet, alice: PrivateKey):
    devnet.faucet(alice.address(), 10_000)
    devnet.mine(3)
    target = (REGTEST_BITS & 0xFFFFFF) << (8 * ((REGTEST_BITS >> 24) - 3))
    previous = None
    for height in range(devnet.height + 1):
        header = devnet.header(height)
        block = devnet.block(height)
        assert len(header) == 80
        assert block.hash == hash256(header)[::-1].hex()
        assert int.from_bytes(hash256(header), "little") <= target  # regtest proof of work
        assert header[36:68][::-1].hex() == block.merkle_root
        if previous is None:
            assert header[4:36] == bytes(32)
        else:
            assert header[4:36][::-1].hex() == previous.hash
            assert block.time > previous.time
        previous = block
    with pytest.raises(IndexError):
        devnet.header(devnet.height + 1)
    with pytest.raises(IndexError):
        devnet.header(-1)  # not the last block, as a list index would be


async def test_double_spend_refused_with_competing_txid(
    devnet: Devnet, alice: PrivateKey, bob: PrivateKey
):
    parent = devnet.faucet(alice.address(), 20_000)
    first = spend(parent, 0, alice, [(bob, 19_000)])
    second = spend(parent, 0, alice, [(alice, 19_500)])
    assert devnet.submit(first).status == TxStatus.SEEN_ON_NETWORK
    refused = devnet.submit(second)
    assert refused.status == TxStatus.DOUBLE_SPEND_ATTEMPTED
    assert refused.competing_txs == (first.txid(),)
    assert devnet.status(second.txid()).status == TxStatus.DOUBLE_SPEND_ATTEMPTED
    devnet.mine()
    # Still refused once the winner is mined, and the loser never gets in.
    assert devnet.submit(second).competing_txs == (first.txid(),)
    assert second.txid() not in devnet.mine()[0].txids
    assert devnet.status(first.txid()).status == TxStatus.MINED


def test_bad_signature_refused(devnet: Devnet, alice: PrivateKey, bob: PrivateKey):
    parent = devnet.faucet(alice.address(), 20_000)
    wrong_key = spend(parent, 0, bob, [(bob, 19_000)])
    result = devnet.submit(wrong_key)
    assert (result.status, result.rejection) == (TxStatus.REJECTED, Rejection.SCRIPT)
    # A valid signature over different outputs: change an amount after signing.
    tampered = spend(parent, 0, alice, [(bob, 19_000)])
    tampered.outputs[0].satoshis = 18_000
    tampered._invalidate_hash_cache()
    result = devnet.submit(tampered)
    assert (result.status, result.rejection) == (TxStatus.REJECTED, Rejection.SCRIPT)
    assert "input 0" in result.reason
    assert devnet.is_unspent(parent.txid(), 0)
    assert devnet.status(tampered.txid()).status == TxStatus.REJECTED


def test_missing_input_refused(devnet: Devnet, alice: PrivateKey):
    ghost = Transaction([], [TransactionOutput(P2PKH().lock(alice.address()), 5_000)])
    tx = spend(ghost, 0, alice, [(alice, 4_000)])  # ghost was never broadcast
    result = devnet.submit(tx)
    assert (result.status, result.rejection) == (TxStatus.REJECTED, Rejection.MISSING_INPUTS)
    assert ghost.txid() in result.reason
    parent = devnet.faucet(alice.address(), 5_000)
    beyond = spend(parent, 0, alice, [(alice, 4_000)])
    beyond.inputs[0].source_output_index = 7
    beyond._invalidate_hash_cache()
    assert devnet.submit(beyond).rejection == Rejection.MISSING_INPUTS


def test_outputs_above_inputs_refused(devnet: Devnet, alice: PrivateKey):
    parent = devnet.faucet(alice.address(), 5_000)
    tx = Transaction(
        [
            TransactionInput(
                source_transaction=parent,
                source_output_index=0,
                unlocking_script_template=P2PKH().unlock(alice),
            )
        ],
        [TransactionOutput(P2PKH().lock(alice.address()), 5_001)],
    )
    tx.sign()
    result = devnet.submit(tx)
    assert (result.status, result.rejection) == (TxStatus.REJECTED, Rejection.FEE)
    assert "exceed" in result.reason


def test_fee_policy_enforced(alice: PrivateKey):
    devnet = Devnet(min_fee_sat_per_kb=1000)  # 1 sat/byte
    parent = devnet.faucet(alice.address(), 5_000)
    stingy = spend(parent, 0, alice, [(alice, 4_990)], fee=10)
    result = devnet.submit(stingy)
    assert (result.rejection, result.status) == (Rejection.FEE, TxStatus.REJECTED)
    fair = spend(parent, 0, alice, [(alice, 4_500)], fee=500)
    assert devnet.submit(fair).accepted


def test_no_inputs_refused(devnet: Devnet, alice: PrivateKey):
    tx = Transaction([], [TransactionOutput(P2PKH().lock(alice.address()), 0)])
    result = devnet.submit(tx)
    assert (result.status, result.rejection) == (TxStatus.REJECTED, Rejection.MALFORMED)
    assert "no inputs" in result.reason


def test_duplicate_inputs_refused(devnet: Devnet, alice: PrivateKey):
    parent = devnet.faucet(alice.address(), 5_000)

    def the_coin() -> TransactionInput:
        return TransactionInput(
            source_transaction=parent,
            source_output_index=0,
            unlocking_script_template=P2PKH().unlock(alice),
        )

    # Counted twice, the coin would pay for 9,000: tx.verify() would pass this.
    tx = Transaction(
        [the_coin(), the_coin()], [TransactionOutput(P2PKH().lock(alice.address()), 9_000)]
    )
    tx.sign()
    result = devnet.submit(tx)
    assert (result.status, result.rejection) == (TxStatus.REJECTED, Rejection.MALFORMED)
    assert "twice" in result.reason


def test_bad_amounts_refused(devnet: Devnet, alice: PrivateKey):
    parent = devnet.faucet(alice.address(), 5_000)
    tx = spend(parent, 0, alice, [(alice, 4_000)])
    tx.outputs[0].satoshis = -1
    result = devnet.submit(tx)
    assert (result.status, result.rejection) == (TxStatus.REJECTED, Rejection.MALFORMED)
    assert "invalid amount" in result.reason


def test_resubmission_is_idempotent(devnet: Devnet, alice: PrivateKey, bob: PrivateKey):
    parent = devnet.faucet(alice.address(), 5_000)
    tx = spend(parent, 0, alice, [(bob, 4_000)])
    first = devnet.submit(tx)
    again = devnet.submit(Transaction.from_hex(tx.hex()))
    assert first == again and again.status == TxStatus.SEEN_ON_NETWORK
    assert devnet.mempool_size == 1
    devnet.mine()
    assert devnet.submit(tx).status == TxStatus.MINED
    assert devnet.mempool_size == 0


def test_returned_transactions_are_copies(devnet: Devnet, alice: PrivateKey):
    funded = devnet.faucet(alice.address(), 5_000)
    txid = funded.txid()
    funded.outputs[0].satoshis = 1
    again = devnet.get_transaction(txid)
    assert again.outputs[0].satoshis == 5_000
    assert devnet.get_output(txid, 0).satoshis == 5_000


def _assert_block_paths(devnet: Devnet, height: int, size: int) -> None:
    block = devnet.block(height)
    assert len(block.txids) == size
    for txid in block.txids:
        path = devnet.merkle_path(txid)
        assert path.block_height == height
        assert path.compute_root(txid) == block.merkle_root
        if size > 1:  # one-tx blocks: see test_single_transaction_block
            parsed = MerklePath.from_binary(path.to_binary())
            assert parsed.compute_root(txid) == block.merkle_root


def test_merkle_paths_for_every_block_size(devnet: Devnet, alice: PrivateKey):
    funded = devnet.faucet(alice.address(), 1_000_000)
    coins = split(funded, 0, alice, 42)
    assert devnet.submit(coins).accepted
    devnet.mine()
    next_coin = 0
    for user_txs in (1, 2, 3, 4, 6, 10, 16):  # blocks of 2, 3, 4, 5, 7, 11, 17 txs
        for _ in range(user_txs):
            tx = spend(coins, next_coin, alice, [(alice, 20_000)])
            assert devnet.submit(tx).accepted
            next_coin += 1
        (block,) = devnet.mine()
        _assert_block_paths(devnet, block.height, user_txs + 1)


def test_single_transaction_block(devnet: Devnet):
    (block,) = devnet.mine()
    (coinbase,) = block.txids
    assert block.merkle_root == coinbase  # a lone transaction is its own root
    path = devnet.merkle_path(coinbase)
    assert isinstance(path, SingleTxMerklePath)
    assert path.compute_root(coinbase) == block.merkle_root
    # bsv-sdk 2.4.0 cannot compute this root itself (the TS and Go SDKs can).
    with pytest.raises(ValueError):
        MerklePath.from_binary(path.to_binary())


async def test_beef_for_unmined_ancestry(devnet: Devnet, alice: PrivateKey, bob: PrivateKey):
    funded = devnet.faucet(alice.address(), 30_000)
    coins = split(funded, 0, alice, 2)
    assert devnet.submit(coins).accepted
    # A diamond: two children of `coins`, then one tx spending both.
    left = spend(coins, 0, alice, [(alice, 14_000)])
    right = spend(coins, 1, alice, [(alice, 14_000)])
    assert devnet.submit(left).accepted and devnet.submit(right).accepted
    join = Transaction(
        [
            TransactionInput(
                source_transaction=t,
                source_output_index=0,
                unlocking_script_template=P2PKH().unlock(alice),
            )
            for t in (left, right)
        ],
        [TransactionOutput(P2PKH().lock(bob.address()), 27_000)],
    )
    join.sign()
    assert devnet.submit(join).accepted

    beef = devnet.beef_for(join.txid())
    parsed = Transaction.from_beef(beef)
    assert parsed.txid() == join.txid()
    assert await parsed.verify(devnet)
    _, _, subject = parse_beef_ex(beef)
    # Each transaction once: funded (proven), coins, left, right, join.
    assert beef.count(coins.serialize()) == 1
    assert subject.txid() == join.txid()

    atomic = devnet.beef_for(join.txid(), atomic=True)
    _, subject_txid, subject = parse_beef_ex(atomic)
    assert subject_txid == join.txid() == subject.txid()

    devnet.mine()
    assert Transaction.from_beef(devnet.beef_for(join.txid())).merkle_path is not None


async def test_tracker_refuses_wrong_roots(devnet: Devnet):
    root = devnet.merkle_root(0)
    assert await devnet.is_valid_root_for_height(root, 0)
    assert await devnet.is_valid_root_for_height(root.upper(), 0)
    assert not await devnet.is_valid_root_for_height(root, 1)
    assert not await devnet.is_valid_root_for_height(root, -1)
    assert not await devnet.is_valid_root_for_height("00" * 32, 0)


# ----- HTTP -------------------------------------------------------------------


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, Devnet, aiohttp.ClientSession]]:
    runner, devnet = await start("127.0.0.1", 0)
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield f"http://127.0.0.1:{port}", devnet, session
    await runner.cleanup()


async def _faucet(session: aiohttp.ClientSession, url: str, key: PrivateKey, sats: int) -> dict:
    async with session.post(
        f"{url}/faucet", json={"address": key.address(), "satoshis": sats}
    ) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_http_faucet_beef_proves_against_headers(api, alice: PrivateKey):
    url, _, session = api
    body = await _faucet(session, url, alice, 25_000)
    tx = Transaction.from_beef(bytes.fromhex(body["beef"]))
    assert tx.txid() == body["txid"] and body["vout"] == 0
    assert tx.outputs[0].satoshis == body["satoshis"] == 25_000
    root = tx.merkle_path.compute_root(tx.txid())
    height = tx.merkle_path.block_height
    async with session.get(f"{url}/headers/{height}") as response:
        header = await response.json()
    assert header["merkleRoot"] == root
    assert bytes.fromhex(header["header"])[36:68][::-1].hex() == root
    assert hash256(bytes.fromhex(header["header"]))[::-1].hex() == header["hash"]
    async with session.get(
        f"{url}/merkle-root/verify", params={"root": root, "height": height}
    ) as r:
        assert await r.json() == {"valid": True}
    async with session.get(
        f"{url}/merkle-root/verify", params={"root": "00" * 32, "height": height}
    ) as r:
        assert await r.json() == {"valid": False}
    async with session.get(f"{url}/headers/tip") as response:
        assert await response.json() == {"height": height, "hash": header["hash"]}


async def test_http_raw_hex_then_status_then_mined(api, alice: PrivateKey, bob: PrivateKey):
    url, _, session = api
    parent = Transaction.from_beef(
        bytes.fromhex((await _faucet(session, url, alice, 9_000))["beef"])
    )
    tx = spend(parent, 0, alice, [(bob, 8_000)])
    async with session.post(
        f"{url}/v1/tx", data=tx.hex(), headers={"Content-Type": "text/plain"}
    ) as response:
        assert response.status == 200
        body = await response.json()
    assert body["txid"] == tx.txid() and body["txStatus"] == "SEEN_ON_NETWORK"
    assert (body["status"], body["title"], body["blockHeight"]) == (200, "OK", None)
    async with session.get(f"{url}/v1/tx/{tx.txid()}") as response:
        assert (await response.json())["txStatus"] == "SEEN_ON_NETWORK"
    async with session.post(f"{url}/mine", json={"blocks": 2}) as response:
        mined = await response.json()
    assert len(mined["blocks"]) == 2
    async with session.get(f"{url}/v1/tx/{tx.txid()}") as response:
        status = await response.json()
    assert status["txStatus"] == "MINED"
    assert status["blockHeight"] == mined["blocks"][0]["height"]
    assert status["blockHash"] == mined["blocks"][0]["hash"]
    path = MerklePath.from_hex(status["merklePath"])
    async with session.get(f"{url}/headers/{status['blockHeight']}") as response:
        assert path.compute_root(tx.txid()) == (await response.json())["merkleRoot"]


async def test_http_json_ef_and_binary_beef(api, alice: PrivateKey, bob: PrivateKey):
    url, devnet, session = api
    parent = Transaction.from_beef(
        bytes.fromhex((await _faucet(session, url, alice, 9_000))["beef"])
    )
    first = spend(parent, 0, alice, [(alice, 8_000)])
    async with session.post(f"{url}/v1/tx", json={"rawTx": first.to_ef().hex()}) as response:
        assert response.status == 200
        assert (await response.json())["txStatus"] == "SEEN_ON_NETWORK"
    # A child and its unmined parent in one BEEF: ARC broadcasts both.
    child = spend(first, 0, alice, [(bob, 7_000)])
    grandchild = spend(child, 0, bob, [(bob, 6_000)])
    async with session.post(
        f"{url}/v1/tx",
        data=grandchild.to_beef(),
        headers={"Content-Type": "application/octet-stream"},
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["txid"] == grandchild.txid() and body["txStatus"] == "SEEN_ON_NETWORK"
    assert devnet.status(child.txid()).status == TxStatus.SEEN_ON_NETWORK


def _beef_v2(proven: Transaction, path: MerklePath, unproven: Transaction) -> bytes:
    writer = Writer()
    writer.write_uint32_le(0xEFBE0002)
    writer.write_var_int_num(1)
    writer.write(path.to_binary())
    writer.write_var_int_num(2)
    writer.write_uint8(1)  # raw tx with a BUMP index
    writer.write_var_int_num(0)
    writer.write(proven.serialize())
    writer.write_uint8(0)  # raw tx without one
    writer.write(unproven.serialize())
    return writer.to_bytes()


async def test_http_beef_v2_hex(api, alice: PrivateKey, bob: PrivateKey):
    url, _, session = api
    parent = Transaction.from_beef(
        bytes.fromhex((await _faucet(session, url, alice, 9_000))["beef"])
    )
    tx = spend(parent, 0, alice, [(bob, 8_000)])
    beef = _beef_v2(parent, parent.merkle_path, tx)
    async with session.post(f"{url}/v1/tx", data=beef.hex()) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["txStatus"] == "SEEN_ON_NETWORK"
    # The same BEEF with a BUMP from a block this chain does not have.
    other = Devnet()
    foreign = other.faucet(alice.address(), 9_000)
    beef = _beef_v2(foreign, foreign.merkle_path, spend(foreign, 0, alice, [(bob, 8_000)]))
    async with session.post(f"{url}/v1/tx", data=beef.hex()) as response:
        assert response.status == 469


async def test_http_double_spend(api, alice: PrivateKey, bob: PrivateKey):
    url, _, session = api
    parent = Transaction.from_beef(
        bytes.fromhex((await _faucet(session, url, alice, 9_000))["beef"])
    )
    first = spend(parent, 0, alice, [(bob, 8_000)])
    second = spend(parent, 0, alice, [(alice, 8_500)])
    for tx in (first, second):
        async with session.post(f"{url}/v1/tx", json={"rawTx": tx.hex()}) as response:
            assert response.status == 200
            body = await response.json()
    assert body["txStatus"] == "DOUBLE_SPEND_ATTEMPTED"
    assert body["competingTxs"] == [first.txid()]


async def test_http_errors(api, alice: PrivateKey, bob: PrivateKey):
    url, _, session = api
    parent = Transaction.from_beef(
        bytes.fromhex((await _faucet(session, url, alice, 9_000))["beef"])
    )
    bad_sig = spend(parent, 0, bob, [(bob, 8_000)])
    ghost = Transaction([], [TransactionOutput(P2PKH().lock(alice.address()), 9_000)])
    greedy = spend(parent, 0, alice, [(bob, 8_000)])
    greedy.outputs[0].satoshis = 9_001
    greedy._invalidate_hash_cache()
    cases = [
        ("zz not hex", "text/plain", 400),
        ("deadbeef" * 4, "text/plain", 463),
        (bad_sig.hex(), "text/plain", 461),
        (spend(ghost, 0, alice, [(alice, 8_000)]).hex(), "text/plain", 462),
        (greedy.hex(), "text/plain", 465),
        (parent.hex() + "00", "text/plain", 463),  # trailing junk
        ('{"nope": 1}', "application/json", 400),
        (bytes.fromhex("0100beef") + os.urandom(40), "application/octet-stream", 463),
    ]
    for body, content_type, expected in cases:
        async with session.post(
            f"{url}/v1/tx", data=body, headers={"Content-Type": content_type}
        ) as response:
            assert response.status == expected, (body, await response.text())
            error = await response.json()
            assert error["status"] == expected and error["title"] and "extraInfo" in error
    for path in (f"/v1/tx/{'ab' * 32}", "/v1/tx/nothex", "/headers/99", "/headers/x"):
        async with session.get(f"{url}{path}") as response:
            assert response.status in (400, 404), path
    for payload in (
        {"address": alice.address(), "satoshis": 10_000_001},
        {"address": alice.address(), "satoshis": True},
        {"address": "1notanaddress", "satoshis": 10},
        {"satoshis": 10},
    ):
        async with session.post(f"{url}/faucet", json=payload) as response:
            assert response.status == 400, payload
    async with session.post(f"{url}/mine", json={"blocks": 0}) as response:
        assert response.status == 400


async def test_http_policy_and_beef_lookup(api, alice: PrivateKey):
    url, devnet, session = api
    async with session.get(f"{url}/v1/policy") as response:
        policy = (await response.json())["policy"]
    assert policy["miningFee"] == {"satoshis": devnet.min_fee_sat_per_kb, "bytes": 1000}
    txid = (await _faucet(session, url, alice, 1_000))["txid"]
    async with session.get(f"{url}/beef/{txid}") as response:
        beef = bytes.fromhex((await response.json())["beef"])
    assert Transaction.from_beef(beef).txid() == txid


async def test_bsv_sdk_clients_work_against_the_devnet(api, alice: PrivateKey, bob: PrivateKey):
    from bsv import ARC, ARCConfig
    from bsv.headers_client import HeadersClient

    url, devnet, session = api
    parent = Transaction.from_beef(
        bytes.fromhex((await _faucet(session, url, alice, 9_000))["beef"])
    )
    tx = spend(parent, 0, alice, [(bob, 8_000)])
    response = await ARC(url, ARCConfig()).broadcast(tx)  # EF as JSON rawTx
    assert response.status == "success" and response.txid == tx.txid()
    headers = HeadersClient(url, api_key="")
    assert await headers.current_height() == devnet.height
    height = parent.merkle_path.block_height
    assert await headers.is_valid_root_for_height(devnet.merkle_root(height), height)
    assert not await headers.is_valid_root_for_height("00" * 32, height)


async def test_wait_for_mined_with_auto_mining(alice: PrivateKey, bob: PrivateKey):
    runner, devnet = await start("127.0.0.1", 0, block_interval=0.05)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        parent = devnet.faucet(alice.address(), 9_000)
        tx = spend(parent, 0, alice, [(bob, 8_000)])
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/v1/tx",
                data=tx.hex(),
                headers={"X-WaitFor": "MINED", "X-MaxTimeout": "5"},
            ) as response,
        ):
            body = await response.json()
        assert body["txStatus"] == "MINED" and body["blockHeight"] == devnet.height
    finally:
        await runner.cleanup()


async def _post(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, dict]:
    async with session.post(
        f"{url}/v1/tx", data=data, headers={"Content-Type": "application/octet-stream"}
    ) as response:
        return response.status, await response.json()


def _txid_only_v2(known_txid: str, tx: Transaction) -> bytes:
    writer = Writer()
    writer.write_uint32_le(0xEFBE0002)
    writer.write_var_int_num(0)  # no BUMPs
    writer.write_var_int_num(2)
    writer.write_uint8(2)  # txid only: "you already have this one"
    writer.write(bytes.fromhex(known_txid)[::-1])
    writer.write_uint8(0)
    writer.write(tx.serialize())
    return writer.to_bytes()


async def test_http_atomic_beef_txid_only_and_ef_claims(api, alice: PrivateKey, bob: PrivateKey):
    url, _, session = api
    parent = Transaction.from_beef(
        bytes.fromhex((await _faucet(session, url, alice, 9_000))["beef"])
    )
    first = spend(parent, 0, alice, [(alice, 8_000)])
    atomic = b"\x01\x01\x01\x01" + bytes.fromhex(first.txid())[::-1] + first.to_beef()
    status, body = await _post(session, url, atomic)
    assert (status, body["txid"], body["txStatus"]) == (200, first.txid(), "SEEN_ON_NETWORK")

    second = spend(first, 0, alice, [(bob, 7_000)])
    status, body = await _post(session, url, _txid_only_v2(first.txid(), second))
    assert (status, body["txStatus"]) == (200, "SEEN_ON_NETWORK")
    status, body = await _post(session, url, _txid_only_v2("cd" * 32, second))
    assert status == 467

    # EF that misstates the amount it spends.
    third = spend(second, 0, bob, [(bob, 6_000)])
    ef = bytearray(third.to_ef())
    amount_at = 4 + 6 + 1 + 32 + 4 + 1 + len(third.inputs[0].unlocking_script.serialize()) + 4
    assert int.from_bytes(ef[amount_at : amount_at + 8], "little") == 7_000
    ef[amount_at : amount_at + 8] = (7_001).to_bytes(8, "little")
    status, body = await _post(session, url, bytes(ef))
    assert status == 463 and "misstates" in body["extraInfo"]
    status, body = await _post(session, url, third.to_ef())
    assert (status, body["txStatus"]) == (200, "SEEN_ON_NETWORK")
