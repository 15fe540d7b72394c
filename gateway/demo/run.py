"""`farebox demo`: gateway, sample upstream and a devnet in one process, no setup."""

from __future__ import annotations

import logging
import socket
import tempfile
from pathlib import Path

import uvloop
from bsv import PrivateKey

from gateway.chain.local import LocalBroadcaster
from gateway.chain.watch import LocalWatcher
from gateway.client import Wallet, fund
from gateway.config import Settings
from gateway.demo import upstream
from gateway.devnet import Devnet
from gateway.devnet import start as start_devnet
from gateway.policy import PolicyError
from gateway.policy.reload import PolicyHolder
from gateway.serve.assemble import Startup
from gateway.serve.worker import configure_logging, run_worker
from gateway.tokens import KeyRing, Tokens

log = logging.getLogger("farebox.demo")

UPSTREAM_PORT = 8403
DEVNET_PORT = 8404
BLOCK_INTERVAL = 10.0

# Made-up exchange rates for the example policies' fiat prices (the transit
# fare): demo figures, not market rates. The devnet's coins are worth
# nothing, and at these rates fiat prices come out at demo-sized amounts:
# a euro cent is 1.25 satoshis, a US cent 1 satoshi. A real gateway sets
# --rate-usd / --rate-eur or --rate-feed.
DEMO_RATE_EUR = 800_000.0  # EUR per BSV
DEMO_RATE_USD = 1_000_000.0  # USD per BSV

TRY = (
    ("free", "/archive/records/search?q=census"),
    ("free", "/archive/records/HLM-CR-1881"),
    ("25 sats", "/archive/records/HLM-CR-1881/pages/1"),
    ("free", "/opendata/search?q=air"),
    (
        "3 a day free, then 10 sats",
        "/opendata/query?dataset=air-quality&where=station=Market+Square",
    ),
    ("200 sats a day", "/opendata/export/air-quality.csv"),
    ("10 sats per MB, prepaid tab", "/opendata/bulk/air-quality.csv"),
    ("free", "/meter/meters/M-1001/reading"),
    ("free", "/transit/lines/T1/timetable"),
)


TREASURY_FUNDS = 1_000_000  # satoshis the demo's payout treasury starts with
PAYOUTS_INTERVAL = 5  # seconds: rewards owed are paid this soon


def demo_settings(
    host: str,
    port: int,
    policies: Path,
    workdir: Path | None = None,
    devnet_port: int = DEVNET_PORT,
) -> Settings:
    """The demo's settings: the example policies and the demo's fixed rates; with
    `workdir`, a payout treasury and ledger there (rewards are paid)."""
    payouts: dict[str, object] = {}
    if workdir is not None:
        payouts = {
            "devnet_url": f"http://127.0.0.1:{devnet_port}",
            "payouts_wallet": workdir / "treasury.json",
            "payouts_ledger": workdir / "payouts.db",
            "payouts_interval": f"{PAYOUTS_INTERVAL}s",
            "payouts_low_balance": TREASURY_FUNDS // 10,
        }
    # Cookies over plain http://127.0.0.1 would never be sent if marked Secure.
    return Settings(
        host=host,
        port=port,
        policies=policies,
        **payouts,
        cookie_secure=False,
        receipts_file=None,  # throw-away keys: nothing to sweep
        rate_eur=DEMO_RATE_EUR,
        rate_usd=DEMO_RATE_USD,
        # x402 clients are told which chain to pay on: the demo's own, never mainnet.
        x402_network="bsv:devnet",
    )


