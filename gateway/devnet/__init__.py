"""A local BSV development chain (like regtest) for tests, `farebox demo` and standalone use.

`Devnet` (chain.py) is the chain itself, in memory and free of I/O, over its
transactions (ledger.py) and blocks (blocks.py); http.py serves it with an
ARC-compatible API, chain-tracking endpoints and a faucet.
"""

from gateway.devnet.blocks import Block
from gateway.devnet.chain import Devnet
from gateway.devnet.http import main, make_app, start
from gateway.devnet.ledger import Rejection, SubmitResult, TxStatus

__all__ = ["Block", "Devnet", "Rejection", "SubmitResult", "TxStatus", "main", "make_app", "start"]
