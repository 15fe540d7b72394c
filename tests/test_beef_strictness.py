"""A payment's BEEF is its subject and the ancestry it needs, nothing else: on a real gateway.

V1 and V2 BEEF name no subject, so the last transaction is the payment; a
transaction neither it nor one of the ancestors it needs (see
gateway/bsv/beef.py) is refused as `400 malformed-beef` on every way in,
before anything is claimed or broadcast, as an Atomic BEEF's is.
"""

from __future__ import annotations

import base64
import time

import aiohttp
import pytest
from bsv import PrivateKey

from tests.chainkit import Tracker, atomic, beef_of, funding, pay, spend
from tests.conftest import PAID_SERVER
from tests.test_paid_access import FakeBroadcaster
from tests.test_payments import v2

CLIENT = PrivateKey(0xBEEF_5)
NONCE = "c3RyaWN0"


def payment(tracker: Tracker, envelope: str, extra: str | None) -> tuple[dict[str, str], str, str]:
    """BRC-121 fields paying 25 for /archive/pages/1, the BEEF carrying `extra`
    (or nothing more): (the fields, the payment's txid, the extra's txid)."""
    now = str(int(time.time() * 1000))
    p = pay(
        PAID_SERVER.public_key(),
        CLIENT,
        25,
        tracker,
        prefix=NONCE,
        suffix=base64.b64encode(now.encode()).decode(),
    )
    parent = p.tx.inputs[0].source_transaction
    if extra is None:
        order, stranger = (parent, p.tx), ""
    else:
        if extra == "proven stranger":
            stranger_tx = funding(PrivateKey(), 1000, tracker)
        else:  # an unconfirmed spend of someone else's coin, correctly signed
            other = PrivateKey()
            coin = funding(other, 5000, tracker)
            stranger_tx = spend(coin, 0, other, [(other.public_key(), 4000)])
        order, stranger = (parent, stranger_tx, p.tx), stranger_tx.txid()
    data = {
        "v1": beef_of,
        "v2": v2,
        "atomic": lambda *txs: atomic(p.tx, *txs),
    }[envelope](*order)
    fields = {
        "x-bsv-beef": base64.b64encode(data).decode(),
        "x-bsv-sender": CLIENT.public_key().hex(),
        "x-bsv-nonce": NONCE,
        "x-bsv-time": now,
        "x-bsv-vout": "0",
    }
    return fields, p.tx.txid(), stranger


@pytest.mark.parametrize("extra", ["proven stranger", "unconfirmed stranger"])
@pytest.mark.parametrize("envelope", ["v1", "v2", "atomic"])
async def test_unrelated_transaction_is_refused_on_every_way_in(
    paid_gateway, upstream, envelope: str, extra: str
) -> None:
    tracker, broadcaster = Tracker(), FakeBroadcaster()
    started = await paid_gateway(tracker, broadcaster)
    url = f"{started.base}/archive/pages/1"
    async with aiohttp.ClientSession() as http:
        # BRC-121 headers on the request itself.
        fields, txid, stranger = payment(tracker, envelope, extra)
        async with http.get(url, headers=fields) as r:
            body = await r.json(content_type=None)
            assert (r.status, body["reason"]) == (400, "malformed-beef"), body
            assert stranger in body["detail"] and "unrelated" in body["detail"]
        assert await started.store.receipt(txid) is None
        # The pay endpoint, JSON and raw BEEF.
        fields, txid, stranger = payment(tracker, envelope, extra)
        pay_url = f"{started.base}/.well-known/farebox/pay"
        as_json = {
            "beef": fields["x-bsv-beef"],
            "sender": fields["x-bsv-sender"],
            "nonce": fields["x-bsv-nonce"],
            "time": fields["x-bsv-time"],
            "vout": 0,
            "method": "GET",
            "url": "/archive/pages/1",
        }
        async with http.post(pay_url, json=as_json) as r:
            body = await r.json(content_type=None)
            assert (r.status, body["reason"]) == (400, "malformed-beef"), body
        query = {k: v for k, v in as_json.items() if k not in ("beef", "method")}
        query["vout"] = "0"
        async with http.post(
            pay_url,
            params=query,
            data=base64.b64decode(fields["x-bsv-beef"]),
            headers={"Content-Type": "application/octet-stream"},
        ) as r:
            body = await r.json(content_type=None)
            assert (r.status, body["reason"]) == (400, "malformed-beef"), body
        assert await started.store.receipt(txid) is None
    assert broadcaster.seen == [] and upstream.paths == []


@pytest.mark.parametrize("envelope", ["v1", "v2", "atomic"])
async def test_the_payment_alone_is_served(paid_gateway, upstream, envelope: str) -> None:
    tracker, broadcaster = Tracker(), FakeBroadcaster()
    started = await paid_gateway(tracker, broadcaster)
    fields, txid, _ = payment(tracker, envelope, None)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{started.base}/archive/pages/1", headers=fields) as r,
    ):
        assert r.status == 200, await r.text()
    assert await started.store.receipt(txid) is not None
    assert upstream.paths == ["/pages/1"]  # the mount is stripped
