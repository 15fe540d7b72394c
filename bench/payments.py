#!/usr/bin/env python3
"""Payments accepted per second, over HTTP and stage by stage.

One command: `./dev bench-payments` (or `.venv/bin/python bench/payments.py`).

It starts the sample upstream and gateway workers in front of it. The bench
funds itself from a devnet faucet, splits the coins into proven outputs,
signs one BRC-121 payment per output, and sends them all with a fixed
concurrency, each for its own resource. Layouts:

- 1 worker, memory store, the devnet inside the gateway process (in-process
  chain tracker);
- 1 and 2 workers on a Redis store the bench starts, sharing a devnet
  process (tracker over HTTP behind the cache, ARC client to broadcast);
  `--no-shared` skips these.

bench/all.py reuses `measure` with its nginx origin as the upstream.
Payments are sent by a small HTTP/1.1 client (`fire`), not aiohttp's, so
the load generator costs the shared cores little (the sample upstream
still does). The Redis layouts need `redis-server` on PATH (`./dev
bench-payments` installs it).

Broadcast modes: `none` (payments are verified, claimed, receipted and
tokenised but not broadcast: Farebox's own cost, "no broadcast wait") and
`devnet` (each payment is also submitted to the devnet, which checks its
scripts again and updates its UTXO set: a stand-in for ARC's answer).

Then the same kind of payments go through the cashier in this process, to
time each stage (parse, derivation, structure, output, merkle, scripts,
claim, broadcast, token, receipt), in CPU time of the thread (so other work
on a shared machine does not count).

Last, `crypto_limit` times the three signature operations one payment needs
(an ECDSA verification, a BRC-42 derivation, an Ed25519 token signature) in
this process, and the bench prints payments/s over what they allow on one
core (1 / their sum). Because req/s is noisy on a shared machine, each HTTP
layout also reports the worker processes' CPU time per payment (from
/proc), and the payments/s one core would give at that cost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from bsv import P2PKH, PrivateKey, PublicKey, Transaction, TransactionInput, TransactionOutput  # noqa: E402

from gateway.bsv.derivation import payee_key_for_sender  # noqa: E402

PRICE = 10
COIN = 300  # satoshis per prepared output
FAN_OUT = 10  # outputs per splitting transaction (wallet parents have 2-3)
NONCE = "YmVuY2g="


@dataclass
class Prepared:
    path: str
    headers: dict[str, str]
    beef: bytes
    txid: str
    time_ms: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port}")


# --- the server side (a separate process) ----------------------------------------


def run_server(args: argparse.Namespace) -> None:
    import uvloop

    from gateway.chain import BroadcastResult
    from gateway.chain.arc import ArcBroadcaster
    from gateway.chain.headers import CachingTracker, DevnetTracker
    from gateway.chain.local import LocalBroadcaster
    from gateway.config import Settings
    from gateway.devnet import Devnet
    from gateway.devnet import start as start_devnet
    from gateway.policy.reload import PolicyHolder
    from gateway.serve.assemble import Startup
    from gateway.serve.worker import configure_logging, run_worker
    from gateway.tokens import KeyRing, Tokens

    class NoBroadcast:
        async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
            return BroadcastResult(txid or "", "SEEN_ON_NETWORK", True, False)

    configure_logging("warning")
    identity = PrivateKey(bytes.fromhex(args.server_key))
    folder = Path(args.workdir)
    startup = Startup(
        PolicyHolder.load(folder / "policies"), identity, Tokens(KeyRing.load(folder / "tk"))
    )
    settings = Settings(
        host="127.0.0.1",
        port=args.port,
        policies=folder / "policies",
        watch=False,
        cookie_secure=False,
        receipts_file=folder / f"receipts-{os.getpid()}.jsonl",  # not the caller's folder
    )

    settings = settings.model_copy(update={"store": args.store})

    async def main() -> None:
        if args.devnet_url:  # a devnet process shared by several workers
            tracker = CachingTracker(DevnetTracker(args.devnet_url))
            broadcaster = (
                ArcBroadcaster(args.devnet_url) if args.broadcast == "devnet" else NoBroadcast()
            )
            await run_worker(settings, startup, chain=(tracker, broadcaster), reuse_port=True)
            return
        runner, devnet = await start_devnet("127.0.0.1", args.devnet_port, devnet=Devnet())
        broadcaster = LocalBroadcaster(devnet) if args.broadcast == "devnet" else NoBroadcast()
        try:
            await run_worker(settings, startup, chain=(devnet, broadcaster))
        finally:
            await runner.cleanup()

    profile = os.environ.get("FAREBOX_BENCH_PROFILE")  # a folder: cProfile each server there
    if not profile:
        uvloop.run(main())
        return
    import cProfile

    with cProfile.Profile() as profiler:
        uvloop.run(main())
    profiler.dump_stats(Path(profile) / f"payments-server-{os.getpid()}.prof")


# --- preparing payments ------------------------------------------------------------


async def fund(
    http: aiohttp.ClientSession, devnet: str, client: PrivateKey, count: int
) -> list[Transaction]:
    """Proven splitting transactions whose outputs each fund one payment."""
    splits = []
    per_faucet = FAN_OUT * COIN + 1000
    for _ in range((count + FAN_OUT - 1) // FAN_OUT):
        async with http.post(
            f"{devnet}/faucet", json={"address": client.address(), "satoshis": per_faucet}
        ) as r:
            coin = Transaction.from_beef(bytes.fromhex((await r.json())["beef"]))
        split = Transaction(
            [
                TransactionInput(
                    source_transaction=coin,
                    source_output_index=0,
                    unlocking_script_template=P2PKH().unlock(client),
                )
            ],
            [TransactionOutput(P2PKH().lock(client.address()), COIN) for _ in range(FAN_OUT)],
        )
        split.sign()
        async with http.post(
            f"{devnet}/v1/tx", data=split.hex(), headers={"Content-Type": "text/plain"}
        ) as r:
            assert r.status == 200, await r.text()
        splits.append(split)
    async with http.post(f"{devnet}/mine", json={"blocks": 1}) as r:
        assert r.status == 200
    proven = []
    for split in splits:
        async with http.get(f"{devnet}/beef/{split.txid()}") as r:
            proven.append(Transaction.from_beef(bytes.fromhex((await r.json())["beef"])))
    return proven


def prepare(
    server: PublicKey, client: PrivateKey, splits: list[Transaction], count: int, first: int
) -> list[Prepared]:
    out = []
    now = str(int(time.time() * 1000))
    suffix = base64.b64encode(now.encode()).decode()
    payee = payee_key_for_sender(server, client, NONCE, suffix).address()
    parent_beef = {s.txid(): s.to_beef() for s in splits}
    for i in range(count):
        split = splits[i // FAN_OUT]
        tx = Transaction(
            [
                TransactionInput(
                    source_transaction=split,
                    source_output_index=i % FAN_OUT,
                    unlocking_script_template=P2PKH().unlock(client),
                )
            ],
            [
                TransactionOutput(P2PKH().lock(payee), PRICE),
                TransactionOutput(P2PKH().lock(client.address()), COIN - PRICE - 2),
            ],
        )
        tx.sign()
        beef = _atomic(tx, parent_beef[split.txid()])
        headers = {
            "x-bsv-beef": base64.b64encode(beef).decode(),
            "x-bsv-sender": client.public_key().hex(),
            "x-bsv-nonce": NONCE,
            "x-bsv-time": now,
            "x-bsv-vout": "0",
        }
        out.append(Prepared(f"/bench/bytes/{first + i}", headers, beef, tx.txid(), now))
    return out


def _atomic(tx: Transaction, parent_beef: bytes) -> bytes:
    """Atomic BEEF: the proven parent's V1 BEEF with the payment appended."""
    body = bytearray(parent_beef)
    count_at = _bumps_end(parent_beef)
    assert body[count_at] == 1  # just the parent
    body[count_at] = 2
    body += tx.serialize() + b"\x00"  # no BUMP: unconfirmed
    return b"\x01\x01\x01\x01" + bytes.fromhex(tx.txid())[::-1] + bytes(body)


