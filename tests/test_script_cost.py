"""Script cost: an unpaid payment cannot hold the worker (issue: the edge holds, item 7).

The worst a BEEF could ask before: an unconfirmed parent whose 83-byte locking
script doubles one byte with DUP/CAT to 16 MiB and hashes it thirty times,
spent by the payment. Now a payment's unconfirmed transactions may spend only
P2PKH outputs, unlocked by pushes (one signature check each), checked before
any script runs; the checks run oldest first and yield after each input. The
widest payment the ancestry limits allow is then the worst case: `/healthz`
is measured while it is checked.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import time

import aiohttp
from bsv import P2PKH, Script, Transaction, TransactionInput, TransactionOutput

from tests.chainkit import atomic, atomic_beef, funding
from tests.conftest import PAID_SERVER
from tests.test_intake import CLIENT, Env, env  # noqa: F401  (the fixture)

# OP_1, 24 x (OP_DUP OP_CAT): 2^24 bytes; 30 x OP_SHA256; OP_DROP OP_1.
BOMB = Script(bytes([0x51]) + bytes([0x76, 0x7E]) * 24 + bytes([0xA8]) * 30 + bytes([0x75, 0x51]))
HEALTHY_MS = 50  # the bound on /healthz while a payment is checked


def _headers(tx: Transaction, prefix: str, time_ms: int) -> dict[str, str]:
    return {
        "x-bsv-beef": base64.b64encode(atomic_beef(tx)).decode(),
        "x-bsv-sender": CLIENT.public_key().hex(),
        "x-bsv-nonce": prefix,
        "x-bsv-time": str(time_ms),
        "x-bsv-vout": "0",
    }


def _paying(
    parents: list[tuple[Transaction, int]], price: int, unlock: object
) -> tuple[Transaction, str, int]:
    from gateway.bsv.derivation import payee_key_for_sender

    time_ms = int(time.time() * 1000)
    prefix = base64.b64encode(b"script-cost").decode()
    suffix = base64.b64encode(str(time_ms).encode()).decode()
    payee = payee_key_for_sender(PAID_SERVER.public_key(), CLIENT, prefix, suffix)
    tx = Transaction(
        [
            TransactionInput(
                source_transaction=p, source_output_index=i, unlocking_script_template=unlock
            )
            if unlock is not None
            else TransactionInput(
                source_transaction=p, source_output_index=i, unlocking_script=Script(b"")
            )
            for p, i in parents
        ],
        [TransactionOutput(P2PKH().lock(payee.address()), price)],
    )
    if unlock is not None:
        tx.sign()
    return tx, prefix, time_ms


async def _healthz_during(base: str, work: asyncio.Task) -> float:
    """The slowest /healthz answer (ms) while `work` runs.

    Collected and frozen first, as a worker does at start (serve/worker.py
    _tune_gc): the test built thousands of signed transactions in this very
    process, and a full collection of them is not the gateway's to answer for.
    """
    gc.collect()
    gc.freeze()
    worst = 0.0
    async with aiohttp.ClientSession() as http:
        while not work.done():
            started = time.perf_counter()
            async with http.get(base + "/healthz") as r:
                assert r.status == 200
            worst = max(worst, (time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.002)
    gc.unfreeze()
    return worst


async def test_a_script_bomb_is_refused_before_it_runs(env: Env) -> None:  # noqa: F811
    grand = funding(CLIENT, 100_000, env.tracker)
    bomb = Transaction(
        [
            TransactionInput(
                source_transaction=grand,
                source_output_index=0,
                unlocking_script_template=P2PKH().unlock(CLIENT),
            )
        ],
        [TransactionOutput(BOMB, 99_000)],
    )
    bomb.sign()
    tx, prefix, time_ms = _paying([(bomb, 0)], 25, None)
    async with aiohttp.ClientSession() as http:
        paying = asyncio.ensure_future(
            http.get(env.base + "/archive/pages/77", headers=_headers(tx, prefix, time_ms))
        )
        worst = await _healthz_during(env.base, paying)
        async with await paying as r:
            body = await r.json(content_type=None)
    assert r.status == 402 and body["reason"] == "non-standard-script", body
    assert env.upstream_calls() == 0
    assert worst < HEALTHY_MS, f"/healthz took {worst:.1f} ms during the attack"


async def test_the_widest_payment_allowed_keeps_the_worker_responsive(env: Env) -> None:  # noqa: F811
    # Many P2PKH inputs: each is one signature check, and the loop turns between them.
    parents = [(funding(CLIENT, 1_000, env.tracker), 0) for _ in range(150)]
    tx, prefix, time_ms = _paying(parents, 25, P2PKH().unlock(CLIENT))
    fields = _headers(tx, prefix, time_ms)  # too big for a header: the pay endpoint takes it
    body = {name.removeprefix("x-bsv-"): value for name, value in fields.items()}
    body.update(url="/archive/pages/78", method="GET")
    async with aiohttp.ClientSession() as http:
        paying = asyncio.ensure_future(http.post(env.base + "/.well-known/farebox/pay", json=body))
        worst = await _healthz_during(env.base, paying)
        async with await paying as r:
            assert r.status == 200, await r.text()
    assert worst < HEALTHY_MS, f"/healthz took {worst:.1f} ms while 150 inputs were checked"


async def test_many_inputs_times_many_outputs_is_refused_before_any_signature(
    env: Env,  # noqa: F811
) -> None:
    # Each input's signature check hashes all the outputs: 300 inputs and 3,000
    # outputs would hash ~30 MB for a payment refused in the end (a flipped
    # signature in the last input). Refused by its cost, before any check runs.
    grand = funding(CLIENT, 10_000_000, env.tracker)
    outputs = [(CLIENT.public_key(), 1_000)] * 3_000
    fan = Transaction(
        [
            TransactionInput(
                source_transaction=grand,
                source_output_index=0,
                unlocking_script_template=P2PKH().unlock(CLIENT),
            )
        ],
        [TransactionOutput(P2PKH().lock(k.address()), s) for k, s in outputs],
    )
    fan.sign()
    tx, prefix, time_ms = _paying([(fan, i) for i in range(300)], 25, P2PKH().unlock(CLIENT))
    tx.outputs.extend(TransactionOutput(P2PKH().lock(CLIENT.address()), 1) for _ in range(3_000))
    fields = _headers(tx, prefix, time_ms)
    body = {name.removeprefix("x-bsv-"): value for name, value in fields.items()}
    body.update(url="/archive/pages/79", method="GET")
    body["beef"] = base64.b64encode(atomic(tx, grand, fan, tx)).decode()  # each parent once
    async with aiohttp.ClientSession() as http:
        paying = asyncio.ensure_future(http.post(env.base + "/.well-known/farebox/pay", json=body))
        worst = await _healthz_during(env.base, paying)
        async with await paying as r:
            answer = await r.json(content_type=None)
    assert r.status == 402 and answer["reason"] == "too-costly", answer
    assert worst < HEALTHY_MS, f"/healthz took {worst:.1f} ms"
