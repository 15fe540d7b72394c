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


MAX_UNLOCKING_BYTES = 1650  # the network's standardness limit on an unlocking script


def is_p2pkh(script: bytes) -> bool:
    """OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG."""
    return len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac"


def nonstandard_spend(locking_script: Script, unlocking_script: Script | None) -> str | None:
    """Why spending `locking_script` with `unlocking_script` could cost more than one
    signature check, in one line; None for a standard P2PKH spend.

    A P2PKH output unlocked by pushes alone runs a handful of operations and
    one ECDSA verification; anything else may run loops of DUP/CAT and hashes
    over megabytes (a 139-byte script can hold an event loop for seconds).
    """
    if not is_p2pkh(locking_script.serialize()):
        return "it spends an output that is not P2PKH"
    if unlocking_script is None:
        return "it has no unlocking script"
    if len(unlocking_script.serialize()) > MAX_UNLOCKING_BYTES:
        return f"its unlocking script is over {MAX_UNLOCKING_BYTES} bytes"
    if not unlocking_script.is_push_only():
        return "its unlocking script is not pushes only"
    return None


def script_hash(script: bytes) -> str:
    """The name WhatsOnChain (and Electrum) index a locking script by: its SHA-256,
    byte-reversed, as hex."""
    return hashlib.sha256(script).digest()[::-1].hex()
