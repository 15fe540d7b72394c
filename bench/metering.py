#!/usr/bin/env python3
"""Metered requests per second: a tab's reserve + settle on every request.

One command: `./dev bench-metering` (or `.venv/bin/python bench/metering.py`).

`farebox serve` runs in front of the sample upstream with three services on
the same upstream route (GET /bench/hello, 1 KiB JSON):

- /free/hello     free: the proxy alone, no store call;
- /paid/hello     priced (1 sat), every request carrying a valid token: the
                  token path (with Redis, a revocation check cached per grant);
- /metered/hello  metered, 1 sat per request, paid from a tab: each request
                  holds the price on the tab, is proxied, and settles.

The tab is opened the way a client opens one: the metered route answers
402, the bench takes coins from the faucet of a devnet process and pays a
BRC-121 top-up (`--top-up` satoshis, enough that wrk never empties it) on
that route; the answer's X-Farebox-Token is the tab token wrk then sends as
`Authorization: Bearer`. Any non-2xx answer stops the bench.

Layouts, in one run: memory store, 1 worker; Redis (a redis-server the bench
starts on a free port, no persistence), 1 worker; Redis, 2 workers
(`--no-two-workers` skips it: the memory store cannot run 2 workers with
payments). Each route gets a warm-up wrk run and a measured one.

Columns: req/s, p50 and p99 from wrk; CPU/req, the gateway's CPU time per
request (all its processes: the fairer figure when wrk, the upstream and
Redis share the cores); vs free and vs token, req/s relative to the free
route and the token path of the same layout; other CPU, what processes
outside the bench (and hypervisor steal) took meanwhile, in % of a core:
when high, the machine was busy and the numbers are skewed.

Afterwards the tab's balance (GET /.well-known/farebox/tab) must have dropped
by exactly the price of every metered answer wrk counted; any difference is
printed. Last, the store calls alone: reserve + settle pairs per second,
called directly from this process with fixed concurrency (as in
`./dev bench-store`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import psutil  # noqa: E402
from bsv import P2PKH, PrivateKey, PublicKey, Transaction, TransactionInput, TransactionOutput  # noqa: E402

from gateway.bsv.derivation import payee_key_for_sender  # noqa: E402
from gateway.store.memory import MemoryStore  # noqa: E402
from gateway.store.redis import RedisStore  # noqa: E402
from gateway.tokens import Grant, KeyRing, Tokens, new_grant_id  # noqa: E402
from tests.redis_servers import RedisServer, free_port  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from payments import _atomic, spawn, stop, wait_port  # noqa: E402
from proxy import NOISY, foreign_cpu, steal_seconds  # noqa: E402
from store import reserve_settle  # noqa: E402

PRICE = 1  # satoshis per metered (and per priced) request
MSAT = 1000
FAUCET_CAP = 10_000_000  # gateway.devnet.http.DEFAULT_FAUCET_CAP
FEE = 10  # satoshis left to the top-up transaction's fee (1 sat/kB needs 1)
ROUTES = ("free", "token", "metered")
PATHS = {"free": "/free/hello", "token": "/paid/hello", "metered": "/metered/hello"}
LABELS = {"free": "free route", "token": "token path (priced)", "metered": "metered (tab)"}


def policy_yaml(upstream_port: int) -> str:
    upstream = f"http://127.0.0.1:{upstream_port}/bench"
    return f"""\
services:
  free:
    upstream: {upstream}
    mount: /free
    routes:
      - path: /hello
        price: free
  paid:
    upstream: {upstream}
    mount: /paid
    routes:
      - path: /hello
        price: {PRICE}
  metered:
    upstream: {upstream}
    mount: /metered
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /hello
        price: {PRICE}
        meter: {{per: request}}
