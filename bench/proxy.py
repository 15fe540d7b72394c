#!/usr/bin/env python3
"""Proxy benchmark: Farebox against nginx and against the upstream hit directly.

Everything runs on 127.0.0.1 from one temporary directory: the sample aiohttp
upstream, an nginx serving a static 1 KiB file (a much faster upstream, so the
proxy's own cost shows), an nginx reverse proxy in front of both, and
`farebox serve` with a free route in front of both. `wrk` loads each target in
turn, after a short warm-up, and the ratios farebox/nginx and farebox/direct
are printed per scenario. Run it with `./dev bench` (which installs nginx-light
and wrk) or `.venv/bin/python bench/proxy.py --help`.

It is a measurement, not a test: it exits 0 even when Farebox misses the aim,
and non-zero only when it could not measure (a server failed to start, wrk
failed, Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import psutil

HOST = "127.0.0.1"
AIM = 0.4  # from the issue: Farebox >= 0.4 x nginx requests/s
BODY_SIZE = 1024  # /bench/hello and the static file are both exactly 1 KiB
STREAM_SIZE = 1 << 20
STATIC_FILE = "/static/1k.json"

START_TIMEOUT = 30.0  # seconds a server gets to accept connections
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL on the way out
# wrk's default 2s timeout silently drops slow responses from the latency
# statistics; a generous one keeps them in (and counts real hangs as errors).
WRK_TIMEOUT = "10s"
# Percent of one core taken by others during a run above which we say so.
NOISY = 20.0


class BenchError(Exception):
    """Something prevented a measurement; the message says what."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP, turned into an exception so every `finally` still runs."""


# --------------------------------------------------------------------------
# Scenarios and results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str
    size: int
    origin: str  # which process answers: "upstream" (aiohttp) or "origin" (static nginx)
    streaming: bool = False


SCENARIOS = (
    Scenario(
        "hello",
        "sample aiohttp upstream, GET /bench/hello (1 KiB JSON)",
        "/bench/hello",
        BODY_SIZE,
        "upstream",
    ),
    Scenario(
        "static",
        f"static nginx upstream, GET {STATIC_FILE} (1 KiB file)",
        STATIC_FILE,
        BODY_SIZE,
        "origin",
    ),
    Scenario(
        "stream",
        f"streaming, GET /bench/bytes/{STREAM_SIZE} (1 MiB body) from the sample upstream",
        f"/bench/bytes/{STREAM_SIZE}",
        STREAM_SIZE,
        "upstream",
        streaming=True,
    ),
)
TARGETS = ("direct", "nginx", "farebox")


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    transfer_mib_s: float
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


