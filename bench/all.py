#!/usr/bin/env python3
"""Every Farebox benchmark in one run: ratios against references, with targets.

Run it with `./dev bench-all` (installs nginx-light, wrk and redis-server) or
`.venv/bin/python bench/all.py --help`. Everything runs on 127.0.0.1 on free
ports from one temporary directory: an nginx "origin" serving a 1 KiB file
(and a sparse 1 GiB one), a plain nginx reverse proxy in front of it, a
redis-server, a `farebox devnet`, `farebox serve` on that Redis with free,
priced and metered routes to the origin, nginx running
nginx/farebox-auth-request.conf in front of Farebox, and an nginx answering
402 as Farebox does. Farebox and every nginx proxy run `--workers N`
processes. Tokens and tabs are bought with real BRC-121 payments on the
devnet. Payments are measured on bench/payments.py's own gateway (1 worker,
memory store) in front of the same origin, sent by its small HTTP/1.1
client. The p99 Farebox adds is read with wrk paced at half the token
path's peak, the origin direct then Farebox's token path: three such pairs
(one with --quick), their median reported.

It is a measurement, not a test: the exit status is 0 when everything ran,
whether or not the targets are met; non-zero when something could not be
measured (its key is then null, and details.errors says why).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import aiohttp  # noqa: E402
import fronts  # noqa: E402
import paying  # noqa: E402
import payments as pay_bench  # noqa: E402
import proxy as pb  # noqa: E402
from bsv import PrivateKey  # noqa: E402
from harness import BIG_FILE, PRICE, Harness  # noqa: E402
from proxy import HOST, BenchError, Interrupted  # noqa: E402

from gateway.tokens import KeyRing  # noqa: E402
from tests.nginx_process import self_signed  # noqa: E402

PACED_DELAY_MS = 20  # mean delay per request per connection in the paced runs
LATENCY_ROUNDS = 3  # paired paced runs (origin, Farebox); the median p99 added counts

# key -> (comparison, target, what it is). None: reported without a target.
KEYS: dict[str, tuple[str | None, float | None, str]] = {
    "free_vs_nginx": (None, None, "req/s, Farebox free route / nginx proxy_pass, same origin"),
    "token_vs_nginx": (">=", 0.5, "req/s, Farebox priced route with a valid token / nginx"),
    "token_nginx_front_vs_nginx": (
        ">=", 0.8, "req/s, nginx/farebox-auth-request.conf in front, token sent / nginx",
    ),
    "challenge_vs_nginx_402": (">=", 0.4, "402/s, Farebox's challenge / nginx `return 402` alike"),
    "metered_redis_vs_token": (">=", 0.8, "req/s, metered (tab, Redis) / token path: the lower"),
    "metered_redis_vs_token_1_worker": (None, None, "the same with 1 worker"),
    "metered_redis_vs_token_2_workers": (None, None, "the same with farebox serve --workers 2"),
    "payments_vs_crypto_limit": (
        ">=", 0.5, "payments/s (1 worker) / (1 / (t_verify + t_derive + t_sign))",
    ),
    "stream_vs_nginx": (None, None, "MiB/s of a 1 GiB body, Farebox / nginx"),
    "stream_rss_growth_mb": ("<", 50.0, "MiB (2^20 bytes): peak - before, Farebox RSS, 1 GiB"),
    "p99_added_ms_at_half_load": (
        "<=", 2.0, "ms: p99 via Farebox token path - p99 origin direct, paced at half peak; "
        "median of 3 paired runs (1 with --quick)",
    ),
}  # fmt: skip


# --------------------------------------------------------------------------
# The measurements, one function each; each fills `results` and `details`
# --------------------------------------------------------------------------


def ratio(a: dict[str, object], b: dict[str, object], key: str = "req_per_s") -> float:
    return round(float(a[key]) / float(b[key]), 3)  # type: ignore[arg-type]


def buy_tokens(h: Harness) -> dict[str, object]:
    async def go() -> dict[str, object]:
        async with aiohttp.ClientSession() as http:
            h.tokens["paid"], paid = await paying.pay(
                http, h.url("farebox", "/paid/1k.json"), h.devnet_url, expect_size=pb.BODY_SIZE
            )
            h.tokens["tab"], tab = await paying.pay(
                http, h.url("farebox", "/metered/1k.json"), h.devnet_url,
                top_up=h.args.top_up, expect_size=pb.BODY_SIZE,
            )  # fmt: skip
            if tab["charge"] != str(PRICE):
                raise BenchError(f"the tab's opening request was charged {tab['charge']}")
        return {"priced_route": paid, "tab": tab}

    print("... paying for a token (priced route) and a tab (metered route) on the devnet")
    return asyncio.run(go())


def measure_proxies(h: Harness, results: dict[str, object], details: dict[str, object]) -> None:
    """free_vs_nginx and token_vs_nginx: each Farebox run right after an nginx run."""
    nginx_url = h.url("nginx-proxy", pb.STATIC_FILE)
    nginx_groups = {"nginx": ["nginx-proxy"], "origin": ["nginx-origin"]}
    fb_groups = {"farebox": ["farebox"], "origin": ["nginx-origin"], "redis": ["redis"]}
    bearer = {"Authorization": f"Bearer {h.tokens['paid']}"}
    for key, path, headers in (("free", "/free/1k.json", None), ("token", "/paid/1k.json", bearer)):
        if headers:
            check_with_token(h.url("farebox", path), headers)
        nginx = h.load(key, "nginx proxy_pass", [nginx_url], nginx_groups)
        fb = h.load(key, f"farebox {path}", [h.url("farebox", path)], fb_groups, headers=headers)
        details[key] = {"nginx": nginx, "farebox": fb}
        results[f"{key}_vs_nginx"] = ratio(fb, nginx)


def check_with_token(url: str, headers: dict[str, str]) -> None:
    """One GET with the token must answer 200 with the 1 KiB body."""
    req = status_and_size(url, headers)
    if req != (200, pb.BODY_SIZE):
        raise BenchError(f"GET {url} with the token answered {req}, expected (200, 1024)")


def status_and_size(url: str, headers: dict[str, str]) -> tuple[int, int]:
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request("GET", "/" + rest, headers=headers)
        resp = conn.getresponse()
        return resp.status, len(resp.read())
    finally:
        conn.close()


def measure_front(h: Harness, results: dict[str, object], details: dict[str, object]) -> None:
    """token_nginx_front_vs_nginx: nginx/farebox-auth-request.conf, rendered now."""
    port, redirect = pb.free_ports(2)
    cert, key = self_signed(h.tmp)
    site, made = fronts.auth_request_site(
        port=port, redirect_port=redirect, farebox_port=h.servers["farebox"].port,
        service_port=h.servers["nginx-origin"].port, cert=cert, key=key,
        cache_dir=h.tmp / "nginx-front-cache",
    )  # fmt: skip
    (h.tmp / "nginx-front.site.conf").write_text(site)
    conf = fronts.nginx_main_conf(
        "nginx-front", h.tmp, h.args.workers, h.temp_paths("nginx-front"),
        h.tmp / "nginx-front.site.conf",
    )  # fmt: skip
    info: dict[str, object] = {
        "rendered_from": "nginx/farebox-auth-request.conf",
        "substitutions": made,
        "proxy_cache_in_template": "proxy_cache" in site,
    }
    details["token_nginx_front"] = info
    h.nginx("nginx-front", conf, port)

    async def buy() -> tuple[str, dict[str, object]]:
        async with aiohttp.ClientSession() as http:
            return await paying.pay(
                http, h.url("nginx-front", pb.STATIC_FILE), h.devnet_url, expect_size=pb.BODY_SIZE
            )

    print("... paying for a token through the nginx front")
    token, info["payment"] = asyncio.run(buy())
    bearer = {"Authorization": f"Bearer {token}"}
    check_with_token(h.url("nginx-front", pb.STATIC_FILE), bearer)
    nginx = h.load(
        "front", "nginx proxy_pass", [h.url("nginx-proxy", pb.STATIC_FILE)],
        {"nginx": ["nginx-proxy"], "origin": ["nginx-origin"]},
    )  # fmt: skip
    front = h.load(
        "front", "nginx auth_request front + farebox", [h.url("nginx-front", pb.STATIC_FILE)],
        {"nginx": ["nginx-front"], "farebox": ["farebox"], "origin": ["nginx-origin"],
         "redis": ["redis"]},
        headers=bearer,
    )  # fmt: skip
    info.update(nginx=nginx, front=front)
    results["token_nginx_front_vs_nginx"] = ratio(front, nginx)


def fetch(port: int, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def measure_challenge(h: Harness, results: dict[str, object], details: dict[str, object]) -> None:
    """challenge_vs_nginx_402: Farebox's 402 against an nginx answering the same."""
    path = "/paid/1k.json"
    status, headers, body = fetch(h.servers["farebox"].port, path)
    if status != 402:
        raise BenchError(f"farebox GET {path} without a token answered {status}, not 402")
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    (port,) = pb.free_ports(1)
    conf = fronts.challenge_conf(
        h.tmp, h.args.workers, port, h.temp_paths("nginx-402"), content_type, headers, body
    )
    h.nginx("nginx-402", conf, port)
    n_status, n_headers, n_body = fetch(port, path)
    wanted = {k.lower() for k, _ in headers} - fronts.HOP_HEADERS
    missing = wanted - {k.lower() for k, _ in n_headers}
    if n_status != 402 or len(n_body) != len(body) or missing:
        raise BenchError(
            f"nginx-402 answered {n_status} with {len(n_body)} bytes (Farebox: 402, "
            f"{len(body)} bytes); headers missing: {sorted(missing)}"
        )
    info: dict[str, object] = {
        "farebox_answer": {"status": status, "headers": headers, "body_bytes": len(body)},
        "nginx_answer": {"status": n_status, "headers": n_headers, "body_bytes": len(n_body)},
    }
    details["challenge"] = info
    nginx = h.load("challenge", "nginx return 402", [h.url("nginx-402", path)],
                   {"nginx": ["nginx-402"]}, expect=402)  # fmt: skip
    fb = h.load("challenge", "farebox 402", [h.url("farebox", path)],
                {"farebox": ["farebox"], "redis": ["redis"]}, expect=402)  # fmt: skip
    info.update(nginx=nginx, farebox=fb)
    results["challenge_vs_nginx_402"] = ratio(fb, nginx)


