"""A local BSV development chain (like regtest) for tests, `farebox demo` and standalone use.

`Devnet` (chain.py) is the chain itself, in memory and free of I/O; http.py
serves it with an ARC-compatible API, chain-tracking endpoints and a faucet.
"""

from gateway.devnet.chain import Block, Devnet, Rejection, SubmitResult, TxStatus
from gateway.devnet.http import main, make_app, start

__all__ = ["Block", "Devnet", "Rejection", "SubmitResult", "TxStatus", "main", "make_app", "start"]
