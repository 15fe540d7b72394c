#!/usr/bin/env python3
"""The cost of shared state: memory store versus Redis, in one run.

One command: `./dev bench-store`.

1. Token path over HTTP: `farebox serve` (1 worker) in front of the sample
   upstream, a priced route, every request carrying a valid token (wrk).
   With Redis, the only store traffic is the revocation check, cached per
   grant for a second.
2. Store operations per second, called directly with fixed concurrency:
   payment claims (each a new txid), and a tab's reserve + settle pair.

Redis is a `redis-server` the bench starts on a free port (no persistence).
Metered requests (a tab's reserve + settle on each) over HTTP: `./dev
bench-metering` (bench/metering.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.store.memory import MemoryStore  # noqa: E402
from gateway.store.redis import RedisStore  # noqa: E402
from gateway.tokens import Grant, KeyRing, Tokens, new_grant_id  # noqa: E402
from tests.redis_servers import RedisServer, free_port  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from payments import spawn, stop, wait_port  # noqa: E402


def wrk(url: str, token: str, seconds: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


async def token_path(
    workdir: Path, upstream_port: int, store: str, args: argparse.Namespace
) -> float:
    port = free_port()
    cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--policies", str(workdir / "p"),
           "--key-file", str(workdir / "k"), "--token-keys", str(workdir / "tk"), "--store", store,
           "--no-watch", "--log-level", "warning"]  # fmt: skip
    proc = spawn(cmd, workdir / f"serve-{store.split(':')[0]}.log")
    try:
        await wait_port(port)
        tokens = Tokens(KeyRing.load(workdir / "tk"))
        grant = Grant(
            new_grant_id(),
            "bench",
            "/bench/hello",
            "resource",
            ("GET", "HEAD"),
            int(time.time()) + 3600,
            "00" * 32,
            10,
            "bench",
        )
        url = f"http://127.0.0.1:{port}/bench/hello"
        token = tokens.mint(grant)
        wrk(url, token, 2, args.connections)  # warm-up
        return wrk(url, token, args.duration, args.connections)
    finally:
        stop(proc)


async def rate(coro_factory, count: int, concurrency: int) -> float:
    """Calls per second of `coro_factory(i)` for i < count, `concurrency` in flight."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await coro_factory(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


async def reserve_settle(store: MemoryStore | RedisStore, n: int, concurrency: int) -> float:
    """A tab's reserve + settle pairs per second: what one metered request asks of the store."""
    tab = f"tab-{os.urandom(4).hex()}"
    await store.credit(tab, n * 10, "seed")

    async def pair(i: int) -> None:
        await store.reserve(tab, 10, f"r{i}", 60)
        await store.settle(tab, f"r{i}", 7)

    return await rate(pair, n, concurrency)


async def operations(
    store: MemoryStore | RedisStore, label: str, n: int, concurrency: int
) -> dict[str, float]:
    tag = os.urandom(4).hex()
    claims = await rate(lambda i: store.claim(f"{tag}{i:056x}", "bench\n/x"), n, concurrency)
    return {"claims": claims, "reserve+settle": await reserve_settle(store, n, concurrency)}


async def main(args: argparse.Namespace) -> None:
    if not shutil.which("wrk") or not shutil.which("redis-server"):
        raise SystemExit("needs wrk and redis-server: run ./dev bench-store")
    workdir = Path(tempfile.mkdtemp(prefix="farebox-storebench-"))
    upstream_port = free_port()
    (workdir / "p").mkdir()
    (workdir / "p" / "p.yaml").write_text(
        f"services:\n  bench:\n    upstream: http://127.0.0.1:{upstream_port}\n    routes:\n"
        "      - path: /bench/hello\n        price: 10\n"
    )
    subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "generate", "--out", str(workdir / "k")],
        check=True,
        capture_output=True,
    )
    KeyRing.load(workdir / "tk")
    upstream = spawn(
        [sys.executable, "-m", "gateway.demo.upstream", "--port", str(upstream_port)],
        workdir / "upstream.log",
    )
    redis = RedisServer(workdir / "redis")
    redis.start()
    try:
        await wait_port(upstream_port)
        print(f"... token path, memory store ({args.duration}s)", flush=True)
        memory_rps = await token_path(workdir, upstream_port, "memory", args)
        print(f"... token path, Redis store ({args.duration}s)", flush=True)
        redis_rps = await token_path(workdir, upstream_port, redis.url, args)
        print(f"... store operations x{args.operations}", flush=True)
        mem_ops = await operations(MemoryStore(), "memory", args.operations, args.concurrency)
        rstore = RedisStore.from_url(redis.url)
        try:
            redis_ops = await operations(rstore, "redis", args.operations, args.concurrency)
        finally:
            await rstore.close()
    finally:
        redis.stop()
        stop(upstream)
    print()
    print(f"Farebox store benchmark: {os.cpu_count()} CPUs, 1 gateway worker, wrk -c{args.connections}; "
          f"store calls with {args.concurrency} in flight")  # fmt: skip
    print(f"{'':<28} {'memory':>12} {'redis':>12} {'redis/memory':>13}")
    print(
        f"{'token path (req/s)':<28} {memory_rps:>12,.0f} {redis_rps:>12,.0f} {redis_rps / memory_rps:>12.2f}x"
    )
    for op in mem_ops:
        print(
            f"{op + ' (/s)':<28} {mem_ops[op]:>12,.0f} {redis_ops[op]:>12,.0f} {redis_ops[op] / mem_ops[op]:>12.2f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument(
        "--operations", type=int, default=20000, help="store calls per kind (default 20000)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="store calls in flight (default 64)"
    )
    asyncio.run(main(parser.parse_args()))