def measure_metered(h: Harness, results: dict[str, object], details: dict[str, object]) -> None:
    """metered_redis_vs_token with 1 and 2 workers; the tab's balance checked."""
    info: dict[str, object] = {}
    details["metered"] = info
    bearer = {"Authorization": f"Bearer {h.tokens['paid']}"}
    tab = {"Authorization": f"Bearer {h.tokens['tab']}"}
    for workers, key in ((1, "1_worker"), (2, "2_workers")):
        name = h.instance(workers)
        base = h.url(name, "")
        groups = {"farebox": [name], "origin": ["nginx-origin"], "redis": ["redis"]}
        balance_before = asyncio.run(tab_balance(base, h.tokens["tab"]))
        token = h.load(f"metered {key}", f"{name} token path", [h.url(name, "/paid/1k.json")],
                       groups, headers=bearer)  # fmt: skip
        metered = h.load(f"metered {key}", f"{name} metered (tab)",
                         [h.url(name, "/metered/1k.json")], groups, headers=tab)  # fmt: skip
        time.sleep(0.5)  # the settles of the last answers
        balance_after = asyncio.run(tab_balance(base, h.tokens["tab"]))
        charged, rest = divmod(balance_before - balance_after, PRICE * paying.MSAT)
        # wrk counts only the measured run's answers; the warm-up was charged too.
        counted = int(metered["requests"]) + int(metered["warmup_requests"])  # type: ignore[call-overload]
        info[key] = {
            "farebox": name,
            "token": token,
            "metered": metered,
            "tab": {
                "balance_before_msat": balance_before,
                "balance_after_msat": balance_after,
                "charged_requests": charged,
                "leftover_msat": rest,
                "wrk_counted": counted,
                "charged_minus_counted": charged - counted,
            },
        }
        # More charged than counted (at most one per connection per run) are
        # answers delivered while wrk was stopping, which it does not count.
        print(
            f"    tab: charged {charged:,} x {PRICE} sat, wrk counted {counted:,} metered "
            f"answers (difference {charged - counted:+,}, leftover {rest} msat)"
        )
        results[f"metered_redis_vs_token_{key}"] = ratio(metered, token)
    results["metered_redis_vs_token"] = min(
        float(results["metered_redis_vs_token_1_worker"]),  # type: ignore[arg-type]
        float(results["metered_redis_vs_token_2_workers"]),  # type: ignore[arg-type]
    )


