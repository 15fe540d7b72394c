"""What a recipient needs to take a payout into a BRC-100 wallet.

A payout to a public key pays the BRC-29 key derived from it (BRC-29:
invoice `2-3241645161d8-<prefix> <suffix>`, counterparty the treasury's
identity key). The recipient's wallet finds the output and its key with
`internalizeAction` (BRC-100) given the transaction as Atomic BEEF (BRC-95)
and, for that output, the protocol "wallet payment" with the derivation
prefix, suffix and sender identity key. A payout to an address needs no
data: the address's own key spends it.
"""

from __future__ import annotations

from typing import Any

from gateway.payouts.records import Batch, Payout

DESCRIPTION = "Payout from Farebox"  # BRC-100: a description is 5 to 50 bytes


def remittance(payout: Payout, batch: Batch) -> dict[str, Any] | None:
    """The `internalizeAction` arguments for `payout` paid by `batch`, in the
    JSON shape of the BRC-100 wallet interface (`tx`: the Atomic BEEF as a
    list of byte values); None for a payout to an address, or not signed."""
    if not payout.derived or payout.vout is None or payout.txid != batch.txid:
        return None
    return {
        "tx": list(batch.beef),
        "outputs": [
            {
                "outputIndex": payout.vout,
                "protocol": "wallet payment",
                "paymentRemittance": {
                    "derivationPrefix": payout.prefix,
                    "derivationSuffix": payout.suffix,
                    "senderIdentityKey": payout.sender,
                },
            }
        ],
        "description": DESCRIPTION,
        "labels": ["farebox payout"],
    }
