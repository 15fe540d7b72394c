"""The servers of `bench/all.py` (`./dev bench-all`) and measuring them.

`Harness` starts everything on 127.0.0.1 on free ports from one temporary
directory, each process in a session of its own, and stops them all in
`close` (bench/all.py calls it on the way out, also after an error or
Ctrl-C). `Harness.load` runs wrk (warm-up, then measured) and takes the CPU
time of each process group per request; `Harness.download` fetches the
1 GiB file with curl while sampling a Farebox's RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import fronts
import proxy as pb
import psutil
from proxy import HOST, BenchError, Server

from gateway.tokens import KeyRing

PRICE = 1  # satoshis per priced request and per metered request
BIG_FILE = "/static/1g.bin"
BIG_SIZE = 1 << 30
MIB = 1 << 20


def policy_yaml(origin: int) -> str:
    """Four services on the one static origin: free, priced, metered (1 sat a
    request from a tab) and, for the auth_request front, the origin's own
    paths at the root mount (nginx maps paths 1:1 to the service)."""
    static = f"http://{HOST}:{origin}/static"
    return f"""\
services:
  free:
    upstream: {static}
    mount: /free
    routes:
      - path: /**
        price: free
  paid:
    upstream: {static}
    mount: /paid
    routes:
      - path: /**
        price: {PRICE}
        grant: {{lasts: 1h}}
  metered:
    upstream: {static}
    mount: /metered
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /**
        price: {PRICE}
        meter: {{per: request}}
  front:
    upstream: http://{HOST}:{origin}
    routes:
      - path: /static/**
        price: {PRICE}
        grant: {{lasts: 1h}}
"""


class Harness:
    """The servers of one run, and measuring them with wrk."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.servers: dict[str, Server] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FAREBOX_")}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.nginx_flags = (
            ["-e", str(tmp / "nginx-startup.log")]
            if pb.nginx_version(args.nginx) >= (1, 19, 5)
            else []
        )
        self.tokens: dict[str, str] = {}

    # --- processes -------------------------------------------------------------

    def spawn(self, name: str, port: int, cmd: Sequence[str]) -> Server:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            # A session of its own: Ctrl-C reaches only us; `stop` ends the group.
            popen = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.tmp, env=self.env, start_new_session=True,
            )  # fmt: skip
        server = Server(name, port, popen, log)
        self.servers[name] = server
        return server

    def wait(self, *names: str, workers: int = 1) -> None:
        deadline = time.monotonic() + pb.START_TIMEOUT
        for name in names:
            pb.wait_for_port(self.servers[name], deadline)
            if workers > 1:
                pb.wait_for_listeners(self.servers[name], workers, deadline)

    def nginx(self, name: str, conf: str, port: int) -> Server:
        """Check (`nginx -t`) and start an nginx with `conf`; wait for its port."""
        (self.tmp / name).mkdir(exist_ok=True)
        path = self.tmp / f"{name}.conf"
        path.write_text(conf)
        cmd = [self.args.nginx, "-p", str(self.tmp / name), "-c", str(path), *self.nginx_flags]
        test = subprocess.run([*cmd, "-t", "-q"], capture_output=True, text=True, check=False)
        if test.returncode != 0:
            raise BenchError(f"nginx rejected {name}.conf:\n{test.stderr}")
        self.spawn(name, port, cmd)
        self.wait(name, workers=self.args.workers)
        return self.servers[name]

    def temp_paths(self, name: str) -> str:
        return pb.nginx_temp_paths(self.args.nginx, self.tmp / name)

    def farebox(self, name: str, workers: int) -> Server:
        """A `farebox serve` on the bench's Redis and devnet (started once per name)."""
        if name in self.servers:
            return self.servers[name]
        (port,) = pb.free_ports(1)
        tmp = self.tmp
        print(f"... starting {name}: farebox serve --workers {workers} (Redis store)", flush=True)
        self.spawn(
            name,
            port,
            [
                sys.executable, "-m", "gateway.cli", "serve", "--host", HOST, "--port", str(port),
                "--workers", str(workers), "--policies", str(tmp / "policies"),
                "--key-file", str(tmp / "server.key"), "--token-keys", str(tmp / "tk"),
                "--store", self.redis_url, "--devnet-url", self.devnet_url,
                "--receipts-file", str(tmp / f"{name}-receipts.jsonl"),
                "--trusted-proxies", HOST, "--insecure-cookies", "--no-watch",
                "--log-level", "warning",
            ],
        )  # fmt: skip
        self.wait(name, workers=workers)
        # The port may accept a moment before the app answers: retry briefly.
        for attempt in range(20):
            try:
                pb.check_target(name, port, "/free/1k.json", pb.BODY_SIZE)
                break
            except BenchError:
                if attempt == 19:
                    raise
                time.sleep(0.25)
        return self.servers[name]

    def instance(self, workers: int) -> str:
        """The name of a Farebox with `workers` workers: the main one when it has as many."""
        if workers == self.args.workers:
            return "farebox"
        name = f"farebox-w{workers}"
        self.farebox(name, workers)
        return name

    def url(self, name: str, path: str) -> str:
        return f"http://{HOST}:{self.servers[name].port}{path}"

    def start(self) -> None:
        args, tmp = self.args, self.tmp
        tmp.chmod(0o755)  # nginx workers drop root and must still read the files
        www = tmp / "www" / "static"
        www.mkdir(parents=True)
        (www / Path(pb.STATIC_FILE).name).write_bytes(pb.static_body(pb.BODY_SIZE))
        with (www / Path(BIG_FILE).name).open("wb") as big:
            big.truncate(BIG_SIZE)  # sparse: no disk, no page cache effects
        origin, proxy_port, upstream, redis, devnet = pb.free_ports(5)
        (tmp / "policies").mkdir()
        (tmp / "policies" / "bench.yaml").write_text(policy_yaml(origin))
        made = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "keys", "generate", "--out", str(tmp / "server.key")],
            capture_output=True, text=True, env=self.env, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise BenchError(f"farebox keys generate failed:\n{made.stdout}{made.stderr}")
        KeyRing.load(tmp / "tk")  # created once: every gateway and the bench share it

        print("... starting the origin, nginx, redis-server, the devnet", flush=True)
        (tmp / "redis").mkdir()
        self.spawn(
            "redis", redis,
            [args.redis_server, "--port", str(redis), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", str(tmp / "redis")],
        )  # fmt: skip
        self.redis_url = f"redis://{HOST}:{redis}/0"
        self.spawn(
            "devnet", devnet,
            [sys.executable, "-m", "gateway", "devnet", "--host", HOST, "--port", str(devnet),
             "--block-interval", "0"],
        )  # fmt: skip
        self.devnet_url = f"http://{HOST}:{devnet}"
        # The sample upstream, behind the plain nginx proxy's /bench/ (no run of
        # bench-all asks for it now: payments go to the origin). Idle while measuring.
        self.spawn(
            "upstream", upstream,
            [sys.executable, "-m", "gateway.demo.upstream", "--host", HOST, "--port", str(upstream)],
        )  # fmt: skip
        self.upstream_port = upstream
        self.origin_port = origin
        origin_conf = pb.origin_nginx_conf(
            tmp, origin, tmp / "www", self.temp_paths("nginx-origin")
        )
        (tmp / "nginx-origin").mkdir()
        (tmp / "nginx-origin.conf").write_text(origin_conf)
        cmd = [args.nginx, "-p", str(tmp / "nginx-origin"), "-c", str(tmp / "nginx-origin.conf")]
        self.spawn("nginx-origin", origin, [*cmd, *self.nginx_flags])
        self.wait("redis", "devnet", "upstream", "nginx-origin")
        self.nginx(
            "nginx-proxy",
            pb.proxy_nginx_conf(
                tmp, args.workers, proxy_port, upstream, origin, self.temp_paths("nginx-proxy")
            ),
            proxy_port,
        )
        self.farebox("farebox", args.workers)
        for name, path in (("nginx-origin", pb.STATIC_FILE), ("nginx-proxy", pb.STATIC_FILE)):
            pb.check_target(name, self.servers[name].port, path, pb.BODY_SIZE)

    def close(self) -> None:
        # Proxies first, so nothing is left talking to a stopped upstream.
        for name in sorted(self.servers, key=lambda n: n.startswith(("nginx-origin", "redis"))):
            pb.stop(self.servers[name])

    # --- measuring -------------------------------------------------------------

    def processes(self, names: Sequence[str]) -> list[psutil.Process]:
        return [p for name in names for p in self.servers[name].processes()]

    def ours(self) -> set[int]:
        return {os.getpid()} | {p.pid for s in self.servers.values() for p in s.processes()}

    def load(
        self,
        what: str,
        label: str,
        urls: Sequence[str],
        groups: dict[str, Sequence[str]],
        *,
        headers: dict[str, str] | None = None,
        script: Path | None = None,
        connections: int | None = None,
        expect: int = 200,
    ) -> dict[str, object]:
        """A warm-up and a measured wrk run against each of `urls` at once (their
        connections split), with the CPU time of each process group in `groups`
        (name -> server names) per request. `expect`: 200 (any non-2xx is an
        error) or 402 (every answer must be non-2xx)."""
        args = self.args
        conns = connections or args.connections
        print(
            f"... {what}: {label} ({args.duration:g}s after {args.warmup:g}s warm-up, "
            f"{conns} connections)",
            flush=True,
        )
        per = max(1, conns // len(urls))

        def run(seconds: float) -> list[str]:
            cmds = [
                fronts.wrk_command(
                    args.wrk, u, seconds, connections=per, headers=headers, script=script
                )
                for u in urls
            ]
            procs = [fronts.wrk_start(c) for c in cmds]
            try:
                return [fronts.wrk_finish(p, c, seconds) for p, c in zip(procs, cmds, strict=True)]
            finally:
                for proc in procs:  # a failed or interrupted run leaves no wrk behind
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()

        warm = [pb.parse_wrk(out) for out in run(args.warmup)] if args.warmup > 0 else []
        procs = {g: self.processes(names) for g, names in groups.items()}
        ours = self.ours()
        before = {g: pb.cpu_seconds(p) for g, p in procs.items()}
        others, steal, wrk_cpu = pb.foreign_cpu(ours), pb.steal_seconds(), pb.children_cpu_seconds()
        started = time.monotonic()
        results = [pb.parse_wrk(out) for out in run(args.duration)]
        wall = time.monotonic() - started
        cpu = {g: pb.cpu_seconds(p) - before[g] for g, p in procs.items()}
        cpu["wrk"] = pb.children_cpu_seconds() - wrk_cpu
        other = sum(t - others.get(pid, 0.0) for pid, t in pb.foreign_cpu(ours).items())
        requests = sum(r.requests for r in results)
        non_2xx = sum(r.non_2xx for r in results)
        out: dict[str, object] = {
            "target": label,
            "urls": list(urls),
            "connections": conns,
            "req_per_s": round(sum(r.requests_per_s for r in results), 1),
            "p50_ms": round(max(r.p50_ms for r in results), 3),
            "p99_ms": round(max(r.p99_ms for r in results), 3),
            "requests": requests,
            "seconds": round(max(r.seconds for r in results), 3),
            "warmup_requests": sum(r.requests for r in warm),
            "non_2xx": non_2xx,
            "socket_errors": sum(r.socket_errors for r in results),
            "cpu_us_per_request": {g: round(s / max(requests, 1) * 1e6, 1) for g, s in cpu.items()},
            "cpu_percent": {g: round(100 * s / wall, 1) for g, s in cpu.items()},
            "other_cpu_percent": round(100 * (other + pb.steal_seconds() - steal) / wall, 1),
            # Of which the hypervisor's: the VM's CPUs were runnable but not run.
            "steal_percent": round(100 * (pb.steal_seconds() - steal) / wall, 1),
        }
        if len(urls) > 1:
            out["per_url_req_per_s"] = [round(r.requests_per_s, 1) for r in results]
        if expect == 200 and non_2xx:
            raise BenchError(f"{label}: {non_2xx} of {requests} answers were not 2xx")
        if expect != 200 and non_2xx != requests:
            raise BenchError(f"{label}: {requests - non_2xx} of {requests} answers were 2xx")
        if out["socket_errors"]:
            print(f"    warning: {out['socket_errors']} socket errors: the figures are suspect")
        if float(out["other_cpu_percent"]) >= pb.NOISY:  # type: ignore[arg-type]
            print(f"    warning: others took {out['other_cpu_percent']}% of a core meanwhile")
        print(
            f"    {out['req_per_s']:,.0f} req/s, p99 {out['p99_ms']} ms, CPU/req "
            + ", ".join(f"{g} {v:,.0f} us" for g, v in out["cpu_us_per_request"].items())  # type: ignore[union-attr]
        )
        return out

    def rss_mib(self, name: str) -> float:
        total = 0
        for proc in self.servers[name].processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / MIB

    def download(self, label: str, url: str, watch: str | None) -> dict[str, object]:
        """GET `url` (1 GiB) with curl, discarding the body; RSS of `watch`
        sampled every 50 ms meanwhile."""
        print(f"... stream: {label}, GET {url} (1 GiB)", flush=True)
        before = self.rss_mib(watch) if watch else None
        cpu_procs = self.processes([watch]) if watch else []
        cpu = pb.cpu_seconds(cpu_procs)
        fmt = "%{http_code} %{size_download} %{time_total}"
        cmd = ["curl", "-s", "-o", "/dev/null", "-w", fmt, url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        samples: list[float] = []
        while proc.poll() is None:
            if watch:
                samples.append(round(self.rss_mib(watch), 2))
            time.sleep(0.05)
        out = (proc.stdout.read() if proc.stdout else "").split()
        if proc.returncode != 0 or len(out) != 3 or out[0] != "200" or int(out[1]) != BIG_SIZE:
            raise BenchError(f"{label}: curl {url} gave {out} (exit {proc.returncode})")
        seconds = float(out[2])
        result: dict[str, object] = {
            "target": label,
            "url": url,
            "bytes": BIG_SIZE,
            "seconds": seconds,
            "mib_per_s": round(BIG_SIZE / MIB / seconds, 1),
        }
        if watch:
            result["cpu_s"] = round(pb.cpu_seconds(cpu_procs) - cpu, 3)
            result["rss_before_mib"] = round(before or 0.0, 2)
            result["rss_peak_mib"] = max([*samples, before or 0.0])
            result["rss_samples_mib"] = samples
        print(f"    {result['mib_per_s']:,} MiB/s")
        return result