async def tab_balance(base: str, token: str) -> int:
    async with aiohttp.ClientSession() as http:
        return await paying.tab_balance(http, base, token)


def payments_args(h: Harness) -> argparse.Namespace:
    """What bench/payments.py's `measure` reads from its command line."""
    quick = h.args.quick
    return argparse.Namespace(
        payments=1000 if quick else 3000,
        warmup=200 if quick else 300,
        stage_payments=100 if quick else 300,
        concurrency=32,
    )


def payments_workdir(h: Harness) -> Path:
    """bench/payments.py's layout (policies, token keys), with the static origin
    as the upstream: nginx answers every /bench/bytes/N with the 1 KiB file,
    so the paid requests' upstream costs the shared cores little, as on the
    token path."""
    folder = h.tmp / "payments"
    if not folder.exists():
        (folder / "policies").mkdir(parents=True)
        (folder / "policies" / "p.yaml").write_text(pay_bench.policy_yaml(h.origin_port))
        KeyRing.load(folder / "tk")
    return folder


def measure_payments(h: Harness, results: dict[str, object], details: dict[str, object]) -> None:
    """payments_vs_crypto_limit: bench/payments.py's HTTP layout (1 worker,
    memory store, devnet in process, broadcast none) over what the three
    signature operations of one payment allow on one core."""
    pargs = payments_args(h)
    print(
        f"... payments: 1 worker, memory store, broadcast none: {pargs.payments} payments "
        f"after {pargs.warmup}, {pargs.concurrency} in flight",
        flush=True,
    )
    ours = h.ours()
    others, steal, started = pb.foreign_cpu(ours), pb.steal_seconds(), time.monotonic()
    http = asyncio.run(
        pay_bench.measure(pargs, pay_bench.Layout("none"), payments_workdir(h), PrivateKey(), None)
    )
    # Over the whole layout (start-up, funding, warm-up too): how busy the
    # machine's other tenants kept the cores while payments ran.
    other = sum(t - others.get(pid, 0.0) for pid, t in pb.foreign_cpu(ours).items())
    wall = time.monotonic() - started
    http["other_cpu_percent"] = round(100 * (other + pb.steal_seconds() - steal) / wall, 1)
    print(f"    {http['payments_per_s']:,.0f} payments/s; timing the signature operations")
    crypto = paying.crypto_timings(h.tmp / "crypto-tk", 0.3 if h.args.quick else 1.0)
    print(
        f"    verify {crypto['verify_us']} us, derive {crypto['derive_us']} us, "
        f"sign {crypto['sign_us']} us -> at most {crypto['limit_per_s']:,} payments/s"
    )
    details["payments"] = {"http": http, "crypto": crypto, "settings": vars(pargs)}
    worker_cpu = http.get("worker_cpu_us")  # bench/payments.py's CPU per payment, if it has it
    if worker_cpu:
        # For contended machines: the ratio if the worker had a core to itself.
        details["payments"]["at_worker_cpu_vs_crypto_limit"] = round(
            1e6 / float(worker_cpu) / float(crypto["limit_per_s"]),  # type: ignore[arg-type]
            3,
        )
    if http["accepted"] != http["payments"]:
        raise BenchError(f"payments: only {http['accepted']} of {http['payments']} accepted")
    results["payments_vs_crypto_limit"] = round(
        float(http["payments_per_s"]) / float(crypto["limit_per_s"]),  # type: ignore[arg-type]
        3,
    )


