"""Coins from a devnet faucet (`farebox demo` serves one on port 8404)."""

from __future__ import annotations

import aiohttp

from gateway.client.coins import Coin
from gateway.client.errors import ClientError
from gateway.client.wallet import Wallet

DEFAULT_DEVNET = "http://127.0.0.1:8404"


class FaucetUnavailable(ClientError):
    pass


async def fund(
    wallet: Wallet,
    satoshis: int,
    devnet_url: str = DEFAULT_DEVNET,
    *,
    http: aiohttp.ClientSession | None = None,
) -> Coin:
    """Ask the faucet for `satoshis` to a fresh wallet key and record the coin."""
    base = devnet_url.rstrip("/")
    index, key = wallet.new_key()
    own = http is None
    session = http or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        async with session.post(
            f"{base}/faucet", json={"pubkey": key.public_key().hex(), "satoshis": satoshis}
        ) as resp:
            answer = await resp.json(content_type=None)
            if resp.status != 200:
                why = answer.get("extraInfo") if isinstance(answer, dict) else None
                raise FaucetUnavailable(f"the faucet at {base} refused: {why or resp.reason}")
    except aiohttp.ClientConnectorError:
        raise FaucetUnavailable(
            f"no devnet answers at {base}: is `farebox demo` running? "
            "(it serves the devnet faucet there; or give --devnet-url URL)"
        ) from None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise FaucetUnavailable(f"the faucet at {base} gave no usable answer: {exc}") from None
    finally:
        if own:
            await session.close()
    try:
        beef, txid, vout = bytes.fromhex(answer["beef"]), str(answer["txid"]), int(answer["vout"])
    except (KeyError, TypeError, ValueError):
        raise FaucetUnavailable(f"the faucet at {base} answered without a usable BEEF") from None
    coin = wallet.receive(beef, txid, vout, index)
    if wallet.chain != base:
        wallet.set_chain(base)  # where fresh merkle proofs for these coins come from
    return coin