@dataclass
class Run:
    scenario: str
    target: str
    url: str
    wrk: WrkResult
    # Percent of one core used during the measured run, per component.
    cpu_percent: dict[str, float] = field(default_factory=dict)
    proxy_cpu_us_per_request: float | None = None
    # Load that is not ours (other processes, the hypervisor): when it is
    # high, the run measured the machine's neighbours as much as the proxy.
    other_cpu_percent: float = 0.0
    steal_percent: float = 0.0


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_BINARY_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Pull the numbers out of `wrk --latency` text (wrk 4.x), whatever units it chose."""

    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    rps = find(r"^Requests/sec:\s*([\d.]+)")
    p50 = find(rf"^\s*50(?:\.0+)?%\s+{_TIME}")
    p99 = find(rf"^\s*99(?:\.0+)?%\s+{_TIME}")
    total = find(rf"^\s*(\d+) requests in {_TIME}")
    if not (rps and p50 and p99 and total):
        raise BenchError(f"could not parse wrk output:\n{output}")
    transfer = find(r"^Transfer/sec:\s*([\d.]+)\s*([KMGTP]?)B")
    non_2xx = find(r"Non-2xx or 3xx responses:\s*(\d+)")
    sock = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=_ms(*p50.groups()),
        p99_ms=_ms(*p99.groups()),
        transfer_mib_s=(
            float(transfer.group(1)) * _BINARY_UNITS[transfer.group(2)] / (1 << 20)
            if transfer
            else 0.0
        ),
        requests=int(total.group(1)),
        seconds=_ms(total.group(2), total.group(3)) / 1000,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(map(int, sock.groups())) if sock else 0,
    )


def run_wrk(args: argparse.Namespace, url: str, seconds: float, *, latency: bool) -> str:
    cmd = [args.wrk, "-t", str(args.threads), "-c", str(args.connections)]
    cmd += ["-d", f"{max(1, round(seconds))}s", "--timeout", WRK_TIMEOUT]
    if latency:
        cmd.append("--latency")
    cmd.append(url)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + 60, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish: {' '.join(cmd)}") from None
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr}")
    return done.stdout


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    def processes(self) -> list[psutil.Process]:
        """The server and its workers (nginx workers, farebox worker processes)."""
        try:
            root = psutil.Process(self.popen.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def children_cpu_seconds() -> float:
    # wrk is our only child that exits during a measured run, so the delta of
    # RUSAGE_CHILDREN around it is wrk's own CPU time.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def foreign_cpu(ours: set[int]) -> dict[int, float]:
    """CPU seconds so far of every user-space process that is not part of the bench."""
    out: dict[int, float] = {}
    for proc in psutil.process_iter(["pid", "ppid"]):
        pid, ppid = proc.info["pid"], proc.info["ppid"]
        # Kernel threads (children of kthreadd, pid 2) include the softirq
        # workers that carry our own loopback traffic: not someone else's load.
        if pid in ours or pid in (0, 2) or ppid == 2:
            continue
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[pid] = times.user + times.system
    return out


def steal_seconds() -> float:
    return getattr(psutil.cpu_times(), "steal", 0.0)


def stop(server: Server) -> None:
    """SIGTERM the server's whole process group, then SIGKILL whatever is left."""
    pgid = server.popen.pid  # start_new_session=True made it a group leader
    stragglers = server.processes()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.popen.wait(timeout=STOP_TIMEOUT)
    # Workers may outlive a master that was killed or exited early; the group
    # kill reaches them, and the psutil list covers any that left the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for proc in stragglers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.popen.wait(timeout=STOP_TIMEOUT)