def measure_stream(h: Harness, results: dict[str, object], details: dict[str, object]) -> None:
    """stream_vs_nginx and stream_rss_growth_mb: 1 GiB through nginx, then Farebox."""
    nginx = h.download("nginx proxy_pass", h.url("nginx-proxy", BIG_FILE), None)
    fb = h.download("farebox free route", h.url("farebox", "/free/1g.bin"), "farebox")
    details["stream"] = {"nginx": nginx, "farebox": fb, "rss_unit": "MiB (2^20 bytes)"}
    results["stream_vs_nginx"] = ratio(fb, nginx, "mib_per_s")
    results["stream_rss_growth_mb"] = round(
        float(fb["rss_peak_mib"]) - float(fb["rss_before_mib"]),  # type: ignore[arg-type]
        3,
    )


def measure_latency(h: Harness, results: dict[str, object], details: dict[str, object]) -> None:
    """p99_added_ms_at_half_load: paced at half the token path's peak, origin
    direct then Farebox's token path, the same rate and connections; the
    median over LATENCY_ROUNDS such pairs (one with --quick).

    A p99 is the slowest percent of one run, and a VM's host stealing its
    CPUs for milliseconds at a time moves it by more than Farebox does; a
    median of paired runs is robust to one such spell (bench/README.md)."""
    token = details.get("token")
    if not isinstance(token, dict):
        raise BenchError("no peak: the token path was not measured")
    peak = float(token["farebox"]["req_per_s"])
    delay = PACED_DELAY_MS
    connections = max(1, round(peak / 2 * delay / 1000))
    asked = connections * 1000 / delay  # what the pacing asks exactly
    script = fronts.pacing_script(h.tmp / "paced.lua", delay)
    rounds = 1 if h.args.quick else LATENCY_ROUNDS
    info: dict[str, object] = {
        "peak_req_per_s": peak,
        "half_peak_req_per_s": round(peak / 2, 1),
        "asked_req_per_s": round(asked, 1),
        "connections": connections,
        "mean_delay_ms": delay,
        "pacing": "wrk Lua delay(): uniform 0..2x mean whole ms before each request",
        "rounds": rounds,
        "added_ms_per_round": [],
    }
    details["latency"] = info
    added: list[float] = []
    for round_ in range(1, rounds + 1):
        suffix = f" ({round_}/{rounds})" if rounds > 1 else ""
        runs = {
            "origin": h.load("paced", "origin direct" + suffix,
                             [h.url("nginx-origin", pb.STATIC_FILE)],
                             {"origin": ["nginx-origin"]}, script=script, connections=connections),
            "farebox": h.load("paced", "farebox token path" + suffix,
                              [h.url("farebox", "/paid/1k.json")],
                              {"farebox": ["farebox"], "origin": ["nginx-origin"],
                               "redis": ["redis"]},
                              headers={"Authorization": f"Bearer {h.tokens['paid']}"},
                              script=script, connections=connections),
        }  # fmt: skip
        for name, run in runs.items():
            achieved = float(run["req_per_s"])  # type: ignore[arg-type]
            run["achieved_over_asked"] = round(achieved / asked, 3)
            run["rate_within_10_percent"] = abs(achieved / asked - 1) <= 0.10
            if not run["rate_within_10_percent"]:
                print(
                    f"    warning: {name}{suffix} ran at {achieved:,.0f} req/s, asked {asked:,.0f}"
                )
        if round_ == 1:
            info.update(runs)  # the first pair, as before rounds
        else:
            info[f"round_{round_}"] = runs
        added.append(
            round(float(runs["farebox"]["p99_ms"]) - float(runs["origin"]["p99_ms"]), 3)  # type: ignore[arg-type]
        )
        info["added_ms_per_round"] = added
        # What else ran meanwhile: other processes, and the host's steal
        # (which does not show every millisecond spell; bench/README.md).
        origin, fb = runs["origin"], runs["farebox"]
        print(
            f"    p99 added {added[-1]} ms (origin {origin['p99_ms']}, Farebox {fb['p99_ms']}); "
            f"other CPU {origin['other_cpu_percent']}% / {fb['other_cpu_percent']}% of a core, "
            f"of which steal {origin['steal_percent']}% / {fb['steal_percent']}%"
        )
    results["p99_added_ms_at_half_load"] = round(statistics.median(added), 3)


