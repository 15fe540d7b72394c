"""Scripts: does an input unlock what it spends, and how chain indexers name a script.

`script_failure` is the one script check, for the gateway verifying a
payment's unconfirmed transactions and the devnet accepting a transaction
alike. It runs bsv-sdk's interpreter (`Spend`) on one input against the
output it spends; the signature hash (BIP-143 with FORKID) commits to that
output's amount and locking script, so both must be given. Not
`Transaction.verify()`: that also wants proofs of the parents, defaults to a
network chain tracker, recurses without a memo and passes a transaction
with no inputs.

For the one spend a payment may make (P2PKH, unlocked by two plain pushes)
the interpreter's native core is called straight, with the very arguments
bsv-sdk's `Spend` would give it, the script chunks read from the bytes
here (bsv-sdk reads them in Python on every check); anything else goes
through `Spend`.
"""

from __future__ import annotations

import hashlib

from bsv import Script, Transaction
from bsv.native import NATIVE_AVAILABLE
from bsv.native import NATIVE_MODULE as _native
from bsv.script.spend import Spend

# OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG as the interpreter's
# (opcode, data) chunks: only the push carries data.
_P2PKH_OPS = (0x76, 0xA9, 0x14, 0x88, 0xAC)


def script_failure(
    tx: Transaction, index: int, satoshis: int, locking_script: Script
) -> str | None:
    """Why input `index` of `tx` does not unlock an output of `satoshis` locked by
    `locking_script`, in one line; None when it does."""
    tx_input = tx.inputs[index]
    if NATIVE_AVAILABLE and tx_input.unlocking_script is not None:
        lock = locking_script.serialize()
        pushes = two_pushes(tx_input.unlocking_script.serialize())
        if pushes is not None and is_p2pkh(lock):
            return _p2pkh_failure(tx, index, satoshis, lock, pushes)
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


def _p2pkh_failure(
    tx: Transaction, index: int, satoshis: int, lock: bytes, pushes: tuple[bytes, bytes]
) -> str | None:
    """`script_failure` for a P2PKH output unlocked by two direct pushes: what
    `Spend(...).validate()` runs natively (bsv-sdk's `Spend._validate_native`),
    with the chunks it would build."""
    tx_input = tx.inputs[index]
    others = [
        (
            other.source_txid,
            other.source_output_index,
            other.locking_script.serialize() if other.locking_script else b"",
            other.satoshis or 0,
            other.sequence,
            int(other.sighash),
        )
        for j, other in enumerate(tx.inputs)
        if j != index
    ]
    unlock = [(len(pushes[0]), pushes[0]), (len(pushes[1]), pushes[1])]
    locks = [(op, lock[3:23] if op == 0x14 else None) for op in _P2PKH_OPS]
    try:
        valid = _native.spend_validate(
            unlock,
            locks,
            tx.version,
            tx_input.source_txid,
            tx_input.source_output_index,
            tx.locktime,
            index,
            tx_input.sequence,
            satoshis,
            others,
            [output.serialize() for output in tx.outputs],
        )
    except Exception as exc:  # as script_failure reports the interpreter's refusals
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    return None if valid else "script evaluated to false"


def two_pushes(script: bytes) -> tuple[bytes, bytes] | None:
    """The data of a script that is exactly two direct pushes (opcodes 0x01-0x4b),
    like a P2PKH unlocking script's signature and public key; else None."""
    size = len(script)
    if size < 4:
        return None
    first = script[0]
    if not 0x01 <= first <= 0x4B or first + 2 >= size:
        return None
    second = script[first + 1]
    if not 0x01 <= second <= 0x4B or first + second + 2 != size:
        return None
    return script[1 : first + 1], script[first + 2 :]


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
    unlocking = unlocking_script.serialize()
    if len(unlocking) > MAX_UNLOCKING_BYTES:
        return f"its unlocking script is over {MAX_UNLOCKING_BYTES} bytes"
    if two_pushes(unlocking) is None and not unlocking_script.is_push_only():
        return "its unlocking script is not pushes only"
    return None


def script_hash(script: bytes) -> str:
    """The name WhatsOnChain (and Electrum) index a locking script by: its SHA-256,
    byte-reversed, as hex."""
    return hashlib.sha256(script).digest()[::-1].hex()
