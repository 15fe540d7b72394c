"""Payments for `bench/all.py` (`./dev bench-all`): real BRC-121 payments for
tokens and tabs, payments per second with two gateway instances, and the
timings of the three signature operations a payment costs.

Reuses bench/payments.py (funding, signing, firing payments, its server
processes) and bench/metering.py (the tab's balance).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import payments as pay_bench
from bsv import P2PKH, PrivateKey, PublicKey, Transaction, TransactionInput, TransactionOutput
from metering import FEE, MSAT, tab_balance
from proxy import BenchError

from gateway.bsv.derivation import payee_key_for_sender
from gateway.tokens import Grant, KeyRing, Tokens, new_grant_id

__all__ = ["MSAT", "crypto_timings", "pay", "payments_two_instances", "tab_balance"]


async def pay(
    http: aiohttp.ClientSession,
    url: str,
    devnet: str,
    *,
    top_up: int | None = None,
    expect_size: int | None = None,
) -> tuple[str, dict[str, object]]:
    """Pay for `url` the way a client does: GET -> 402, a BRC-121 payment from
    the devnet faucet, GET again with it -> 200 and X-Farebox-Token.

    `top_up`: satoshis to pay into a tab (metered routes; at least what the
    402 asks); otherwise exactly the price asked. Returns (the token, what
    was paid). Raises BenchError on any other answer.
    """
    async with http.get(url) as r:
        if r.status != 402:
            raise BenchError(f"GET {url} answered {r.status}, not 402: {(await r.text())[:300]}")
        server = PublicKey(r.headers["x-bsv-server"])
        asked = int(r.headers["x-bsv-sats"])
    amount = max(top_up, asked) if top_up else asked
    client = PrivateKey()
    async with http.post(
        f"{devnet}/faucet", json={"address": client.address(), "satoshis": amount + FEE}
    ) as r:
        if r.status != 200:
            raise BenchError(f"the devnet faucet refused {amount + FEE} sats: {await r.text()}")
        coin = Transaction.from_beef(bytes.fromhex((await r.json())["beef"]))
    now = str(int(time.time() * 1000))
    nonce = base64.b64encode(os.urandom(12)).decode()
    suffix = base64.b64encode(now.encode()).decode()
    payee = payee_key_for_sender(server, client, nonce, suffix).address()
    tx = Transaction(
        [
            TransactionInput(
                source_transaction=coin,
                source_output_index=0,
                unlocking_script_template=P2PKH().unlock(client),
            )
        ],
        [TransactionOutput(P2PKH().lock(payee), amount)],
    )
    tx.sign()
    headers = {
        "x-bsv-beef": base64.b64encode(pay_bench._atomic(tx, coin.to_beef())).decode(),
        "x-bsv-sender": client.public_key().hex(),
        "x-bsv-nonce": nonce,
        "x-bsv-time": now,
        "x-bsv-vout": "0",
    }
    async with http.get(url, headers=headers) as r:
        body = await r.read()
        if r.status != 200:
            raise BenchError(f"the payment for {url} was refused ({r.status}): {body[:300]!r}")
        token = r.headers.get("X-Farebox-Token")
        if not token:
            raise BenchError(f"the paid answer for {url} carries no X-Farebox-Token")
        if expect_size is not None and len(body) != expect_size:
            raise BenchError(f"the paid answer for {url} had {len(body)} bytes, not {expect_size}")
        charge = r.headers.get("X-Farebox-Charge")
    return token, {"url": url, "asked_sats": asked, "paid_sats": amount, "txid": tx.txid(),
                   "charge": charge}  # fmt: skip


async def payments_two_instances(
    args: argparse.Namespace, workdir: Path, server: PrivateKey, redis_url: str
) -> dict[str, object]:
    """Payments/s with two gateway instances (1 worker each, own ports) on one
    Redis and one devnet process, payments split between them and fired at
    the same time; the sum of both. bench/payments.py's server processes,
    broadcast none. `args`: payments, warmup, concurrency (split in two)."""
    ports, devnet_port = [pay_bench.free_port(), pay_bench.free_port()], pay_bench.free_port()
    devnet = f"http://127.0.0.1:{devnet_port}"
    procs = [
        pay_bench.spawn(
            [sys.executable, "-m", "gateway", "devnet", "--port", str(devnet_port),
             "--block-interval", "0"],
            workdir / "devnet-two.log",
        )
    ]  # fmt: skip
    try:
        await pay_bench.wait_port(devnet_port)
        for n, port in enumerate(ports):
            cmd = [sys.executable, pay_bench.__file__, "--role", "server", "--port", str(port),
                   "--workdir", str(workdir), "--server-key", server.hex(), "--broadcast", "none",
                   "--devnet-url", devnet, "--store", redis_url]  # fmt: skip
            procs.append(pay_bench.spawn(cmd, workdir / f"server-two-{n}.log"))
        for port in ports:
            await pay_bench.wait_port(port)
        client = PrivateKey()
        total = args.payments + args.warmup
        async with aiohttp.ClientSession() as http:
            splits = await pay_bench.fund(http, devnet, client, total)
        prepared = pay_bench.prepare(server.public_key(), client, splits, total, first=100)
        warm, timed = prepared[: args.warmup], prepared[args.warmup :]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        half = max(1, args.concurrency // 2)
        await asyncio.gather(*(pay_bench.fire(b, warm[i::2], half) for i, b in enumerate(bases)))
        results = await asyncio.gather(
            *(pay_bench.fire(b, timed[i::2], half) for i, b in enumerate(bases))
        )
        elapsed = max(r[0] for r in results)
        latencies = sorted(lat for r in results for lat in r[1])
        statuses: dict[int, int] = {}
        for r in results:
            for status, count in r[2].items():
                statuses[status] = statuses.get(status, 0) + count
        ok = statuses.get(200, 0)
        return {
            "layout": "2 instances (1 worker each, own ports), Redis, devnet process",
            "mode": "none",
            "payments": len(timed),
            "accepted": ok,
            "statuses": statuses,
            "payments_per_s": ok / elapsed,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        }
    finally:
        for proc in reversed(procs):
            pay_bench.stop(proc)


def _median_us(fn: Callable[[int], object], min_calls: int, min_seconds: float) -> float:
    """The median wall time of one call of fn(i), in microseconds, each call
    timed alone, after a short warm-up; at least `min_calls` calls and
    `min_seconds` seconds."""
    for i in range(50):
        fn(i)
    times: list[int] = []
    clock = time.perf_counter_ns
    deadline = time.monotonic() + min_seconds
    i = 0
    while len(times) < min_calls or time.monotonic() < deadline:
        started = clock()
        fn(i)
        times.append(clock() - started)
        i += 1
    return statistics.median(times) / 1000


def _derivation() -> tuple[Callable[[int], object], str]:
    """fn(i): one payee derivation as the cashier makes it, and its name."""
    from gateway.bsv import derivation

    server = PrivateKey()
    # More payers than any per-payer cache holds, taken in turn: every call
    # pays the full EC multiplication, as a payment from a new payer does.
    senders = [PrivateKey().public_key() for _ in range(8192)]
    suffix = "MTcwMDAwMDAwMDAwMA=="
    if hasattr(derivation, "PayeeScripts"):
        payees = derivation.PayeeScripts(server)
        return (
            lambda i: payees.script(senders[i % 8192], f"bench-{i}", suffix),
            "gateway.bsv.derivation.PayeeScripts.script (uncached payer)",
        )
    return (
        lambda i: derivation.payee_key(server, senders[i % 8192], f"bench-{i}", suffix),
        "gateway.bsv.derivation.payee_key",
    )


def crypto_timings(folder: Path, min_seconds: float) -> dict[str, object]:
    """What one payment costs in signature operations, timed in this process.

    - verify_us: bsv-sdk `PublicKey.verify` of a DER signature over a 32-byte
      hash (what the script interpreter's OP_CHECKSIG calls for each input);
    - derive_us: the BRC-42 derivation of what a payment must pay, with the
      function the cashier uses (`PayeeScripts.script` where
      gateway/bsv/derivation.py has it, else `payee_key`), a new invoice and
      a payer not seen recently each call (no per-payer cache helps);
    - sign_us: `Tokens.mint`, the EdDSA access token issued after a payment.

    Inputs vary from call to call (nothing a cache could answer). Medians.
    """
    import bsv.keys

    key = PrivateKey()
    pub = key.public_key()
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(256)]
    signatures = [key.sign(h, hasher=None) for h in hashes]
    if not all(pub.verify(s, h, hasher=None) for s, h in zip(signatures, hashes, strict=True)):
        raise BenchError("a signature made for the timing did not verify")
    tokens = Tokens(KeyRing.load(folder))
    expires = int(time.time()) + 3600
    derive, derived_by = _derivation()

    def verify(i: int) -> object:
        return pub.verify(signatures[i & 255], hashes[i & 255], hasher=None)

    def sign(i: int) -> object:
        grant = Grant(
            new_grant_id(), "paid", "/paid/1k.json", "resource", ("GET", "HEAD"),
            expires, f"{i:064x}", 1, "ab" * 16,
        )  # fmt: skip
        return tokens.mint(grant)

    out: dict[str, object] = {
        name: round(_median_us(fn, 2000, min_seconds), 2)
        for name, fn in (("verify_us", verify), ("derive_us", derive), ("sign_us", sign))
    }
    out["derive_function"] = derived_by
    total = float(out["verify_us"]) + float(out["derive_us"]) + float(out["sign_us"])  # type: ignore[arg-type]
    out["total_us"] = round(total, 2)
    out["limit_per_s"] = round(1e6 / total, 1)
    out["crypto_backend"] = getattr(bsv.keys, "_CRYPTO_BACKEND", "?")
    out["method"] = (
        "median of single calls timed with perf_counter_ns, at least 2000 calls and "
        f"{min_seconds:g}s each, in the bench process"
    )
    return out