def _bumps_end(beef: bytes) -> int:
    from bsv import MerklePath
    from bsv.utils import Reader

    reader = Reader(beef)
    reader.read_uint32_le()
    for _ in range(reader.read_var_int_num()):
        MerklePath.from_reader(reader)
    return reader.tell()


# --- measuring ---------------------------------------------------------------------


async def fire(
    base: str, payments: list[Prepared], concurrency: int
) -> tuple[float, list[float], dict[int, int]]:
    """Send each payment once over `concurrency` keep-alive connections; the
    elapsed seconds, each request's latency (seconds) and the count of each
    status.

    The requests are encoded before the clock starts and the answers read by
    a small HTTP/1.1 protocol (status, Content-Length or chunked body), as
    wrk does: the load generator shares the machine's cores with the worker,
    and aiohttp's client cost (about 150 us a request) would be timed as if
    it were Farebox's. Interim (1xx) answers are skipped and chunked
    trailers read; a body that ends only when the connection closes (no
    length, not chunked: neither Farebox nor nginx sends one to a keep-alive
    HTTP/1.1 request) is not read. Raises ConnectionError when the server closes a
    connection before answering, TimeoutError after ANSWER_TIMEOUT seconds
    without an answer.
    """
    url = urllib.parse.urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    encoded = [_request_bytes(p, url.netloc) for p in payments]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(encoded)
    loop = asyncio.get_running_loop()

    async def connection() -> None:
        transport, reader = await loop.create_connection(_Answers, host, port)
        try:
            for request in queue:
                if reader.closed:  # the server ended the connection: open another
                    transport.close()
                    transport, reader = await loop.create_connection(_Answers, host, port)
                started = time.perf_counter()
                reader.waiter = loop.create_future()
                transport.write(request)
                status = await asyncio.wait_for(reader.waiter, ANSWER_TIMEOUT)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, statuses


