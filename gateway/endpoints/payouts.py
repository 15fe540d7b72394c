"""A participant's payout, at the URL only they were given (X-Farebox-Payout).

GET /.well-known/farebox/payouts/CAMPAIGN/DIGEST/TICKET answers JSON: the
payout's status (reserved, owed, signed, sent, seen, mined, failed), amount
and, once signed, the txid, the output index and `internalizeAction`: the
arguments a BRC-100 wallet takes the payment in with (Atomic BEEF, BRC-95;
the BRC-29 derivation prefix, suffix and sender identity key). The ticket
is the secret: a wrong one gets the same 404 as an unknown payout.
"""

from __future__ import annotations

import json
import secrets

from aiohttp import web

from gateway.edge.problems import problem
from gateway.payouts.remittance import remittance
from gateway.services import Services

_SEGMENT_MAX = 128


async def payout(services: Services, request: web.BaseRequest, rest: str) -> web.Response:
    parts = rest.split("/")
    ledger = services.payouts
    if len(parts) != 3 or not all(0 < len(p) <= _SEGMENT_MAX for p in parts) or ledger is None:
        return _unknown()
    campaign, digest, ticket = parts
    found = await ledger.get(f"{campaign}:{digest}")
    if (
        found is None
        or found.ticket is None
        or not secrets.compare_digest(ticket.encode(), found.ticket.encode())
    ):
        return _unknown()
    shown: dict[str, object] = {
        "campaign": found.campaign,
        "satoshis": found.satoshis,
        "status": found.status,
        "recipient": found.recipient,
        "txid": found.txid,
        "vout": found.vout,
    }
    if found.reason:
        shown["reason"] = found.reason
    if found.txid:
        batch = await ledger.batch(found.txid)
        if batch is not None:
            shown["internalizeAction"] = remittance(found, batch)
    return web.Response(
        body=json.dumps(shown).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"},
    )


def _unknown() -> web.Response:
    return problem(
        404,
        "no-payout",
        "No such payout",
        "this payout URL is not known here (check it is the whole URL you were given)",
    )