def measure_scaling(h: Harness, details: dict[str, object]) -> dict[str, object]:
    """Token path req/s and payments/s: 1 worker, 2 workers, two instances."""
    bearer = {"Authorization": f"Bearer {h.tokens['paid']}"}
    path = "/paid/1k.json"
    rows: dict[str, dict[str, object]] = {}
    common = {"origin": ["nginx-origin"], "redis": ["redis"]}
    for label, names in (
        ("1 worker", [h.instance(1)]),
        ("2 workers", [h.instance(2)]),
        ("two instances", [h.farebox(n, 1).name for n in ("farebox-a", "farebox-b")]),
    ):
        run = h.load("scaling", f"token path, {label}", [h.url(n, path) for n in names],
                     {"farebox": names, **common}, headers=bearer)  # fmt: skip
        rows[label] = {"token_req_per_s": run["req_per_s"], "token_run": run}
    pargs = payments_args(h)
    folder = payments_workdir(h)
    server = PrivateKey()
    layouts = (
        ("1 worker", pay_bench.Layout("none", 1, True)),
        ("2 workers", pay_bench.Layout("none", 2, True)),
    )
    for label, layout in layouts:
        print(f"... scaling: payments, {layout.label}", flush=True)
        got = asyncio.run(pay_bench.measure(pargs, layout, folder, server, h.redis_url))
        print(f"    {got['payments_per_s']:,.0f} payments/s")
        rows[label].update(payments_per_s=round(got["payments_per_s"], 1), payments_run=got)
    print("... scaling: payments, two instances on one Redis and one devnet", flush=True)
    got = asyncio.run(paying.payments_two_instances(pargs, folder, server, h.redis_url))
    print(f"    {got['payments_per_s']:,.0f} payments/s")
    rows["two instances"].update(payments_per_s=round(got["payments_per_s"], 1), payments_run=got)
    return {
        "layouts": {
            "1 worker": "farebox serve --workers 1; payments: 1 bench/payments.py worker",
            "2 workers": "farebox serve --workers 2; payments: 2 bench/payments.py workers "
            "sharing one port (SO_REUSEPORT, as serve --workers does)",
            "two instances": "two farebox serve (1 worker each, own ports) on one Redis, "
            "load split between them at the same time and summed",
        },
        "store": "Redis (the bench's redis-server) for every row; payments with a shared "
        "devnet process, broadcast none",
        "rows": rows,
    }