ANSWER_TIMEOUT = 60.0  # seconds for one answer before the run fails (TimeoutError)


def _request_bytes(payment: Prepared, netloc: str) -> bytes:
    lines = [f"GET {payment.path} HTTP/1.1", f"Host: {netloc}"]
    lines += [f"{name}: {value}" for name, value in payment.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Answers(asyncio.Protocol):
    """Reads HTTP/1.1 answers one at a time: the status of each to `waiter`."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def _parse(self) -> None:
        buf = self.buffer
        while True:  # past any interim (1xx) answers
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            if not 100 <= status < 200 or status == 101:
                break
            del buf[: end + 4]
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        body = end + 4
        if fields.get("transfer-encoding", "").lower() == "chunked":
            at = body
            while True:
                line_end = buf.find(b"\r\n", at)
                if line_end < 0:
                    return
                size = int(bytes(buf[at:line_end]).split(b";")[0], 16)
                if size == 0:  # the last chunk: then trailer fields, up to an empty line
                    at = line_end + 2
                    while True:
                        line_end = buf.find(b"\r\n", at)
                        if line_end < 0:
                            return
                        at, empty = line_end + 2, line_end == at
                        if empty:
                            break
                    break
                at = line_end + 2 + size + 2
                if len(buf) < at:
                    return
            done = at
        else:
            done = body + int(fields.get("content-length", "0"))
            if len(buf) < done:
                return
        del buf[:done]
        if fields.get("connection", "").lower() == "close":
            self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)


async def stages(
    server: PrivateKey, payments: list[Prepared], roots: dict[int, str], *, cpu: bool = True
) -> tuple[dict[str, float], float]:
    """Run the cashier in this process and average each stage (seconds per payment),
    with the elapsed seconds. With `cpu` the stages are timed in CPU time of
    this thread (other processes' load does not count), else in wall time."""
    from gateway.payments import verify

    clock = verify.STAGE_CLOCK
    verify.STAGE_CLOCK = time.thread_time if cpu else time.perf_counter
    try:
        return await _stages(server, payments, roots)
    finally:
        verify.STAGE_CLOCK = clock


async def _stages(
    server: PrivateKey, payments: list[Prepared], roots: dict[int, str]
) -> tuple[dict[str, float], float]:
    from gateway.chain import BroadcastResult
    from gateway.edge.paths import canonicalize
    from gateway.payments.cashier import Cashier
    from gateway.payments.remittance import remittance
    from gateway.policy import load_policy
    from gateway.store.memory import MemoryStore
    from gateway.tokens import KeyRing, Tokens

    class Roots:
        async def is_valid_root_for_height(self, root: str, height: int) -> bool:
            return roots.get(height) == root

    class NoBroadcast:
        async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
            return BroadcastResult(txid or "", "SEEN_ON_NETWORK", True, False)

    with tempfile.TemporaryDirectory() as tmp:
        policy_dir = Path(tmp) / "p"
        policy_dir.mkdir()
        (policy_dir / "p.yaml").write_text(policy_yaml(1))
        policy = load_policy(policy_dir)
        cashier = Cashier(
            server,
            tracker=Roots(),
            broadcaster=NoBroadcast(),
            store=MemoryStore(),
            tokens=Tokens(KeyRing.load(Path(tmp) / "tk")),
        )
        totals: dict[str, float] = {}
        started = time.perf_counter()
        for p in payments:
            match = policy.match(None, canonicalize(p.path), "GET")
            h = p.headers
            payment = remittance(
                {
                    "beef": p.beef,
                    "sender": h["x-bsv-sender"],
                    "nonce": h["x-bsv-nonce"],
                    "time": h["x-bsv-time"],
                    "vout": 0,
                },
                1 << 20,
            )
            accepted = await cashier.accept(payment, match, "GET", PRICE)
            for stage, seconds in accepted.timings.items():
                totals[stage] = totals.get(stage, 0.0) + seconds
        elapsed = time.perf_counter() - started
    return {k: v / len(payments) for k, v in totals.items()}, elapsed


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, from /proc; 0.0 when
    it cannot be read (not Linux, or the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After "pid (comm)": state is field 3, utime 14 and stime 15 (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _median_us(fn: Callable[[int], object], calls: int) -> float:
    """Median microseconds of `calls` single calls of fn(i) (robust to preemption)."""
    times = []
    for i in range(calls):
        started = time.perf_counter_ns()
        fn(i)
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times) / 1000


def crypto_limit(calls: int = 2000) -> dict[str, float]:
    """What one payment's signature operations cost in this process, and the
    payments/s they allow on one core: 1 / (verify + derive + sign).

    - verify_us: bsv-sdk `PublicKey.verify` of a DER signature over a 32-byte
      hash, as a payment's script check does for each input (OP_CHECKSIG on
      libsecp256k1 when bsv-sdk's native backend is there);
    - derive_us: `gateway.bsv.derivation.payee_key`, bsv-sdk's BRC-42
      derivation of the key a payment must pay, a new invoice each call;
    - sign_us: `Tokens.mint`, the EdDSA access token issued after a payment.

    Also, for the record: `ed25519_us` (the bare signature in `sign_us`),
    `derive_fast_us` (the cashier's `PayeeScripts`, a new sender each call:
    no cached ECDH) and `derive_cached_us` (a payer seen before). Medians of
    `calls` single calls, in microseconds; `limit_per_s` in payments/s.
    """
    from gateway.bsv.derivation import PayeeScripts, payee_key
    from gateway.tokens import Grant, KeyRing, Tokens, new_grant_id

    key = PrivateKey()
    pub = key.public_key()
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(256)]
    signatures = [key.sign(h, hasher=None) for h in hashes]
    if not all(pub.verify(sig, h, hasher=None) for sig, h in zip(signatures, hashes, strict=True)):
        raise SystemExit("a signature made for the timing did not verify")
    server = PrivateKey()
    sender = PrivateKey().public_key()
    senders = [PrivateKey().public_key() for _ in range(256)]
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Tokens(KeyRing.load(Path(tmp) / "tk"))
    ring_key = tokens.ring.keys[tokens.ring.active]
    expires = int(time.time()) + 3600
    scripts = PayeeScripts(server, cache_size=1)

    def sign(i: int) -> str:
        grant = Grant(
            new_grant_id(), "bench", f"/bench/bytes/{i}", "resource", ("GET",),
            expires, f"{i:064x}", PRICE, "ab" * 16,
        )  # fmt: skip
        return tokens.mint(grant)

    suffix = "MTcwMDAwMDAwMDAwMA=="
    warm = PayeeScripts(server)
    out = {
        "verify_us": _median_us(lambda i: pub.verify(signatures[i & 255], hashes[i & 255], hasher=None), calls),
        "derive_us": _median_us(lambda i: payee_key(server, sender, f"bench-{i}", suffix), calls),
        "sign_us": _median_us(sign, calls),
        "ed25519_us": _median_us(lambda i: ring_key.sign(b"%0300d" % i), calls),
        # cache_size=1 and 256 senders in turn: every call multiplies anew
        "derive_fast_us": _median_us(lambda i: scripts.script(senders[i & 255], f"b-{i}", suffix), calls),
        "derive_cached_us": _median_us(lambda i: warm.script(sender, f"b-{i}", suffix), calls),
    }  # fmt: skip
    total = out["verify_us"] + out["derive_us"] + out["sign_us"]
    out["total_us"] = total
    out["limit_per_s"] = 1e6 / total
    return out


def policy_yaml(upstream_port: int) -> str:
    return (
        "services:\n  bench:\n"
        f"    upstream: http://127.0.0.1:{upstream_port}\n"
        "    routes:\n"
        "      - path: /bench/bytes/{n}\n"
        f"        price: {PRICE}\n"
    )


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass(frozen=True)
class Layout:
    """Where the parts run for one measurement."""

    mode: str  # broadcast: "none" or "devnet"
    workers: int = 1
    shared: bool = False  # Redis store and a devnet process shared by the workers

    @property
    def label(self) -> str:
        where = "Redis, devnet process" if self.shared else "memory, devnet in process"
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}, {where}"


async def measure(
    args: argparse.Namespace,
    layout: Layout,
    workdir: Path,
    server: PrivateKey,
    redis_url: str | None,
) -> dict:
    port, devnet_port = free_port(), free_port()
    procs = []
    cmd = [sys.executable, __file__, "--role", "server", "--port", str(port), "--workdir", str(workdir),
           "--server-key", server.hex(), "--broadcast", layout.mode]  # fmt: skip
    tag = f"{layout.mode}-{layout.workers}-{int(layout.shared)}"
    if layout.shared:
        devnet_cmd = [
            sys.executable,
            "-m",
            "gateway",
            "devnet",
            "--port",
            str(devnet_port),
            "--block-interval",
            "0",
        ]
        procs.append(spawn(devnet_cmd, workdir / f"devnet-{tag}.log"))
        await wait_port(devnet_port)
        cmd += ["--devnet-url", f"http://127.0.0.1:{devnet_port}", "--store", str(redis_url)]
    else:
        cmd += ["--devnet-port", str(devnet_port)]
    try:
        for n in range(layout.workers):
            procs.append(spawn(cmd, workdir / f"server-{tag}-{n}.log"))
        await wait_port(port)
        await wait_port(devnet_port)
        await asyncio.sleep(0.5 * layout.workers)  # every worker listening
        client = PrivateKey()
        devnet = f"http://127.0.0.1:{devnet_port}"
        total = args.payments + args.warmup
        async with aiohttp.ClientSession() as http:
            splits = await fund(http, devnet, client, total + args.stage_payments)
            roots = {}
            for split in splits:
                height = split.merkle_path.block_height
                async with http.get(f"{devnet}/headers/{height}") as r:
                    roots[height] = (await r.json())["merkleRoot"]
        payments = prepare(
            server.public_key(), client, splits, total + args.stage_payments, first=100
        )
        warm, timed, staged = (
            payments[: args.warmup],
            payments[args.warmup : total],
            payments[total:],
        )
        base = f"http://127.0.0.1:{port}"
        await fire(base, warm, args.concurrency)
        servers = procs[-layout.workers :]
        cpu_before = sum(cpu_seconds(p.pid) for p in servers)
        elapsed, latencies, statuses = await fire(base, timed, args.concurrency)
        worker_cpu = sum(cpu_seconds(p.pid) for p in servers) - cpu_before
        per_stage, stage_elapsed = (
            await stages(server, staged, roots)
            if layout.mode == "none" and not layout.shared
            else ({}, 0.0)
        )
        ok = statuses.get(200, 0)
        return {
            "layout": layout.label,
            "mode": layout.mode,
            "payments": len(timed),
            "accepted": ok,
            "statuses": statuses,
            "payments_per_s": ok / elapsed,
            # Worker CPU (all workers, user + system) per payment sent: what
            # req/s would be on a machine of its own, one core per worker.
            "worker_cpu_us": worker_cpu / len(timed) * 1e6 if timed else None,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000,
            "stages_us": {k: v * 1e6 for k, v in per_stage.items()},
            "in_process_per_s": len(staged) / stage_elapsed if stage_elapsed else None,
        }
    finally:
        for proc in reversed(procs):
            stop(proc)


async def bench(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="farebox-paybench-"))
    upstream_port = free_port()
    (workdir / "policies").mkdir()
    (workdir / "policies" / "p.yaml").write_text(policy_yaml(upstream_port))
    upstream = spawn(
        [sys.executable, "-m", "gateway.demo.upstream", "--port", str(upstream_port)],
        workdir / "upstream.log",
    )
    server = PrivateKey()
    layouts = [Layout("none"), Layout("devnet")]
    if not args.no_shared:
        layouts += [Layout("none", 1, True), Layout("none", 2, True), Layout("devnet", 2, True)]
    redis = None
    if not args.no_shared:
        from tests.redis_servers import RedisServer

        redis = RedisServer(workdir / "redis")
        redis.start()
    results = []
    try:
        await wait_port(upstream_port)
        for layout in layouts:
            print(
                f"... {layout.label}, broadcast {layout.mode}: {args.payments + args.warmup} payments, {args.concurrency} in flight",
                flush=True,
            )
            # The machine's speed drifts (other tenants, clocks): the signature
            # operations are timed just before and just after each layout.
            before = crypto_limit()
            result = await measure(args, layout, workdir, server, redis.url if redis else None)
            result["crypto_around"] = [before, crypto_limit()]
            results.append(result)
    finally:
        stop(upstream)
        if redis is not None:
            redis.stop()
    print()
    print(
        f"Farebox payments benchmark: {os.cpu_count()} CPUs, BRC-121 headers over HTTP, price {PRICE} sats"
    )
    print(
        f"{'layout':<38} {'broadcast':<10} {'payments/s':>11} {'p50':>9} {'p99':>9} "
        f"{'worker CPU':>11} {'per core':>9}  statuses"
    )
    for r in results:
        cpu_us = r.get("worker_cpu_us")
        cpu = f"{cpu_us:>9.0f}us {1e6 / cpu_us:>9,.0f}" if cpu_us else f"{'?':>11} {'?':>9}"
        print(
            f"{r['layout']:<38} {r['mode']:<10} {r['payments_per_s']:>11,.0f} {r['p50_ms']:>7.1f}ms {r['p99_ms']:>7.1f}ms {cpu}  {r['statuses']}"
        )
    staged = next((r for r in results if r["stages_us"]), None)
    if staged:
        print()
        print("Per payment, in process (cashier alone, no HTTP, no broadcast; CPU time):")
        total = sum(staged["stages_us"].values())
        for stage, us in staged["stages_us"].items():
            print(f"  {stage:<11} {us:>8.1f} us  {us / total:>5.1%}")
        print(
            f"  {'total':<11} {total:>8.1f} us  -> {staged['in_process_per_s']:,.0f} payments/s on one core"
        )
    print()
    print("Crypto limit, timed before and after each layout (1 / (verify + derive + sign)):")
    for r in results:
        around = r["crypto_around"]
        crypto = {key: statistics.mean(c[key] for c in around) for key in around[0]}
        crypto["limit_per_s"] = 1e6 / crypto["total_us"]
        r["crypto"] = crypto
        limits = " and ".join(f"{c['limit_per_s']:,.0f}" for c in around)
        cpu_us = r.get("worker_cpu_us")
        at_cost = (
            f"; at its worker CPU cost {1e6 / cpu_us / crypto['limit_per_s']:.2f}" if cpu_us else ""
        )
        print(
            f"  {r['layout']}, broadcast {r['mode']}: verify {crypto['verify_us']:.1f} us + "
            f"derive {crypto['derive_us']:.1f} us + token {crypto['sign_us']:.1f} us "
            f"(Ed25519 alone {crypto['ed25519_us']:.1f}; the cashier's derivation "
            f"{crypto['derive_fast_us']:.1f} for a new payer, {crypto['derive_cached_us']:.1f} "
            f"for one seen before) -> limit {crypto['limit_per_s']:,.0f}/s ({limits}); "
            f"{r['payments_per_s']:,.0f}/s = {r['payments_per_s'] / crypto['limit_per_s']:.2f} "
            f"x the limit{at_cost}"
        )
    print()
    for workers in sorted({r["layout"].split(" ")[0] for r in results}):
        best = max(r["payments_per_s"] for r in results if r["layout"].startswith(workers + " "))
        print(
            f"Aim >= 1,500 payments/s with {workers} worker(s): {'met' if best >= 1500 else 'MISSED'} (best {best:,.0f}/s)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--payments", type=int, default=3000, help="payments timed per layout (default 3000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=300, help="payments sent first, untimed (default 300)"
    )
    parser.add_argument(
        "--stage-payments",
        type=int,
        default=500,
        help="payments timed stage by stage in process (default 500)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="keep-alive connections, one payment in flight on each (default 32)",
    )
    parser.add_argument(
        "--no-shared",
        action="store_true",
        help="skip the layouts with Redis and a devnet process (1 and 2 workers)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    # Internal: the gateway process.
    parser.add_argument(
        "--role", default="bench", choices=["bench", "server"], help=argparse.SUPPRESS
    )
    parser.add_argument("--store", default="memory", help=argparse.SUPPRESS)
    for name in ("--port", "--devnet-port"):
        parser.add_argument(name, type=int, help=argparse.SUPPRESS)
    for name in ("--workdir", "--server-key", "--broadcast", "--devnet-url"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        run_server(args)
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