"""


@dataclass
class Run:
    """One measured wrk run."""

    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    socket_errors: int
    cpu_us: float = 0.0  # gateway CPU time per request (all its processes)
    other: float = 0.0  # % of a core other processes (and hypervisor steal) took meanwhile


@dataclass
class Layout:
    label: str
    store: str  # "memory" or a redis:// URL
    workers: int
    runs: dict[str, Run] = field(default_factory=dict)
    counted: int = 0  # metered answers wrk counted, warm-up included
    charged: int = 0  # requests' worth of satoshis the tab lost, opening request excluded
    socket_errors: int = 0  # on the metered route, warm-up included


# --- wrk ---------------------------------------------------------------------------


def _ms(text: str) -> float:
    """wrk's latency text in ms: "850.00us", "1.20ms", "2.00s", "1.00m", "1.00h";
    NaN for what wrk prints when it has no sample ("-nan", "nan")."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if found is None:
        return float("nan")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}[unit]


def wrk(url: str, token: str | None, seconds: float, args: argparse.Namespace) -> Run:
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{seconds:g}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw answers other than 2xx on {url}:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Run(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        requests=int(re.search(r"(\d+) requests in", out).group(1)),
        p50_ms=_ms(re.search(r"50%\s+(\S+)", out).group(1)),
        p99_ms=_ms(re.search(r"99%\s+(\S+)", out).group(1)),
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def gateway_cpu(root: psutil.Process) -> float:
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def wait_listeners(port: int, count: int, timeout: float = 20) -> None:
    """Until `count` sockets listen on `port` (one per SO_REUSEPORT worker):
    wrk's connections made before the second worker binds would all go to the first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = sum(
            1
            for c in psutil.net_connections(kind="tcp4")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
        )
        if listening >= count:
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"only {listening} of {count} gateway workers listen on port {port}")


# --- the tab -----------------------------------------------------------------------


async def open_tab(http: aiohttp.ClientSession, base: str, devnet: str, top_up: int) -> str:
    """Pay a top-up on the metered route, as a client would; the tab token."""
    async with http.get(f"{base}{PATHS['metered']}") as r:
        if r.status != 402:
            raise SystemExit(f"the metered route answered {r.status}, not 402: {await r.text()}")
        server = PublicKey(r.headers["x-bsv-server"])
        amount = max(top_up, int(r.headers["x-bsv-sats"]))
    client = PrivateKey()
    async with http.post(
        f"{devnet}/faucet", json={"address": client.address(), "satoshis": amount + FEE}
    ) as r:
        if r.status != 200:
            raise SystemExit(f"the devnet faucet refused {amount + FEE} satoshis: {await r.text()}")
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
        "x-bsv-beef": base64.b64encode(_atomic(tx, coin.to_beef())).decode(),
        "x-bsv-sender": client.public_key().hex(),
        "x-bsv-nonce": nonce,
        "x-bsv-time": now,
        "x-bsv-vout": "0",
    }
    async with http.get(f"{base}{PATHS['metered']}", headers=headers) as r:
        if r.status != 200:
            raise SystemExit(f"the top-up was refused ({r.status}): {await r.text()}")
        if r.headers.get("X-Farebox-Charge") != str(PRICE):
            raise SystemExit(f"the opening request cost {r.headers.get('X-Farebox-Charge')}")
        token = r.headers["X-Farebox-Token"]
    balance = await tab_balance(http, base, token)
    if balance != (amount - PRICE) * MSAT:
        raise SystemExit(f"a top-up of {amount} sats left {balance} msat after one request")
    return token


async def tab_balance(http: aiohttp.ClientSession, base: str, token: str) -> int:
    async with http.get(
        f"{base}/.well-known/farebox/tab", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        if r.status != 200:
            raise SystemExit(f"tab balance: {r.status} {await r.text()}")
        return int((await r.json())["balance_msat"])


# --- one layout --------------------------------------------------------------------


async def measure(
    layout: Layout, workdir: Path, devnet: str, ours: set[int], args: argparse.Namespace
) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port),
           "--workers", str(layout.workers), "--policies", str(workdir / "p"),
           "--key-file", str(workdir / "k"), "--token-keys", str(workdir / "tk"),
           "--store", layout.store, "--devnet-url", devnet, "--insecure-cookies",
           "--no-watch", "--log-level", "warning"]  # fmt: skip
    tag = f"{layout.store.split(':')[0]}-{layout.workers}"
    log = workdir / f"serve-{tag}.log"
    proc = spawn(cmd, log)
    try:
        await wait_port(port)
        await wait_listeners(port, layout.workers)
        base = f"http://127.0.0.1:{port}"
        tokens = Tokens(KeyRing.load(workdir / "tk"))
        grant = Grant(
            new_grant_id(), "paid", PATHS["token"], "resource", ("GET", "HEAD"),
            int(time.time()) + 3600, "00" * 32, PRICE, "bench",
        )  # fmt: skip
        bearer = {"free": None, "token": tokens.mint(grant)}
        async with aiohttp.ClientSession() as http:
            bearer["metered"] = await open_tab(http, base, devnet, args.top_up)
            start = await tab_balance(http, base, bearer["metered"])
        root = psutil.Process(proc.pid)
        mine = ours | {root.pid} | {c.pid for c in root.children(recursive=True)}
        for route in ROUTES:
            url = base + PATHS[route]
            print(f"... {layout.label}: {LABELS[route]} ({args.duration:g}s)", flush=True)
            warm = wrk(url, bearer[route], args.warmup, args)
            cpu, others, steal = gateway_cpu(root), foreign_cpu(mine), steal_seconds()
            started = time.monotonic()
            run = wrk(url, bearer[route], args.duration, args)
            wall = time.monotonic() - started
            run.cpu_us = (gateway_cpu(root) - cpu) / max(run.requests, 1) * 1e6
            other = sum(t - others.get(pid, 0.0) for pid, t in foreign_cpu(mine).items())
            run.other = 100 * (other + steal_seconds() - steal) / wall
            layout.runs[route] = run
            if route == "metered":
                layout.counted = warm.requests + run.requests
                layout.socket_errors = warm.socket_errors + run.socket_errors
        await asyncio.sleep(0.5)  # settles of the last answers
        async with aiohttp.ClientSession() as http:
            end = await tab_balance(http, base, bearer["metered"])
        layout.charged, rest = divmod(start - end, PRICE * MSAT)
        if rest:
            raise SystemExit(f"{layout.label}: the tab lost {start - end} msat, not whole requests")
    except BaseException:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        print(f"gateway log ({layout.label}):\n{tail}", file=sys.stderr)
        raise
    finally:
        stop(proc)


# --- the whole run -----------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    if not shutil.which("wrk") or not shutil.which("redis-server"):
        raise SystemExit("needs wrk and redis-server: run ./dev bench-metering")
    if not 1000 <= args.top_up <= FAUCET_CAP - FEE:
        raise SystemExit(f"--top-up must be from 1000 to {FAUCET_CAP - FEE:,} satoshis")
    workdir = Path(tempfile.mkdtemp(prefix="farebox-meterbench-"))
    upstream_port, devnet_port = free_port(), free_port()
    (workdir / "p").mkdir()
    (workdir / "p" / "p.yaml").write_text(policy_yaml(upstream_port))
    subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "generate", "--out", str(workdir / "k")],
        check=True,
        capture_output=True,
    )
    KeyRing.load(workdir / "tk")  # created once, shared by every gateway and the bench
    upstream = [sys.executable, "-m", "gateway.demo.upstream", "--port", str(upstream_port)]
    devnet = [sys.executable, "-m", "gateway", "devnet", "--port", str(devnet_port),
              "--block-interval", "0"]  # fmt: skip
    procs = [spawn(upstream, workdir / "upstream.log"), spawn(devnet, workdir / "devnet.log")]
    redis = RedisServer(workdir / "redis")
    redis.start()
    layouts = [Layout("memory, 1 worker", "memory", 1), Layout("Redis, 1 worker", redis.url, 1)]
    if not args.no_two_workers:
        layouts.append(Layout("Redis, 2 workers", redis.url, 2))
    try:
        await wait_port(upstream_port)
        await wait_port(devnet_port)
        ours = {os.getpid(), redis.process.pid} | {p.pid for p in procs}
        for layout in layouts:
            await measure(layout, workdir, f"http://127.0.0.1:{devnet_port}", ours, args)
        print(f"... store calls: reserve + settle x{args.operations}", flush=True)
        direct = {"memory": await reserve_settle(MemoryStore(), args.operations, args.concurrency)}
        rstore = RedisStore.from_url(redis.url)
        try:
            direct["redis"] = await reserve_settle(rstore, args.operations, args.concurrency)
        finally:
            await rstore.close()
    finally:
        redis.stop()
        for proc in reversed(procs):
            stop(proc)
        if args.keep_temp:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(layouts, direct, args)


def report(layouts: list[Layout], direct: dict[str, float], args: argparse.Namespace) -> None:
    print()
    print(
        f"Farebox metering benchmark: {os.cpu_count()} CPUs, sample upstream GET /bench/hello "
        f"(1 KiB), wrk -t1 -c{args.connections} -d{args.duration:g}s; {PRICE} sat per request"
    )
    print(
        f"{'layout':<18} {'route':<20} {'req/s':>8} {'p50':>8} {'p99':>8} {'CPU/req':>8}"
        f" {'vs free':>8} {'vs token':>9} {'other CPU':>10}"
    )
    for layout in layouts:
        free, token = layout.runs["free"], layout.runs["token"]
        for i, route in enumerate(ROUTES):
            run = layout.runs[route]
            vs_token = f"{run.rps / token.rps:>8.2f}x" if route == "metered" else ""
            print(
                f"{layout.label if i == 0 else '':<18} {LABELS[route]:<20} {run.rps:>8,.0f}"
                f" {run.p50_ms:>6.2f}ms {run.p99_ms:>6.2f}ms {run.cpu_us:>6.0f}us"
                f" {run.rps / free.rps:>7.2f}x {vs_token:>9} {run.other:>9.0f}%"
            )
    noisy = max(run.other for layout in layouts for run in layout.runs.values())
    if noisy >= NOISY:
        print(
            f"warning: other processes or the hypervisor took up to {noisy:.0f}% of a core "
            "during a run: the machine was not quiet, the numbers are skewed"
        )
    by_label = {layout.label: layout for layout in layouts}
    memory, redis = by_label["memory, 1 worker"], by_label["Redis, 1 worker"]
    ratio = redis.runs["metered"].rps / memory.runs["metered"].rps
    print(f"metered, Redis / memory (1 worker): {ratio:.2f}x req/s")
    if "Redis, 2 workers" in by_label:
        two = by_label["Redis, 2 workers"].runs["metered"].rps / redis.runs["metered"].rps
        print(f"metered on Redis, 2 workers / 1 worker: {two:.2f}x req/s")

    print()
    print("Tab accounting (the balance from GET /.well-known/farebox/tab, before and after wrk):")
    wrong = False
    for layout in layouts:
        diff = layout.charged - layout.counted
        if diff == 0:
            verdict = "exact"
        elif 0 < diff <= 2 * args.connections:
            verdict = (
                f"{diff} more charged than wrk counted: answers delivered while wrk was "
                "stopping (at most one per connection per run)"
            )
        else:
            verdict = f"MISMATCH by {diff:+,}"
            wrong = True
        errors = f", {layout.socket_errors} socket errors" if layout.socket_errors else ""
        print(
            f"  {layout.label:<18} wrk counted {layout.counted:>9,} metered answers{errors};"
            f" the tab was charged {layout.charged:>9,} x {PRICE} sat: {verdict}"
        )
    print()
    print(f"Store calls alone, {args.concurrency} in flight from one process:")
    print(
        f"  reserve + settle pairs: memory {direct['memory']:,.0f}/s, Redis {direct['redis']:,.0f}/s"
        f" (Redis / memory {direct['redis'] / direct['memory']:.2f}x)"
    )
    if wrong:
        raise SystemExit("the tab's balance does not match the requests served")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=10, help="seconds per measured wrk run (default 10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2, help="seconds of the wrk warm-up runs (default 2)"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument(
        "--top-up",
        type=int,
        default=5_000_000,
        metavar="SATS",
        help="satoshis paid into each tab: at most 9,999,990 (the devnet faucet's cap less "
        "the fee); default 5,000,000, five million 1-sat requests, more than wrk sends",
    )
    parser.add_argument(
        "--no-two-workers", action="store_true", help="skip the layout with 2 workers on Redis"
    )
    parser.add_argument(
        "--operations",
        type=int,
        default=20000,
        help="direct reserve + settle pairs (default 20000)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="direct store calls in flight (default 64)"
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    asyncio.run(main(parser.parse_args()))
