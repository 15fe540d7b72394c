"""The README's promise: `farebox demo`, then `farebox pay` from another terminal."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

FAREBOX = [sys.executable, "-m", "gateway"]
DEMO_PORTS = (8403, 8404)  # the sample upstream and devnet the example policies expect


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_demo_then_pay(tmp_path: Path) -> None:
    if not all(port_free(p) for p in DEMO_PORTS):
        pytest.fail(f"ports {DEMO_PORTS} are taken: is a farebox demo already running?")
    port = free_port()
    env = {**os.environ, "FAREBOX_WALLET": str(tmp_path / "wallet.json")}
    demo = subprocess.Popen(
        [*FAREBOX, "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if not port_free(port):
                break
            await asyncio.sleep(0.1)
        url = f"{base}/archive/records/HLM-CR-1881/pages/1"

        def farebox(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*FAREBOX, *args], capture_output=True, text=True, env=env, timeout=60
            )

        assert farebox("wallet", "new").returncode == 0
        funded = farebox("wallet", "fund")
        assert funded.returncode == 0, funded.stderr

        first = farebox("pay", url)
        assert first.returncode == 0, first.stderr
        assert "HLM-CR-1881, page 1" in first.stdout
        paid = re.search(r"paid 25 satoshis .*txid ([0-9a-f]{64})", first.stderr)
        assert paid, first.stderr
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:8404/v1/tx/{paid.group(1)}") as r,
        ):
            assert (await r.json())["txStatus"] in ("SEEN_ON_NETWORK", "MINED")

        again = farebox("pay", url)
        assert again.returncode == 0 and again.stdout == first.stdout
        assert "paid nothing" in again.stderr

        # A day pass: one payment opens every dataset export.
        export = f"{base}/opendata/export/air-quality.csv"
        bought = farebox("pay", export)
        assert bought.returncode == 0 and "paid 200 satoshis" in bought.stderr, bought.stderr
        assert "," in bought.stdout.splitlines()[0]  # the CSV itself
        other = farebox("pay", f"{base}/opendata/export/bus-punctuality.csv")
        assert other.returncode == 0 and "paid nothing" in other.stderr, other.stderr

        # A transit card: the first ride loads a prepaid tab with EUR 8 (1000
        # satoshis at the demo's rate), every ride takes the EUR 1.20 fare.
        board = ("pay", "--method", "POST", f"{base}/transit/lines/T1/board")
        ride = farebox(*board)
        assert ride.returncode == 0, ride.stderr
        assert json.loads(ride.stdout)["boarded_at"]["name"] == "Quay Road"
        assert "paid 1000 satoshis" in ride.stderr and "charged 150 satoshis" in ride.stderr
        ride = farebox(*board)
        assert ride.returncode == 0 and "paid 1000" not in ride.stderr, ride.stderr
        assert "charged 150 satoshis" in ride.stderr and "700 left" in ride.stderr
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(15)