# --------------------------------------------------------------------------
# The run, the table, the JSON
# --------------------------------------------------------------------------


def machine(args: argparse.Namespace) -> dict[str, object]:
    """CPU, versions, date and commit (with whether the checkout had changes)."""
    env = pb.environment(args)
    redis = subprocess.run(
        [args.redis_server, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "?"

    return {
        "cpu_model": env["cpu_model"],
        "cores": env["cpus"],
        "kernel": env["kernel"],
        "python": env["python"],
        "farebox": env["farebox"],
        "aiohttp": env["aiohttp"],
        "uvloop": env["uvloop"],
        "nginx": env["nginx"],
        "wrk": env["wrk"],
        "redis": redis.split(" v=")[1].split()[0] if " v=" in redis else redis,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def targets(results: dict[str, float | None]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for key, (op, value, _) in KEYS.items():
        got = results.get(key)
        met = None
        if op is not None and value is not None:
            met = got is not None and (
                got >= value if op == ">=" else got <= value if op == "<=" else got < value
            )
        out[key] = {"target": None if op is None else f"{op} {value:g}", "met": met}
    return out


def print_report(payload: dict[str, object]) -> None:
    results, goals = payload, payload["targets"]
    assert isinstance(goals, dict)
    print()
    print(f"{'key':<34} {'measured':>10}  {'target':<8} verdict")
    for key in KEYS:
        got = results[key]
        goal = goals[key]
        shown = "null" if got is None else f"{got:.3f}"
        verdict = {True: "met", False: "MISSED", None: "-"}[goal["met"]]
        print(f"{key:<34} {shown:>10}  {goal['target'] or '-':<8} {verdict}")
    print(f"all targets met: {payload['all_targets_met']}")
    print()
    print("Raw figures (CPU/req: the proxy's CPU time per request, all its processes):")
    print(f"  {'measurement':<52} {'req/s':>9} {'p50':>9} {'p99':>9} {'CPU/req':>9}")
    details = payload["details"]
    assert isinstance(details, dict)
    for section, run in walk_runs(details):
        cpu = run.get("cpu_us_per_request", {})
        proxies = [v for g, v in cpu.items() if g in ("farebox", "nginx")]
        # The origin direct has no proxy in between: nothing to show.
        shown = f"{sum(proxies):>7,.0f}us" if proxies else f"{'-':>9}"
        print(
            f"  {section + ': ' + str(run['target']):<52} {run['req_per_s']:>9,.0f}"
            f" {run['p50_ms']:>7.2f}ms {run['p99_ms']:>7.2f}ms {shown}"
        )
    stream = details.get("stream")
    if isinstance(stream, dict):
        for name in ("nginx", "farebox"):
            run = stream[name]
            print(f"  stream: {run['target']:<44} {run['mib_per_s']:>9,.1f} MiB/s")
    scaling = payload["scaling"]
    if isinstance(scaling, dict) and "rows" in scaling:
        print()
        print(f"  {'scaling (Redis)':<20} {'token req/s':>12} {'payments/s':>11}")
        for label, row in scaling["rows"].items():
            print(
                f"  {label:<20} {row.get('token_req_per_s', 0):>12,.0f}"
                f" {row.get('payments_per_s', 0):>11,.0f}"
            )
    errors = details.get("errors")
    if errors:
        print()
        for section, why in errors.items():
            print(f"NOT MEASURED {section}: {why}")


def walk_runs(details: dict[str, object]) -> Iterator[tuple[str, dict[str, object]]]:
    """Every wrk run in `details`, with the section it belongs to."""
    for section, value in details.items():
        if not isinstance(value, dict):
            continue
        if "req_per_s" in value and "target" in value:
            yield section, value
            continue
        for sub, inner in value.items():
            if isinstance(inner, dict):
                if "req_per_s" in inner and "target" in inner:
                    yield section, inner
                else:
                    for run in inner.values():
                        if isinstance(run, dict) and "req_per_s" in run and "target" in run:
                            yield f"{section} {sub}", run


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[Harness]:
    tmp = Path(tempfile.mkdtemp(prefix="farebox-bench-all-"))
    harness = Harness(args, tmp)
    try:
        harness.start()
        yield harness
    finally:
        # A second Ctrl-C must not cut the clean-up short and orphan servers.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            harness.close()
            if args.keep_temp:
                print(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)


def run_all(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, float | None] = dict.fromkeys(KEYS)
    details: dict[str, object] = {
        "settings": {
            "workers": args.workers,
            "connections": args.connections,
            "wrk_threads": 1,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "quick": args.quick,
            "price_sat": PRICE,
            "tab_top_up_sat": args.top_up,
            "store": "Redis: a redis-server the bench starts (no persistence); every farebox "
            "serve uses it, except bench/payments.py's 1-worker payments (memory store)",
            "origin": "nginx, 1 worker, serving a 1024-byte file and a sparse 1 GiB file",
        },
        "errors": {},
    }
    errors: dict[str, str] = details["errors"]  # type: ignore[assignment]
    scaling: dict[str, object] = {"skipped": "--quick"} if args.quick else {}
    with running(args) as h:
        print("all servers up; every target answered 200 with the expected body", flush=True)
        steps = [
            ("tokens", lambda: details.__setitem__("payments_for_tokens", buy_tokens(h))),
            ("proxies", lambda: measure_proxies(h, results, details)),
            ("token_nginx_front", lambda: measure_front(h, results, details)),
            ("challenge", lambda: measure_challenge(h, results, details)),
            ("metered", lambda: measure_metered(h, results, details)),
            ("payments", lambda: measure_payments(h, results, details)),
            ("stream", lambda: measure_stream(h, results, details)),
            ("latency", lambda: measure_latency(h, results, details)),
        ]
        if not args.quick:
            steps.append(("scaling", lambda: scaling.update(measure_scaling(h, details))))
        for name, step in steps:
            if "tokens" in errors and name in ("proxies", "metered", "latency", "scaling"):
                errors[name] = "no token: the payments for tokens failed"
                continue
            try:
                step()
            # SystemExit too: bench/payments.py's and metering.py's helpers
            # stop with one when a server does not come up.
            except (
                BenchError,
                SystemExit,
                OSError,
                KeyError,
                ValueError,
                subprocess.SubprocessError,
            ) as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"    could not measure {name}: {exc}", file=sys.stderr)
                if name == "scaling":
                    scaling["error"] = errors[name]
    goals = targets(results)
    return {
        **results,
        "targets": goals,
        "all_targets_met": all(g["met"] for g in goals.values() if g["met"] is not None),
        "details": details,
        "scaling": scaling,
        "machine": machine(args),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    keys = "\n".join(
        f"  {key:<34} {'(' + op + ' ' + format(value, 'g') + ') ' if op else ''}{text}"
        for key, (op, value, text) in KEYS.items()
    )
    parser = argparse.ArgumentParser(
        prog="bench/all.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog=f"Keys of the JSON (target in brackets):\n{keys}\n\n"
        "Default: 10s runs after 2s warm-ups, about 5 minutes; --quick: 3s after 1s, "
        "no scaling table, about 1.5 minutes.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3s runs after 1s warm-ups, fewer payments, one paced latency pair instead of "
        "three, no scaling table",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results to FILE")
    parser.add_argument(
        "--workers",
        type=pb.positive_int,
        default=1,
        metavar="N",
        help="worker processes of the main Farebox and of every nginx proxy (default 1; "
        "payments always run on 1 worker, the metered and scaling runs on 1 and 2)",
    )
    parser.add_argument(
        "--duration",
        "-d",
        type=pb.seconds,
        metavar="TIME",
        help="length of each measured wrk run (default 10s, --quick 3s)",
    )
    parser.add_argument(
        "--warmup",
        type=pb.seconds,
        metavar="TIME",
        help="warm-up before each measured run (default 2s, --quick 1s)",
    )
    parser.add_argument(
        "--connections",
        "-c",
        type=pb.positive_int,
        default=64,
        metavar="N",
        help="wrk connections of the closed-loop runs (default 64)",
    )
    parser.add_argument(
        "--top-up",
        type=int,
        default=5_000_000,
        metavar="SATS",
        help="satoshis paid into the tab (default 5,000,000)",
    )
    parser.add_argument(
        "--keep-temp", action="store_true", help="keep the temporary directory (configs, logs)"
    )
    parser.add_argument(
        "--nginx",
        default=pb.find_tool("nginx"),
        metavar="PATH",
        help="nginx binary (default: from PATH or /usr/sbin)",
    )
    parser.add_argument(
        "--wrk", default=pb.find_tool("wrk"), metavar="PATH", help="wrk binary (default: from PATH)"
    )
    parser.add_argument(
        "--redis-server",
        default=pb.find_tool("redis-server"),
        metavar="PATH",
        help="redis-server binary (default: from PATH)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    for tool in ("nginx", "wrk", "redis_server"):
        if not getattr(args, tool):
            parser.error(f"{tool.replace('_', '-')} not found: ./dev bench-all installs it")
    if not shutil.which("curl"):
        parser.error("curl not found (the 1 GiB downloads use it)")
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if args.duration < 1:
        parser.error("--duration must be at least 1s")
    if not 1000 <= args.top_up <= 9_999_990:
        parser.error("--top-up must be from 1000 to 9,999,990 satoshis (the faucet's cap)")
    return args


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    started = time.monotonic()
    print(
        f"Farebox bench-all: {args.workers} worker(s) for Farebox and nginx, wrk -t1 "
        f"-c{args.connections}, {args.duration:g}s runs after {args.warmup:g}s warm-ups"
        + (" (quick: no scaling)" if args.quick else ""),
        flush=True,
    )
    try:
        payload = run_all(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    print_report(payload)
    print(f"took {(time.monotonic() - started) / 60:.1f} min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results written to {args.json}")
    details = payload["details"]
    return 1 if isinstance(details, dict) and details.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
