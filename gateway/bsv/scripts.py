"""Scripts: does an input unlock what it spends, and how chain indexers name a script.

`script_failure` is the one script check, for the gateway verifying a
payment's unconfirmed transactions and the devnet accepting a transaction
alike. It runs bsv-sdk's interpreter (`Spend`) on one input against the
output it spends; the signature hash (BIP-143 with FORKID) commits to that
output's amount and locking script, so both must be given. Not
`Transaction.verify()`: that also wants proofs of the parents, defaults to a
network chain tracker, recurses without a memo and passes a transaction
with no inputs.
"""

from __future__ import annotations

import hashlib

from bsv import Script, Transaction
from bsv.script.spend import Spend


def script_failure(
    tx: Transaction, index: int, satoshis: int, locking_script: Script
) -> str | None:
    """Why input `index` of `tx` does not unlock an output of `satoshis` locked by
    `locking_script`, in one line; None when it does."""
    tx_input = tx.inputs[index]
    spend = Spend(
        {
            "sourceTXID": tx_input.source_txid,
            "sourceOutputIndex": tx_input.source_output_index,
            "sourceSatoshis": satoshis,
            "lockingScript": locking_script,
            "transactionVersion": tx.version,
            "otherInputs": [other for j, other in enumerate(tx.inputs) if j != index],
            "inputIndex": index,
            "unlockingScript": tx_input.unlocking_script,
            "outputs": tx.outputs,
            "inputSequence": tx_input.sequence,
            "lockTime": tx.locktime,
        }
    )
    # validate() reports failure by raising (RuntimeError from the
    # interpreter; others for scripts it cannot even parse), rarely by False.
    try:
        valid = spend.validate()
    except Exception as exc:
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    return None if valid else "script evaluated to false"


def script_hash(script: bytes) -> str:
    """The name WhatsOnChain (and Electrum) index a locking script by: its SHA-256,
    byte-reversed, as hex."""
    return hashlib.sha256(script).digest()[::-1].hex()