def free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen so the kernel cannot hand out the
    # same port twice; the window before the servers bind them is tiny.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_for_port(server: Server, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise BenchError(
                f"{server.name} exited with code {server.popen.returncode} before accepting "
                f"connections; its log:\n{server.log_tail()}"
            )
        try:
            with socket.create_connection((HOST, server.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(
        f"{server.name} did not accept connections on port {server.port} within "
        f"{START_TIMEOUT:.0f}s; its log:\n{server.log_tail()}"
    )


def wait_for_listeners(server: Server, count: int, deadline: float) -> None:
    """Wait until `count` sockets listen on the port (one per SO_REUSEPORT worker).

    The port accepts as soon as the first worker is up; measuring before the
    others bind would pin all of wrk's connections to that one worker.
    """
    listening = 0
    while time.monotonic() < deadline:
        try:
            conns = psutil.net_connections(kind="tcp4")
        except (psutil.AccessDenied, OSError):
            return  # cannot tell on this system; the accept check has to do
        listening = sum(
            1
            for c in conns
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == server.port
        )
        if listening >= count:
            return
        time.sleep(0.1)
    print(f"warning: only {listening} of {count} {server.name} workers listen; measuring anyway")


def check_target(name: str, port: int, path: str, size: int) -> None:
    """One GET must answer 200 with exactly the expected body length."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{name}: GET {path} failed: {exc!r}") from None
    finally:
        conn.close()
    if resp.status != 200 or len(body) != size:
        raise BenchError(
            f"{name}: GET {path} answered {resp.status} with {len(body)} bytes, "
            f"expected 200 with {size}: {body[:300]!r}"
        )


# --------------------------------------------------------------------------
# Configuration written into the temporary directory
# --------------------------------------------------------------------------


def nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(n) for n in match.groups()) if match else (0, 0, 0)


def nginx_temp_paths(nginx: str, prefix: Path) -> str:
    """Temp-path directives keeping nginx inside the bench's directory.

    Only for modules this nginx has: nginx-light builds have dropped some of
    them, and an unknown directive is a fatal config error.
    """
    configure = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    lines = [f"client_body_temp_path {prefix}/client_body;"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in configure:
            lines.append(f"{module}_temp_path {prefix}/{module};")
    return "\n    ".join(lines)


def nginx_common(name: str, tmp: Path, workers: int) -> str:
    return f"""\
worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{
    worker_connections 4096;
}}
"""


def proxy_nginx_conf(
    tmp: Path, workers: int, port: int, upstream: int, origin: int, temp: str
) -> str:
    return (
        nginx_common("nginx-proxy", tmp, workers)
        + f"""\
http {{
    access_log off;
    {temp}
    # What a deployment in front of an API would set: HTTP/1.1 with pooled
    # keep-alive connections upstream, and the client's address passed on.
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_set_header X-Real-IP $remote_addr;

    upstream sample {{
        server {HOST}:{upstream};
        keepalive 64;
    }}
    upstream origin {{
        server {HOST}:{origin};
        keepalive 64;
    }}
    server {{
        listen {HOST}:{port};
        location /bench/ {{
            proxy_pass http://sample;
        }}
        location /static/ {{
            proxy_pass http://origin;
        }}
    }}
}}
"""
    )


def origin_nginx_conf(tmp: Path, port: int, root: Path, temp: str) -> str:
    # One worker, like the single-process aiohttp upstream: it is an upstream
    # here, not one of the proxies being compared.
    return (
        nginx_common("nginx-origin", tmp, 1)
        + f"""\
http {{
    access_log off;
    {temp}
    sendfile on;
    tcp_nopush on;
    default_type application/json;
    server {{
        listen {HOST}:{port};
        root {root};
        # bench/all.py's payments: each buys its own /bench/bytes/N, one file answers all.
        location /bench/bytes/ {{
            try_files {STATIC_FILE} =404;
        }}
    }}
}}
"""
    )


def policy_yaml(upstream: int, origin: int) -> str:
    # The sample upstream on the root mount, as the issue describes it; the
    # static origin under /static so both share one gateway (the longest
    # mount wins) and every target is asked for the very same paths.
    return f"""\
services:
  bench:
    upstream: http://{HOST}:{upstream}
    routes:
      - path: /bench/**
        price: free
  static:
    upstream: http://{HOST}:{origin}/static
    mount: /static
    routes:
      - path: /**
        price: free
"""


def static_body(size: int) -> bytes:
    head, tail = b'{"service":"static-origin","padding":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


# --------------------------------------------------------------------------
# The bench
# --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.servers: dict[str, Server] = {}
        up, origin, ngx, fb = free_ports(4)
        self.ports = {"upstream": up, "origin": origin, "nginx": ngx, "farebox": fb}

    def spawn(
        self, name: str, port: int, cmd: Sequence[str], env: dict[str, str] | None = None
    ) -> Server:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            # A session of its own: Ctrl-C in the terminal reaches only us, and
            # we stop the whole group (master + workers) in order in `close`.
            popen = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                env=env,
                start_new_session=True,
            )
        server = Server(name, port, popen, log)
        self.servers[name] = server
        return server

    def start(self) -> None:
        args, tmp, ports = self.args, self.tmp, self.ports
        # nginx workers drop root and must still read the static file.
        tmp.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAREBOX_")}
        env["PYTHONUNBUFFERED"] = "1"

        www = tmp / "www" / "static"
        www.mkdir(parents=True)
        (www / Path(STATIC_FILE).name).write_bytes(static_body(BODY_SIZE))
        nginx_flags = (
            ["-e", str(tmp / "nginx-startup.log")]
            if nginx_version(args.nginx) >= (1, 19, 5)
            else []
        )
        confs = {
            "nginx-origin": origin_nginx_conf(
                tmp,
                ports["origin"],
                tmp / "www",
                nginx_temp_paths(args.nginx, tmp / "nginx-origin"),
            ),
            "nginx-proxy": proxy_nginx_conf(
                tmp,
                args.workers,
                ports["nginx"],
                ports["upstream"],
                ports["origin"],
                nginx_temp_paths(args.nginx, tmp / "nginx-proxy"),
            ),
        }

        def nginx_cmd(name: str, *extra: str) -> list[str]:
            conf = tmp / f"{name}.conf"
            # -p: a prefix of its own per instance, so temp files never collide.
            return [args.nginx, *extra, "-p", str(tmp / name), "-c", str(conf), *nginx_flags]

        for name, text in confs.items():
            (tmp / name).mkdir()
            (tmp / f"{name}.conf").write_text(text)
            # `nginx -t` first: a config error then reads as one, not as a
            # server that never started.
            test = subprocess.run(
                nginx_cmd(name, "-t", "-q"), capture_output=True, text=True, check=False
            )
            if test.returncode != 0:
                raise BenchError(f"nginx rejected {name}.conf:\n{test.stderr}\n{text}")

        policies = tmp / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(policy_yaml(ports["upstream"], ports["origin"]))
        key = tmp / "server.key"
        farebox = [sys.executable, "-m", "gateway.cli"]
        made = subprocess.run(
            [*farebox, "keys", "generate", "--out", str(key)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if made.returncode != 0:
            raise BenchError(f"farebox keys generate failed:\n{made.stdout}{made.stderr}")

        upstream = [sys.executable, "-m", "gateway.demo.upstream", "--host", HOST]
        self.spawn(
            "upstream", ports["upstream"], [*upstream, "--port", str(ports["upstream"])], env
        )
        for name, port_name in (("nginx-origin", "origin"), ("nginx-proxy", "nginx")):
            self.spawn(name, ports[port_name], nginx_cmd(name))
        self.spawn(
            "farebox",
            ports["farebox"],
            [
                *farebox, "serve", "--policies", str(policies), "--key-file", str(key),
                "--host", HOST, "--port", str(ports["farebox"]), "--workers", str(args.workers),
                "--no-watch", "--log-level", "warning",
            ],
            env,
        )  # fmt: skip

        deadline = time.monotonic() + START_TIMEOUT
        for server in self.servers.values():
            wait_for_port(server, deadline)
        if args.workers > 1:
            wait_for_listeners(self.servers["farebox"], args.workers, deadline)
        for scenario in self.scenarios():
            for target in TARGETS:
                check_target(
                    f"{target} ({scenario.key})",
                    self.port_of(scenario, target),
                    scenario.path,
                    scenario.size,
                )

    def scenarios(self) -> list[Scenario]:
        return [s for s in SCENARIOS if s.key in self.args.scenarios]

    def port_of(self, scenario: Scenario, target: str) -> int:
        return self.ports[scenario.origin if target == "direct" else target]

    def component(self, name: str) -> Server:
        return self.servers[{"origin": "nginx-origin", "nginx": "nginx-proxy"}.get(name, name)]

    def measure(self, scenario: Scenario, target: str) -> Run:
        args = self.args
        url = f"http://{HOST}:{self.port_of(scenario, target)}{scenario.path}"
        if args.warmup > 0:
            # Opens the proxies' upstream pools and warms caches and allocators,
            # so the measured run sees the steady state, not the start-up.
            run_wrk(args, url, args.warmup, latency=False)
        watched = {"origin": self.component(scenario.origin)}
        if target != "direct":
            watched["proxy"] = self.component(target)
        procs = {role: server.processes() for role, server in watched.items()}
        ours = {os.getpid()} | {p.pid for s in self.servers.values() for p in s.processes()}
        before = {role: cpu_seconds(p) for role, p in procs.items()}
        others_before, steal_before = foreign_cpu(ours), steal_seconds()
        wrk_before = children_cpu_seconds()
        started = time.monotonic()
        result = parse_wrk(run_wrk(args, url, args.duration, latency=True))
        wall = time.monotonic() - started
        cpu = {role: 100 * (cpu_seconds(p) - before[role]) / wall for role, p in procs.items()}
        cpu["wrk"] = 100 * (children_cpu_seconds() - wrk_before) / wall
        # wrk has exited by now, so it is not among the processes still
        # running; one that started during the run counts from zero.
        others = sum(t - others_before.get(pid, 0.0) for pid, t in foreign_cpu(ours).items())
        run = Run(
            scenario.key,
            target,
            url,
            result,
            {k: round(v, 1) for k, v in cpu.items()},
            other_cpu_percent=round(100 * others / wall, 1),
            steal_percent=round(100 * (steal_seconds() - steal_before) / wall, 1),
        )
        if "proxy" in cpu and result.requests:
            run.proxy_cpu_us_per_request = round(
                cpu["proxy"] / 100 * wall / result.requests * 1e6, 1
            )
        return run

    def close(self) -> None:
        # Proxies first, so nothing is left talking to a stopped upstream.
        for name in ("farebox", "nginx-proxy", "nginx-origin", "upstream"):
            if name in self.servers:
                stop(self.servers[name])


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[Bench]:
    tmp = Path(tempfile.mkdtemp(prefix="farebox-bench-"))
    bench: Bench | None = None
    try:
        bench = Bench(args, tmp)
        bench.start()
        yield bench
    finally:
        # A second Ctrl-C must not cut the clean-up short and orphan servers.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if bench is not None:
                bench.close()
            if args.keep_temp:
                print(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def fmt_ms(ms: float) -> str:
    if ms < 1:
        return f"{ms * 1000:.0f} us"
    return f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def ratio(a: Run | None, b: Run | None) -> float | None:
    if a is None or b is None or not b.wrk.requests_per_s:
        return None
    return a.wrk.requests_per_s / b.wrk.requests_per_s


def median_run(runs: Sequence[Run]) -> Run:
    """The run with the median req/s (the lower middle one for an even count).

    A whole run rather than per-column medians, so its latencies and CPU
    figures belong to the same measurement as its req/s.
    """
    ordered = sorted(runs, key=lambda r: r.wrk.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


def spread(runs: Sequence[Run]) -> str:
    rates = [r.wrk.requests_per_s for r in runs]
    mid = median_run(runs).wrk.requests_per_s
    return f"{100 * (max(rates) - min(rates)) / mid:.0f}%" if mid else "-"


def print_table(scenario: Scenario, rounds: dict[str, list[Run]]) -> None:
    runs = {target: median_run(rs) for target, rs in rounds.items()}
    several = any(len(rs) > 1 for rs in rounds.values())
    head = ["target", "req/s"]
    if several:
        head.append("spread")
    head += ["p50", "p99"]
    if scenario.streaming:
        head.append("MiB/s")
    head += ["errors", "proxy CPU", f"{scenario.origin} CPU", "wrk CPU", "other CPU"]
    head.append("proxy CPU/req")
    rows = [head]
    for target, run in runs.items():
        w = run.wrk
        row = [target, f"{w.requests_per_s:,.0f}"]
        if several:
            row.append(spread(rounds[target]))
        row += [fmt_ms(w.p50_ms), fmt_ms(w.p99_ms)]
        if scenario.streaming:
            row.append(f"{w.transfer_mib_s:,.1f}")
        us = run.proxy_cpu_us_per_request
        row += [
            str(w.errors),
            fmt_pct(run.cpu_percent.get("proxy")),
            fmt_pct(run.cpu_percent.get("origin")),
            fmt_pct(run.cpu_percent.get("wrk")),
            fmt_pct(run.other_cpu_percent + run.steal_percent),
            "-" if us is None else f"{us:,.0f} us",
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  " + "  ".join(cells))
    fb_ngx = ratio(runs.get("farebox"), runs.get("nginx"))
    fb_direct = ratio(runs.get("farebox"), runs.get("direct"))
    if fb_ngx is not None:
        print(f"  farebox/nginx  req/s: {fb_ngx:.2f}x")
    if fb_direct is not None:
        print(f"  farebox/direct req/s: {fb_direct:.2f}x")
    for target, run in runs.items():
        if run.wrk.errors:
            print(
                f"  warning: {target} had {run.wrk.non_2xx} non-2xx answers and "
                f"{run.wrk.socket_errors} socket errors: its numbers are suspect"
            )
        noise = run.other_cpu_percent + run.steal_percent
        if noise >= NOISY:
            print(
                f"  warning: during the {target} run other processes or the hypervisor took "
                f"{noise:.0f}% of a core: the machine was not quiet, numbers are skewed"
            )


def environment(args: argparse.Namespace) -> dict[str, object]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    wrk_banner = subprocess.run(
        [args.wrk, "--version"], capture_output=True, text=True, check=False
    )
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer": keep the version.
    wrk_version = [
        re.sub(r"\s*\[.*", "", line)
        for line in (wrk_banner.stdout or wrk_banner.stderr).splitlines()[:1]
    ]
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": psutil.cpu_count(logical=True),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "farebox": version("farebox"),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "nginx": ".".join(map(str, nginx_version(args.nginx))),
        "wrk": wrk_version[0] if wrk_version else "?",
    }


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def seconds(text: str) -> float:
    """'10', '10s', '1m' or '1m30s' -> seconds (wrk's own duration syntax, roughly)."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?", text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 10, 10s or 1m")
    minutes, secs = match.groups()
    return int(minutes or 0) * 60 + float(secs or 0)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def scenario_list(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    known = {s.key for s in SCENARIOS}
    if not keys or not set(keys) <= known:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(sorted(known))}, comma-separated")
    return keys


def find_tool(name: str) -> str | None:
    # /usr/sbin is not on a normal user's PATH, but that is where nginx lives.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/proxy.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Throughput and latency of a free route proxied by Farebox, against the same
upstream hit directly and proxied by nginx, all in one run on 127.0.0.1.

Scenarios (each target gets a warm-up, then a measured wrk run):
  hello   sample aiohttp upstream, GET /bench/hello (1 KiB JSON):
          direct, via nginx, via Farebox
  static  nginx serving a static 1 KiB file, a far faster upstream, so the
          proxy's own cost dominates: direct, via nginx, via Farebox
  stream  GET /bench/bytes/1048576 (1 MiB) from the sample upstream:
          direct, via nginx, via Farebox; MiB/s too

Needs nginx (nginx-light is enough) and wrk; `./dev bench` installs both.""",
        epilog=f"""\
The aim from the issue is Farebox >= {AIM} x nginx requests/s in every
scenario; the last line says whether it is met. The exit status is 0 either
way (this is a measurement): non-zero only when something could not run.

CPU columns are percent of one core during the measured run; "other CPU" is
what processes outside the bench (and hypervisor steal) took meanwhile, a
warning sign when it is high. "proxy CPU/req" is the proxy's CPU time per
request, the cost least skewed by the load generator and the upstream sharing
the same cores.

Examples:
  ./dev bench                               the default run, about 2 minutes
  ./dev bench --workers 2 --json bench/results/w2.json
  ./dev bench --scenarios static --rounds 5 --duration 5s""",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, metavar="N",
        help="worker processes for both proxies: nginx worker_processes and "
        "farebox --workers (default 1; the upstreams always have one)",
    )  # fmt: skip
    parser.add_argument(
        "--connections",
        "-c",
        type=positive_int,
        default=64,
        metavar="N",
        help="wrk connections (default 64)",
    )
    parser.add_argument(
        "--threads", "-t", type=positive_int, default=1, metavar="N", help="wrk threads (default 1)"
    )
    parser.add_argument(
        "--duration",
        "-d",
        type=seconds,
        default=10.0,
        metavar="TIME",
        help="length of each measured run, e.g. 10s or 1m (default 10s)",
    )
    parser.add_argument(
        "--warmup",
        type=seconds,
        default=2.0,
        metavar="TIME",
        help="warm-up run before each measured run; 0 skips it (default 2s)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        metavar="N",
        help="measure every target N times, taking turns, and report the median run; "
        "use 3 or more on a shared or virtual machine (default 1)",
    )
    parser.add_argument(
        "--scenarios", type=scenario_list, default=tuple(s.key for s in SCENARIOS), metavar="LIST",
        help="comma-separated subset of hello,static,stream (default all)",
    )  # fmt: skip
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the results to FILE as JSON"
    )
    parser.add_argument(
        "--nginx",
        default=find_tool("nginx"),
        metavar="PATH",
        help="nginx binary (default: from PATH or /usr/sbin)",
    )
    parser.add_argument(
        "--wrk", default=find_tool("wrk"), metavar="PATH", help="wrk binary (default: from PATH)"
    )
    parser.add_argument(
        "--keep-temp",
        action="store_true",
        help="keep the temporary directory (configs, server logs) for inspection",
    )
    args = parser.parse_args(argv)
    for tool in ("nginx", "wrk"):
        if not getattr(args, tool):
            parser.error(f"{tool} not found; install it (./dev bench does) or pass --{tool} PATH")
    if args.duration < 1:
        parser.error("--duration must be at least 1s")
    return args


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    env = environment(args)
    scenarios = [s for s in SCENARIOS if s.key in args.scenarios]
    runs_total = len(scenarios) * len(TARGETS) * args.rounds
    estimate = runs_total * (args.duration + args.warmup)
    print(
        f"Farebox proxy benchmark: {env['cpus']} CPUs ({env['cpu_model']}), "
        f"python {env['python']}, aiohttp {env['aiohttp']}, uvloop {env['uvloop']}, "
        f"nginx {env['nginx']}, {env['wrk']}"
    )
    print(
        f"wrk -t {args.threads} -c {args.connections}, {args.duration:g}s per run after a "
        f"{args.warmup:g}s warm-up; proxies with {args.workers} worker(s); "
        f"{runs_total} runs, about {estimate / 60:.1f} min"
    )
    cpus = psutil.cpu_count(logical=True) or 0
    if cpus < 4:
        print(
            f"note: wrk, the upstream and the proxy share {cpus} CPUs, so throughput is "
            "bounded by that contention: compare the CPU columns too"
        )

    rounds: dict[str, dict[str, list[Run]]] = {}
    try:
        with running(args) as bench:
            print("all servers up; every target answered 200 with the expected body\n")
            for number, scenario in enumerate(scenarios, 1):
                print(f"[{number}] {scenario.title}", flush=True)
                runs: dict[str, list[Run]] = {target: [] for target in TARGETS}
                # Targets take turns round by round, so a slow patch on a
                # shared machine hits all of them rather than one.
                for _ in range(args.rounds):
                    for target in TARGETS:
                        runs[target].append(bench.measure(scenario, target))
                rounds[scenario.key] = runs
                print_table(scenario, runs)
                print()
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    results = {key: {t: median_run(rs) for t, rs in runs.items()} for key, runs in rounds.items()}

    verdicts = []
    summary = {}
    for key, runs in results.items():
        r = ratio(runs.get("farebox"), runs.get("nginx"))
        met = r is not None and r >= AIM
        summary[key] = {
            "farebox_over_nginx": None if r is None else round(r, 3),
            "farebox_over_direct": _round(ratio(runs.get("farebox"), runs.get("direct"))),
            "aim_met": met,
        }
        verdicts.append(
            f"{key} {'met' if met else 'MISSED'} ({r:.2f}x)" if r is not None else f"{key} n/a"
        )
    all_met = all(v["aim_met"] for v in summary.values())
    print(
        f"Aim Farebox >= {AIM} x nginx req/s: {'; '.join(verdicts)} -> "
        + ("met in every scenario" if all_met else "NOT met in every scenario")
    )

    if args.json:
        payload = {
            "aim": AIM,
            "settings": {
                "workers": args.workers,
                "connections": args.connections,
                "threads": args.threads,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
            },
            "environment": env,
            "scenarios": {
                key: {
                    "title": next(s.title for s in SCENARIOS if s.key == key),
                    "runs": {t: _run_json(run) for t, run in runs.items()},
                    "rounds": {t: [_run_json(r) for r in rs] for t, rs in rounds[key].items()},
                    **summary[key],
                }
                for key, runs in results.items()
            },
            "aim_met_everywhere": all_met,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _run_json(run: Run) -> dict[str, object]:
    out = asdict(run)
    out["wrk"]["errors"] = run.wrk.errors
    return out


if __name__ == "__main__":
    sys.exit(main())
