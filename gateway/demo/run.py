"""`farebox demo`: the gateway and a sample upstream in one process, no setup."""

from __future__ import annotations

import logging
from pathlib import Path

import uvloop
from bsv import PrivateKey

from gateway.config import Settings
from gateway.demo import upstream
from gateway.policy import PolicyError
from gateway.policy.reload import PolicyHolder
from gateway.server import configure_logging, run_worker

log = logging.getLogger("farebox.demo")

TRY = (
    ("free", "GET", "/archive/records/search?q=census"),
    ("free", "GET", "/archive/records/HLM-CR-1881"),
    ("paid", "GET", "/archive/records/HLM-CR-1881/pages/1"),
    ("free", "GET", "/opendata/search?q=air"),
    ("paid", "GET", "/opendata/query?dataset=air-quality&where=station=Market+Square"),
    ("paid", "GET", "/meter/meters/M-1001/reading"),
)


def run_demo(host: str, port: int, upstream_port: int, policies: Path) -> None:
    configure_logging("info")
    if upstream_port != 8403:
        raise SystemExit(
            "farebox demo: the example policies expect the sample upstream on port 8403"
        )
    try:
        holder = PolicyHolder.load(policies)
    except PolicyError as exc:
        raise SystemExit(f"farebox demo: example policies are invalid:\n{exc}") from None
    # A throw-away identity: demo payments are never worth keeping.
    server_key = PrivateKey().public_key().hex()
    settings = Settings(host=host, port=port, policies=policies)

    async def main() -> None:
        try:
            runner = await upstream.start("127.0.0.1", upstream_port)
        except OSError as exc:
            raise SystemExit(
                f"farebox demo: cannot start the sample upstream on port {upstream_port}: {exc.strerror}"
            ) from None
        try:
            await run_worker(
                settings, holder, server_key, ready=lambda p: _banner(host, p, policies)
            )
        finally:
            await runner.cleanup()

    uvloop.run(main())


def _banner(host: str, port: int, policies: Path) -> None:
    base = f"http://{host}:{port}"
    lines = [
        "",
        f"Farebox demo is running at {base} (Ctrl-C to stop)",
        f"Policies: {policies} (edit a file and the gateway reloads it)",
        "Try:",
    ]
    lines += [f"  curl -i '{base}{path}'   # {kind}" for kind, _, path in TRY]
    lines.append("")
    print("\n".join(lines), flush=True)