def run_demo(
    host: str,
    port: int,
    policies: Path,
    upstream_port: int = UPSTREAM_PORT,
    devnet_port: int = DEVNET_PORT,
) -> None:
    """Run the demo until Ctrl-C. The example policies name the sample upstream
    at 127.0.0.1:8403: on another port (0: any free one) the demo serves a
    copy of them that names it there."""
    configure_logging("info")
    # Throw-away keys: demo payments are never worth keeping.
    keydir = Path(tempfile.mkdtemp(prefix="farebox-demo-"))
    upstream_port = upstream_port or _free_port()
    devnet_port = devnet_port or _free_port()
    served = policies
    if upstream_port != UPSTREAM_PORT:
        served = _policies_for(policies, upstream_port, keydir / "policies")
    try:
        holder = PolicyHolder.load(served)
    except PolicyError as exc:
        raise SystemExit(f"farebox demo: example policies are invalid:\n{exc}") from None
    startup = Startup(holder, PrivateKey(), Tokens(KeyRing.load(keydir / "token-keys")))
    settings = demo_settings(host, port, served, keydir, devnet_port)
    devnet_url = f"http://127.0.0.1:{devnet_port}"

    async def main() -> None:
        runners = []
        try:
            runners.append(await upstream.start("127.0.0.1", upstream_port))
            devnet_runner, devnet = await start_devnet(
                "127.0.0.1", devnet_port, devnet=Devnet(), block_interval=BLOCK_INTERVAL
            )
            runners.append(devnet_runner)
        except OSError as exc:
            for runner in runners:
                await runner.cleanup()
            raise SystemExit(
                f"farebox demo: a demo port is taken ({exc.strerror}); is another demo "
                "running? (--upstream-port 0 --devnet-port 0 take free ones)"
            ) from None
        # The city's treasury, funded from the devnet, pays the consultation's rewards.
        assert settings.payouts_wallet is not None
        treasury = Wallet.create(settings.payouts_wallet)
        await fund(treasury, TREASURY_FUNDS, devnet_url)
        ports = (upstream_port, devnet_port)
        try:
            await run_worker(
                settings,
                startup,
                chain=(devnet, LocalBroadcaster(devnet)),
                watcher=LocalWatcher(devnet),
                ready=lambda p: _banner(host, p, served, *ports),
            )
        finally:
            for runner in runners:
                await runner.cleanup()

    uvloop.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _policies_for(policies: Path, upstream_port: int, folder: Path) -> Path:
    """A copy of the example policies naming the sample upstream on `upstream_port`."""
    folder.mkdir(parents=True)
    files = [policies] if policies.is_file() else sorted(policies.glob("*.y*ml"))
    for path in files:
        text = path.read_text(encoding="utf-8")
        moved = text.replace(f"127.0.0.1:{UPSTREAM_PORT}", f"127.0.0.1:{upstream_port}")
        (folder / path.name).write_text(moved, encoding="utf-8")
    return folder


def _banner(host: str, port: int, policies: Path, upstream_port: int, devnet_port: int) -> None:
    base = f"http://{host}:{port}"
    devnet = "" if devnet_port == DEVNET_PORT else f" --devnet-url http://127.0.0.1:{devnet_port}"
    lines = [
        "",
        f"Farebox demo is running at {base} (Ctrl-C to stop)",
        f"  sample upstream  http://127.0.0.1:{upstream_port}",
        f"  devnet + faucet  http://127.0.0.1:{devnet_port}  (mines every {BLOCK_INTERVAL:.0f} s)",
        f"  policies         {policies} (edit a file and the gateway reloads it)"
        + (
            ""
            if upstream_port == UPSTREAM_PORT
            else "\n                   (a copy of the "
            f"examples naming the upstream on port {upstream_port})"
        ),
        f"  fiat rates       1 BSV = {DEMO_RATE_EUR:,.0f} EUR = {DEMO_RATE_USD:,.0f} USD"
        " (made-up demo figures)",
        "",
        "Look around:",
    ]
    lines += [f"  curl -i '{base}{path}'   # {kind}" for kind, path in TRY]
    lines += [
        "",
        "Pay from another terminal:",
        f"  farebox wallet new && farebox wallet fund{devnet}",
        f"  farebox pay '{base}{TRY[2][1]}'",
        f"  farebox pay --method POST --data '{{\"kwh\": 3.5}}' '{base}/meter/meters/M-1001/draw'",
        f"  farebox pay --method POST '{base}/transit/lines/T1/board'",
        "",
        "Take part in the city consultation (each resident is rewarded once):",
        f'  curl -s -X POST {base}/register/credentials -d \'{{"resident": "HM-R-1001"}}\'',
        f"  curl -i -X POST {base}/consult/surveys/riverside-park/responses \\",
        "       -H 'X-Farebox-Eligibility: <credential>' -H 'X-Farebox-Payout-To: <identity key>' \\",
        '       -d \'{"answer": "more trees"}\'',
        f"  (the README's walk-through; the treasury holds {TREASURY_FUNDS:,} satoshis)",
        "",
    ]
    print("\n".join(lines), flush=True)
