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

FAREBOX = [sys.executable, "-m", "gateway"]
DEMO_PORTS = (8402, 8403, 8404)  # a demo left running holds these


def hold_demo_ports() -> list[socket.socket]:
    """Listen on the default demo ports that are free, as a demo left running
    would: a test that needed them would fail here, not only beside a demo."""
    held = []
    for port in DEMO_PORTS:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        except OSError:
            s.close()  # a real demo holds it: as good
    return held


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_command(port: int, upstream: int, devnet: int) -> list[str]:
    """`farebox demo` on ports of its own: the tests run beside a demo someone
    left running on the default ones (the README's quick start)."""
    ports = ("--port", str(port), "--upstream-port", str(upstream), "--devnet-port", str(devnet))
    return [*FAREBOX, "demo", *ports]


async def test_demo_then_pay(tmp_path: Path) -> None:
    held = hold_demo_ports()
    port, upstream, devnet = free_port(), free_port(), free_port()
    env = {**os.environ, "FAREBOX_WALLET": str(tmp_path / "wallet.json")}
    demo = subprocess.Popen(
        demo_command(port, upstream, devnet),
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
        funded = farebox("wallet", "fund", "--devnet-url", f"http://127.0.0.1:{devnet}")
        assert funded.returncode == 0, funded.stderr

        first = farebox("pay", url)
        assert first.returncode == 0, first.stderr
        assert "HLM-CR-1881, page 1" in first.stdout
        paid = re.search(r"paid 25 satoshis .*txid ([0-9a-f]{64})", first.stderr)
        assert paid, first.stderr
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{devnet}/v1/tx/{paid.group(1)}") as r,
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
        for s in held:
            s.close()


async def test_demo_rewards_a_resident_once_into_their_wallet(tmp_path: Path) -> None:
    """The README's consultation walk-through: a credential from the register, an
    answer to the survey, the reward paid from the demo's treasury into the
    citizen's `farebox wallet`, once."""
    port, upstream, devnet = free_port(), free_port(), free_port()
    citizen = tmp_path / "citizen.json"
    env = {**os.environ, "FAREBOX_WALLET": str(citizen)}
    demo = subprocess.Popen(
        demo_command(port, upstream, devnet),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )

    def farebox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FAREBOX, *args], capture_output=True, text=True, env=env, timeout=60
        )

    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if not port_free(port):
                break
            await asyncio.sleep(0.1)
        made = farebox("wallet", "new")
        assert made.returncode == 0, made.stderr
        key = re.search(r"identity key: ([0-9a-f]{66})", made.stdout).group(1)  # type: ignore[union-attr]
        assert farebox("wallet", "identity").stdout.strip() == key
        survey = f"{base}/consult/surveys/riverside-park/responses"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/register/credentials", json={"resident": "HM-R-1001"}
            ) as r:
                assert r.status == 201
                token = (await r.json())["credential"]
            headers = {"X-Farebox-Eligibility": token, "X-Farebox-Payout-To": key}
            async with http.post(survey, json={"answer": "more trees"}, headers=headers) as r:
                assert r.status == 201 and r.headers["X-Farebox-Reward"] == "100"
                url = r.headers["X-Farebox-Payout"]
            async with http.post(survey, json={"answer": "lighting"}, headers=headers) as r:
                assert r.status == 201 and r.headers["X-Farebox-Payout"] == url  # once
            for _ in range(100):  # the demo pays every few seconds
                async with http.get(url) as r:
                    payout = await r.json()
                if payout["status"] in ("seen", "mined"):
                    break
                await asyncio.sleep(0.2)
            assert payout["status"] in ("seen", "mined"), payout
            async with http.get(f"{base}/.well-known/farebox/transparency?format=json") as r:
                report = await r.json()
        assert report["payout_totals_satoshis"] == {"riverside-park-2027": 100}
        other = tmp_path / "other.json"
        assert farebox("wallet", "new", "--wallet", str(other)).returncode == 0
        wrong = farebox(
            "wallet", "receive", "--payout", url, "--wallet", str(other), "--devnet-url",
            f"http://127.0.0.1:{devnet}",
        )  # fmt: skip
        assert wrong.returncode == 1 and f"this payout is for {key}" in wrong.stderr
        chain = ("--devnet-url", f"http://127.0.0.1:{devnet}")
        received = farebox("wallet", "receive", "--payout", url, *chain)
        assert received.returncode == 0, received.stderr
        assert "received 100 satoshis" in received.stdout
        again = farebox("wallet", "receive", "--payout", url, *chain)
        assert "balance: 100 satoshis" in again.stdout
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(15)
