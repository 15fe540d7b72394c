"""An adversary's look at x402 v2 (`exact` on `bsv:*`): money first, then the wire.

The flaws it found (the payment forwarded to the service, directly and
behind nginx; PAYMENT-RESPONSE lost behind nginx; a 500 on a txid-only
subject; resource.url behind a TLS proxy) each failed before its fix; the
other tests are attacks that held from the start.

A real gateway over a fake chain (tests/chainkit.py), built here rather than
with `paid_gateway` so one rig can switch its store and chain off, revoke
grants, trust a proxy in front, and serve a metered and a free route too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey, PublicKey, Transaction
from multidict import CIMultiDict

from gateway.bsv.derivation import payee_key_for_sender
from gateway.chain import ChainError
from gateway.edge.forwarded import networks
from gateway.errors import PaymentError
from gateway.payments.cashier import Cashier
from gateway.payments.intake import from_request
from gateway.pipeline.credentials import Revocations
from gateway.policy.reload import PolicyHolder
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.tokens import KeyRing, Tokens
from tests.chainkit import Tracker, atomic, atomic_beef, beef_of, faucet, funding, spend
from tests.conftest import PAID_SERVER, Upstream
from tests.test_intake import SwitchableStore
from tests.test_nginx import decoy, front  # noqa: F401 (fixtures)
from tests.test_paid_access import CLIENT, FakeBroadcaster

SERVER_HEX = PAID_SERVER.public_key().hex()
NET = "bsv:mainnet"
PAGE = "/archive/pages/1"  # 25 satoshis
OTHER_PAGE = "/archive/pages/2"
FREE = "/archive/about"
CALLS = "/util/calls/1"  # metered: tabs topped up with at least 1000

POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    routes:
      - path: /pages/{{n}}
        price: 25
        grant: {{lasts: 1h, covers: resource}}
      - path: /**
        price: free
  util:
    upstream: {upstream}
    mount: /util
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /calls/{{n}}
        price: 10
        meter: {{per: request}}
"""


class SwitchableTracker(Tracker):
    """The chainkit tracker, unreachable while `down` (a headers service outage)."""

    down: bool = False

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        if self.down:
            raise ChainError("unreachable", "connection refused")
        return await super().is_valid_root_for_height(root, height)


@dataclass
class Rig:
    base: str
    tracker: SwitchableTracker
    broadcaster: FakeBroadcaster
    store: SwitchableStore
    tokens: Tokens
    upstream: Upstream
    proxy: Proxy
    cashier: Cashier | None = None

    @property
    def upstream_calls(self) -> int:
        return len(self.upstream.seen)


@pytest.fixture
async def rig(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Rig]:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(textwrap.dedent(POLICY.format(upstream=upstream.url)))
    store = SwitchableStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    tracker, broadcaster = SwitchableTracker(), FakeBroadcaster()
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    proxy = Proxy(connect_timeout=2, read_timeout=5)
    await proxy.start()
    proxy.own_token = tokens.issued_here  # type: ignore[attr-defined]
    proxy.trusted = networks(["127.0.0.1/32"])  # a TLS proxy in front, on loopback
    services = Services(
        PolicyHolder.load(folder),
        SERVER_HEX,
        tokens=tokens,
        cashier=cashier,
        store=store,
        revocations=Revocations(store, ttl=0),
        cookie_secure=False,
    )
    runner = web.ServerRunner(web.Server(assemble_gateway(services, proxy).handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield Rig(
        f"http://127.0.0.1:{runner.addresses[0][1]}",
        tracker,
        broadcaster,
        store,
        tokens,
        upstream,
        proxy,
        cashier,
    )
    await runner.cleanup()
    await proxy.close()


# --- building payments ------------------------------------------------------------------


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(value: str) -> Any:
    return json.loads(base64.b64decode(value))


def offered(satoshis: int = 25, network: str = NET) -> dict[str, Any]:
    return {
        "scheme": "exact",
        "network": network,
        "amount": str(satoshis),
        "asset": "BSV",
        "payTo": SERVER_HEX,
        "maxTimeoutSeconds": 60,
        "extra": {"payloadFormat": {"kind": "brc29-beef"}},
    }


@dataclass
class Built:
    signature: dict[str, Any]
    tx: Transaction
    parent: Transaction
    prefix: str
    suffix: str
    time_ms: str

    @property
    def txid(self) -> str:
        return self.tx.txid()

    @property
    def value(self) -> str:
        return b64(json.dumps(self.signature))

    @property
    def header(self) -> dict[str, str]:
        return {"PAYMENT-SIGNATURE": self.value}

    def brc121(self, vout: int = 0) -> dict[str, str]:
        """The very same transaction as BRC-121 headers (the same BRC-29 key)."""
        return {
            "x-bsv-beef": b64(atomic_beef(self.tx)),
            "x-bsv-sender": CLIENT.public_key().hex(),
            "x-bsv-nonce": self.prefix,
            "x-bsv-time": self.time_ms,
            "x-bsv-vout": str(vout),
        }


def build(
    rig: Rig,
    sats: int = 25,
    *,
    outputs: list[str | int] | None = None,
    time_text: str | None = None,
    accepted: dict[str, Any] | None = None,
    vout: int = 0,
    beef: str = "atomic",
    url: str = PAGE,
) -> Built:
    """A PAYMENT-SIGNATURE from CLIENT. `outputs`: per output, "payee:N" pays N to
    the derived key, "change" the rest back to the client, or an int paying the client."""
    time_text = str(int(time.time() * 1000)) if time_text is None else time_text
    prefix = b64(os.urandom(12))
    suffix = b64(time_text)
    parent = funding(CLIENT, 100_000, rig.tracker)
    payee = payee_key_for_sender(PublicKey(SERVER_HEX), CLIENT, prefix, suffix)
    plan = outputs or [f"payee:{sats}", "change"]
    fixed = sum(int(i.split(":")[1]) if isinstance(i, str) and i != "change" else 0 for i in plan)
    fixed += sum(i for i in plan if isinstance(i, int))
    change = parent.outputs[0].satoshis - fixed - 30
    outs: list[tuple[PublicKey | str, int]] = []
    for item in plan:
        if isinstance(item, int):
            outs.append((CLIENT.public_key(), item))
        elif item == "change":
            outs.append((CLIENT.public_key(), change))
        else:
            outs.append((payee, int(item.split(":")[1])))
    tx = spend(parent, 0, CLIENT, outs)
    data = {
        "atomic": atomic_beef(tx),
        "v1": beef_of(parent, tx, version=1),
        "v2": beef_of(parent, tx, version=2),
        "atomic-v2": atomic(tx, parent, tx),
    }[beef]
    signature = {
        "x402Version": 2,
        "resource": {"url": rig.base + url},
        "accepted": accepted if accepted is not None else offered(sats),
        "payload": {
            "transaction": b64(data),
            "derivationPrefix": prefix,
            "derivationSuffix": suffix,
            "senderIdentityKey": CLIENT.public_key().hex(),
            "outputIndex": vout,
        },
    }
    return Built(signature, tx, parent, prefix, suffix, time_text)


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def reason(self) -> str | None:
        try:
            return self.problem().get("reason")
        except ValueError:
            return None

    def required(self) -> dict[str, Any]:
        return unb64(self.headers["PAYMENT-REQUIRED"])

    def response(self) -> dict[str, Any]:
        return unb64(self.headers["PAYMENT-RESPONSE"])


async def fetch(
    url: str,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    method: str = "GET",
    **kw: Any,
) -> Answer:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=CIMultiDict(headers or {}), **kw) as r,
    ):
        return Answer(r.status, CIMultiDict(r.headers), await r.read())


async def pay(rig: Rig, built: Built, target: str = PAGE) -> Answer:
    return await fetch(rig.base + target, built.header)


def assert_402_well_formed(answer: Answer, satoshis: int) -> dict[str, Any]:
    """A 402 whose PAYMENT-REQUIRED is base64 JSON asking what the body asks."""
    assert answer.status == 402, answer.body[:300]
    required = answer.required()
    assert required["x402Version"] == 2
    (entry,) = required["accepts"]
    assert entry["amount"] == str(satoshis) == answer.headers["x-bsv-sats"]
    assert entry["payTo"] == SERVER_HEX == answer.headers["x-bsv-server"]
    assert entry["network"] == NET
    return required


# --- money: nothing served unpaid, nothing paid twice ---------------------------------------


async def test_accepted_amount_below_the_price_with_the_output_paying_it(rig: Rig) -> None:
    """The client says it accepted 1 satoshi; its output pays 25: refused, not half-read."""
    built = build(rig, 25, accepted=offered(1))
    answer = await pay(rig, built)
    assert answer.status == 402 and answer.reason == "amount-mismatch"
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0
    # Both agree on 1 satoshi: still the price is 25.
    cheap = build(rig, 1, accepted=offered(1))
    answer = await pay(rig, cheap)
    assert answer.status == 402 and answer.reason == "underpaid"
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0


@pytest.mark.parametrize(
    "amount",
    ["25.0", "2.5e1", "-25", "+25", " 25", "25 ", "0x19", "\uff12\uff15", "", "1" * 17, 25, 25.0],
)
async def test_an_amount_that_is_not_plain_decimal_satoshis_is_400(rig: Rig, amount: Any) -> None:
    built = build(rig, 25, accepted={**offered(25), "amount": amount})
    answer = await pay(rig, built)
    assert answer.status == 400, answer.body
    assert answer.problem()["field"] == "accepted.amount"
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0


async def test_leading_zeros_in_the_amount_charge_the_price_once(rig: Rig) -> None:
    built = build(rig, 25, accepted={**offered(25), "amount": "0025"})
    answer = await pay(rig, built)
    assert answer.status == 200, answer.body
    assert len(rig.broadcaster.seen) == 1 and rig.upstream_calls == 1


async def test_a_huge_amount_is_refused_not_overflowed(rig: Rig) -> None:
    built = build(rig, 25, accepted={**offered(25), "amount": "9" * 16})
    answer = await pay(rig, built)
    assert answer.status == 402 and answer.reason == "amount-mismatch"
    assert rig.broadcaster.seen == []


async def test_two_outputs_to_the_payee_key_buy_one_grant(rig: Rig) -> None:
    """outputIndex naming the second of two outputs that pay the payee key: one
    payment, one grant; the other output cannot be spent on a second request."""
    built = build(rig, outputs=["payee:25", "payee:25", "change"], vout=1)
    answer = await pay(rig, built)
    assert answer.status == 200, answer.body
    assert answer.response()["transaction"] == built.txid
    built.signature["payload"]["outputIndex"] = 0
    for target in (PAGE, OTHER_PAGE):
        again = await pay(rig, built, target)
        assert again.status == 402 and again.reason == "payment-reused", again.body
    # ...nor by BRC-121 for another page.
    again = await fetch(rig.base + OTHER_PAGE, built.brc121(vout=0))
    assert again.status == 402 and again.reason == "payment-reused"
    assert len(rig.broadcaster.seen) == 1 and rig.upstream_calls == 1


async def test_an_output_index_at_the_clients_own_change(rig: Rig) -> None:
    """outputIndex at the change (paying the client, not the payee): wrong-payee."""
    built = build(rig, outputs=["payee:25", "change"], vout=1)
    change = built.tx.outputs[1].satoshis
    built.signature["accepted"]["amount"] = str(change)
    answer = await pay(rig, built)
    assert answer.status == 402 and answer.reason in ("amount-not-exact", "wrong-payee")
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0


async def test_x402_after_brc121_with_the_same_transaction(rig: Rig) -> None:
    built = build(rig)
    first = await fetch(rig.base + PAGE, built.brc121())
    assert first.status == 200, first.body
    for target in (PAGE, OTHER_PAGE):
        again = await pay(rig, built, target)
        assert again.status == 402 and again.reason == "payment-reused"
        assert again.response()["success"] is False
        assert "X-Farebox-Token" not in again.headers
    assert len(rig.broadcaster.seen) == 1 and rig.upstream_calls == 1


async def test_brc121_after_x402_with_the_same_transaction(rig: Rig) -> None:
    """BRC-121's resend answers the same grant (its rules); never a second one,
    nor anything for another resource."""
    built = build(rig)
    first = await pay(rig, built)
    assert first.status == 200, first.body
    again = await fetch(rig.base + PAGE, built.brc121())
    assert again.status == 200
    assert again.headers["X-Farebox-Token"] == first.headers["X-Farebox-Token"]
    other = await fetch(rig.base + OTHER_PAGE, built.brc121())
    assert other.status == 402 and other.reason == "payment-reused"
    assert len(rig.broadcaster.seen) == 1


async def test_a_refused_x402_payment_sent_properly_by_brc121_is_taken_once(rig: Rig) -> None:
    built = build(rig, 25, accepted=offered(20))  # amount-mismatch
    refused = await pay(rig, built)
    assert refused.status == 402 and refused.reason == "amount-mismatch"
    taken = await fetch(rig.base + PAGE, built.brc121())
    assert taken.status == 200, taken.body
    built.signature["accepted"] = offered(25)  # now truthful, in x402's form: seen before
    again = await pay(rig, built, OTHER_PAGE)
    assert again.status == 402 and again.reason == "payment-reused"
    assert len(rig.broadcaster.seen) == 1 and rig.upstream_calls == 1


async def test_x402_beside_brc121_headers_of_another_transaction(rig: Rig) -> None:
    """One protocol per request: x402's is taken; the BRC-121 transaction is
    neither broadcast nor claimed, so it still buys something later."""
    x402_one, brc121_one = build(rig), build(rig)
    answer = await fetch(rig.base + PAGE, {**brc121_one.brc121(), **x402_one.header})
    assert answer.status == 200, answer.body
    assert answer.response()["transaction"] == x402_one.txid
    assert len(rig.broadcaster.seen) == 1
    later = await fetch(rig.base + OTHER_PAGE, brc121_one.brc121())
    assert later.status == 200, later.body
    assert len(rig.broadcaster.seen) == 2


async def test_a_refused_x402_payment_never_falls_back_to_brc121_beside_it(rig: Rig) -> None:
    bad = build(rig, accepted=offered(25, "bsv:testnet"))
    good = build(rig)
    answer = await fetch(rig.base + PAGE, {**good.brc121(), **bad.header})
    assert answer.status == 402 and answer.reason == "wrong-network"
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0


async def test_brc105_header_beside_x402_unauthenticated(rig: Rig) -> None:
    """x-bsv-payment goes first (and needs a BRC-103 identity): nothing is taken."""
    built = build(rig)
    answer = await fetch(rig.base + PAGE, {"x-bsv-payment": "{}", **built.header})
    assert answer.status in (400, 401, 402), answer.body
    assert answer.status != 200 and rig.broadcaster.seen == [] and rig.upstream_calls == 0


async def test_the_same_signature_twice_at_once(rig: Rig) -> None:
    built = build(rig)
    rig.broadcaster.delay = 0.2
    answers = await asyncio.gather(pay(rig, built), pay(rig, built, OTHER_PAGE), pay(rig, built))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200, 402, 402], [(a.status, a.body) for a in answers]
    assert len(rig.broadcaster.seen) == 1 and rig.upstream_calls == 1


async def test_a_tab_is_credited_once_per_transaction(rig: Rig) -> None:
    built = build(rig, 1000, url=CALLS)
    first = await pay(rig, built, CALLS)
    assert first.status == 200, first.body
    tab = first.headers["X-Farebox-Tab"]
    again = await pay(rig, built, CALLS)
    assert again.status == 402 and again.reason == "payment-reused"
    assert_402_well_formed(again, 1000)
    assert again.response()["errorReason"] == "duplicate_settlement"
    assert await rig.store.balance(tab) == (1000 - 10) * 1000
    # An x402 top-up is the smallest one exactly: more is not taken.
    more = await pay(rig, build(rig, 5000, url=CALLS), CALLS)
    assert more.status == 402 and more.reason == "amount-not-exact"
    assert len(rig.broadcaster.seen) == 1


async def test_a_free_route_takes_no_payment(rig: Rig) -> None:
    built = build(rig)
    answer = await fetch(rig.base + FREE, built.header)
    assert answer.status == 200
    assert "PAYMENT-RESPONSE" not in answer.headers
    assert rig.broadcaster.seen == []
    # The payment was not taken: it still buys the page.
    assert (await pay(rig, built)).status == 200


async def test_the_pay_endpoint_ignores_payment_signature(rig: Rig) -> None:
    built = build(rig)
    answer = await fetch(
        rig.base + "/.well-known/farebox/pay", built.header, method="POST", json={}
    )
    assert answer.status in (400, 402, 404, 405), answer.body
    assert rig.broadcaster.seen == []


async def test_a_revoked_grant_beside_a_payment_buys_a_new_one(rig: Rig) -> None:
    first = await pay(rig, build(rig))
    assert first.status == 200
    token = first.headers["X-Farebox-Token"]
    grant, _ = rig.tokens.verify(token)
    await rig.store.revoke(grant.id, int(time.time()) + 3600)
    refused = await fetch(rig.base + PAGE, {"Authorization": f"Bearer {token}"})
    assert refused.status == 402 and refused.reason == "grant-revoked"
    assert_402_well_formed(refused, 25)
    built = build(rig)
    answer = await fetch(rig.base + PAGE, {"Authorization": f"Bearer {token}", **built.header})
    assert answer.status == 200, answer.body
    assert answer.headers["X-Farebox-Token"] != token
    assert answer.response()["transaction"] == built.txid
    assert len(rig.broadcaster.seen) == 2


@pytest.mark.parametrize("outage", ["store", "chain", "broadcast"])
async def test_an_outage_is_503_then_the_same_header_is_taken(rig: Rig, outage: str) -> None:
    built = build(rig)
    switch = {"store": rig.store, "chain": rig.tracker, "broadcast": rig.broadcaster}[outage]
    switch.down = True  # type: ignore[attr-defined]
    answer = await pay(rig, built)
    assert answer.status == 503, (answer.status, answer.body)
    assert answer.headers["Retry-After"].isdigit()
    assert answer.reason in ("store-unavailable", "chain-unavailable")
    assert rig.upstream_calls == 0 and "X-Farebox-Token" not in answer.headers
    switch.down = False  # type: ignore[attr-defined]
    answer = await pay(rig, built)
    assert answer.status == 200, answer.body
    assert answer.response()["transaction"] == built.txid
    assert rig.upstream_calls == 1


async def test_store_lost_after_the_broadcast_then_the_same_header(rig: Rig, monkeypatch) -> None:
    """Broadcast, then the receipt cannot be written: 503; the same header later
    is taken (never payment-reused: the client got nothing for it)."""
    built = build(rig)
    real = rig.store.complete

    async def fails(*args: Any, **kwargs: Any) -> None:
        from gateway.store import StoreUnavailable

        raise StoreUnavailable("gone")

    monkeypatch.setattr(rig.store, "complete", fails)
    answer = await pay(rig, built)
    assert answer.status == 503 and answer.reason == "store-unavailable"
    monkeypatch.setattr(rig.store, "complete", real)
    assert rig.cashier is not None
    rig.cashier.settle_wait = 0.5  # the stalled owner (this very request) is taken over
    answer = await asyncio.wait_for(pay(rig, built), 60)
    assert answer.status == 200, answer.body
    assert rig.upstream_calls == 1


# --- the terms ------------------------------------------------------------------------------


async def test_pay_to_in_upper_case_hex_is_our_key(rig: Rig) -> None:
    built = build(rig, accepted={**offered(25), "payTo": SERVER_HEX.upper()})
    answer = await pay(rig, built)
    assert answer.status == 200, answer.body


@pytest.mark.parametrize(
    ("pay_to", "status"),
    [
        (PAID_SERVER.public_key().hex(compressed=False), 400),
        (SERVER_HEX[:-2], 402),
        (("02" if SERVER_HEX.startswith("03") else "03") + SERVER_HEX[2:], 402),
    ],
)
async def test_pay_to_other_spellings(rig: Rig, pay_to: str, status: int) -> None:
    built = build(rig, accepted={**offered(25), "payTo": pay_to})
    answer = await pay(rig, built)
    assert answer.status == status, answer.body
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0


@pytest.mark.parametrize(
    "network",
    [
        "BSV:MAINNET",
        "bsv:Mainnet",
        "bsv:mainnet ",
        " bsv:mainnet",
        "bsv:mainnet\u200b",
        "bsv:mainn\u0435t",  # Cyrillic e
        "bsv\uff1amainnet",  # full-width colon
        "bsv:mainnet\x00",
        "bsv:*",
        "bip122:000000000019d6689c085ae165831e93",
    ],
)
async def test_network_lookalikes_are_refused(rig: Rig, network: str) -> None:
    built = build(rig, accepted=offered(25, network))
    answer = await pay(rig, built)
    assert answer.status == 402, answer.body
    assert answer.reason in ("wrong-network", "ambiguous-network")
    assert answer.response()["errorReason"] == "invalid_network"
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0


@pytest.mark.parametrize(
    ("version", "status"),
    [("2", 400), (2.0, 400), (True, 400), (None, 400), (1, 402), (3, 402), (-2, 402), (2**70, 402)],
)
async def test_x402_version_spellings(rig: Rig, version: Any, status: int) -> None:
    built = build(rig)
    built.signature["x402Version"] = version
    answer = await pay(rig, built)
    assert answer.status == status, answer.body
    assert rig.broadcaster.seen == []


@pytest.mark.parametrize("asset", ["bsv", "Bsv"])
async def test_asset_case(rig: Rig, asset: str) -> None:
    """Case-insensitive, as the client plug-in in test_x402 reads it too."""
    built = build(rig, accepted={**offered(25), "asset": asset})
    assert (await pay(rig, built)).status == 200


# --- the transaction --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["atomic", "v1", "v2", "atomic-v2"])
async def test_every_beef_form_pays(rig: Rig, form: str) -> None:
    answer = await pay(rig, build(rig, beef=form))
    assert answer.status == 200, answer.body


async def test_trailing_bytes_after_the_beef(rig: Rig) -> None:
    built = build(rig)
    data = base64.b64decode(built.signature["payload"]["transaction"]) + b"\x00"
    built.signature["payload"]["transaction"] = b64(data)
    answer = await pay(rig, built)
    assert answer.status == 400 and answer.reason == "malformed-beef"
    assert rig.broadcaster.seen == []


async def test_an_atomic_beef_naming_the_parent_as_its_subject(rig: Rig) -> None:
    """The Atomic BEEF says its subject is the (mined) parent, whose output 0
    pays the client 100 000: never the payment."""
    built = build(rig)
    data = b"\x01\x01\x01\x01" + bytes.fromhex(built.parent.txid())[::-1] + built.parent.to_beef()
    built.signature["payload"]["transaction"] = b64(data)
    built.signature["accepted"]["amount"] = str(built.parent.outputs[0].satoshis)
    answer = await pay(rig, built)
    assert answer.status in (400, 402), answer.body
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0


def _txid_only_v2(txid: str) -> bytes:
    """A BEEF V2 whose one (so last: the subject) entry is txid-only (BRC-96 kind 2)."""
    return b"\x02\x00\xbe\xef" + b"\x00" + b"\x01" + b"\x02" + bytes.fromhex(txid)[::-1]


async def test_a_txid_only_subject_is_not_a_500(rig: Rig) -> None:
    built = build(rig)
    built.signature["payload"]["transaction"] = b64(_txid_only_v2(built.txid))
    answer = await pay(rig, built)
    assert answer.status in (400, 402), (answer.status, answer.body)
    assert answer.reason in ("malformed-beef", "txid-only-ancestor")


async def test_the_same_txid_only_subject_by_brc121_is_refused_properly(rig: Rig) -> None:
    built = build(rig)
    headers = {**built.brc121(), "x-bsv-beef": b64(_txid_only_v2(built.txid))}
    answer = await fetch(rig.base + PAGE, headers)
    assert answer.status in (400, 402) and answer.reason in ("malformed-beef", "txid-only-ancestor")


# --- the payment time -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda now: str(now // 1000), 402, "stale-time"),  # seconds, not ms
        (lambda now: "-" + str(now), 400, "bad-payment-signature"),
        (lambda now: str(now) + ".0", 400, "bad-payment-signature"),
        (lambda now: "9" * 16, 402, "stale-time"),
        (lambda now: "1" * 17, 400, "bad-payment-signature"),
        (lambda now: " " + str(now), 400, "bad-payment-signature"),
        (lambda now: "\u0661" * 13, 400, "bad-payment-signature"),  # Arabic-Indic digits
        (lambda now: str(now + 45_000), 402, "stale-time"),
        (lambda now: str(now - 120_000), 402, "stale-time"),
    ],
)
async def test_payment_time_spellings(rig: Rig, make: Any, status: int, reason: str) -> None:
    built = build(rig, time_text=make(int(time.time() * 1000)))
    answer = await pay(rig, built)
    assert (answer.status, answer.reason) == (status, reason), answer.body
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0


async def test_leading_zeros_in_the_time_name_the_same_moment(rig: Rig) -> None:
    """`000` + ms is the same time, and a different BRC-29 key (the suffix is
    the text): paid once, recorded with the suffix that derives the key."""
    built = build(rig, time_text="000" + str(int(time.time() * 1000)))
    answer = await pay(rig, built)
    assert answer.status == 200, answer.body
    receipt = await rig.store.receipt(built.txid)
    assert receipt is not None and receipt.suffix == built.suffix


# --- the header itself ------------------------------------------------------------------------


async def test_duplicate_payment_signature_headers(rig: Rig) -> None:
    one, two = build(rig), build(rig)
    answer = await fetch(
        rig.base + PAGE, [("PAYMENT-SIGNATURE", one.value), ("payment-signature", two.value)]
    )
    assert answer.status == 200, answer.body
    txid = answer.response()["transaction"]
    assert txid in (one.txid, two.txid)
    assert len(rig.broadcaster.seen) == 1
    # Garbage first: refused whole, the good one behind it not taken.
    answer = await fetch(
        rig.base + OTHER_PAGE, [("PAYMENT-SIGNATURE", "%%%"), ("PAYMENT-SIGNATURE", two.value)]
    )
    assert answer.status == 400 and len(rig.broadcaster.seen) == 1


@pytest.mark.parametrize("name", ["payment-signature", "Payment-Signature", "PAYMENT-signature"])
async def test_header_name_case(rig: Rig, name: str) -> None:
    built = build(rig)
    assert (await fetch(rig.base + PAGE, {name: built.value})).status == 200


async def test_base64url_and_missing_padding_are_400(rig: Rig) -> None:
    built = build(rig)
    text = json.dumps(built.signature)
    while len(text) % 3 == 0:
        text += " "
    standard = b64(text)
    assert standard.endswith("=")
    for value in (
        standard.rstrip("="),
        base64.urlsafe_b64encode(b"\xfb\xff" + text.encode()).decode(),
    ):
        answer = await fetch(rig.base + PAGE, {"PAYMENT-SIGNATURE": value})
        assert answer.status == 400, answer.body
    # base64url of JSON with '-' or '_' in it.
    built.signature["resource"]["url"] = "?" * 30 + ">" * 30
    urlsafe = base64.urlsafe_b64encode(json.dumps(built.signature).encode()).decode()
    assert "-" in urlsafe or "_" in urlsafe
    answer = await fetch(rig.base + PAGE, {"PAYMENT-SIGNATURE": urlsafe})
    assert answer.status == 400 and answer.problem()["field"] == "PAYMENT-SIGNATURE"
    assert rig.broadcaster.seen == []


async def test_duplicate_json_keys_cannot_buy_cheaper(rig: Rig) -> None:
    """Whichever duplicate a parser keeps, the output still pays the price."""
    built = build(rig)
    text = json.dumps(built.signature)
    cheap = json.dumps(offered(1))
    forked = text[:-1] + ', "accepted": ' + cheap + "}"  # the last one wins in Python
    answer = await fetch(rig.base + PAGE, {"PAYMENT-SIGNATURE": b64(forked)})
    assert answer.status == 402 and answer.reason == "amount-mismatch"
    forked = '{"accepted": ' + cheap + ", " + text[1:]  # the first is overridden
    answer = await fetch(rig.base + PAGE, {"PAYMENT-SIGNATURE": b64(forked)})
    assert answer.status == 200, answer.body
    assert len(rig.broadcaster.seen) == 1


async def test_a_bom_and_whitespace_are_not_a_500(rig: Rig) -> None:
    for prefix in (b"\xef\xbb\xbf", b"\n \t"):
        built = build(rig)
        value = base64.b64encode(prefix + json.dumps(built.signature).encode()).decode()
        answer = await fetch(rig.base + PAGE, {"PAYMENT-SIGNATURE": value})
        assert answer.status in (200, 400), answer.body


def test_deep_nesting_inside_the_payload_is_400() -> None:
    rig = Rig(
        "http://x", SwitchableTracker(), FakeBroadcaster(), SwitchableStore(), None, None, None
    )  # type: ignore[arg-type]
    built = build(rig)
    text = json.dumps(built.signature)
    deep = text[:-1] + ', "resource2": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(PaymentError) as caught:
        from_request(
            CIMultiDict({"PAYMENT-SIGNATURE": b64(deep)}),
            1 << 20,
            None,
            None,
            x402_network=NET,
            server=SERVER_HEX,
        )
    assert caught.value.status == 400


async def test_a_header_over_the_server_limit_is_not_a_500(rig: Rig) -> None:
    answer = await fetch(rig.base + PAGE, {"PAYMENT-SIGNATURE": "A" * 60_000})
    assert answer.status in (400, 413, 431), answer.body[:200]
    assert rig.broadcaster.seen == []


# --- PAYMENT-REQUIRED on every 402, PAYMENT-RESPONSE on every answer to a payment -------------


async def test_payment_required_everywhere_a_402_is(rig: Rig) -> None:
    plain = await fetch(rig.base + PAGE)
    required = assert_402_well_formed(plain, 25)
    assert plain.problem()["payment"]["price"]["satoshis"] == 25
    assert required["error"] == "payment-required"
    page = await fetch(rig.base + PAGE, {"Accept": "text/html"})
    assert_402_well_formed(page, 25)
    assert "PAYMENT-REQUIRED" in page.headers["Access-Control-Expose-Headers"]
    tab = await fetch(rig.base + CALLS)
    assert_402_well_formed(tab, 1000)
    assert tab.problem()["payment"]["price"]["satoshis"] == 1000
    refused = await pay(rig, build(rig, 24))
    assert assert_402_well_formed(refused, 25)["error"] == "underpaid"
    assert refused.problem()["payment"]["price"]["satoshis"] == 25


async def test_a_refused_payment_on_the_paywall_page_says_so_too(rig: Rig) -> None:
    answer = await fetch(rig.base + PAGE, {"Accept": "text/html", **build(rig, 24).header})
    assert answer.status == 402 and answer.headers["Content-Type"].startswith("text/html")
    assert assert_402_well_formed(answer, 25)["error"] == "underpaid"
    assert answer.response()["success"] is False
    assert rig.broadcaster.seen == [] and rig.upstream_calls == 0


async def test_a_token_from_a_clock_far_ahead_is_offered_nothing_to_pay(rig: Rig) -> None:
    """grant-not-yet-valid is a 402 too, but the client holds what it asks for:
    PAYMENT-REQUIRED says why in `error` and accepts nothing, since an x402
    library pays on any 402 it can pay and reads no `error`."""
    from tests.test_clock_skew import FAR_AHEAD, minted_ahead, page_grant

    token = minted_ahead(rig.tokens, page_grant(), FAR_AHEAD)
    answer = await fetch(rig.base + PAGE, {"Authorization": f"Bearer {token}"})
    assert answer.reason == "grant-not-yet-valid"
    required = answer.required()
    assert required["error"] == "grant-not-yet-valid" and required["accepts"] == []
    assert "PAYMENT-RESPONSE" not in answer.headers
    assert int(answer.headers["Retry-After"]) > 0


@pytest.mark.parametrize(("age", "status"), [(80, 200), (200, 402)])
async def test_a_claimed_max_timeout_does_not_stretch_the_window(
    rig: Rig, age: int, status: int
) -> None:
    """The client's own maxTimeoutSeconds is not the server's: 30 + 60 s, whatever it says."""
    built = build(
        rig,
        time_text=str(int((time.time() - age) * 1000)),
        accepted={**offered(25), "maxTimeoutSeconds": 10**9},
    )
    answer = await pay(rig, built)
    assert answer.status == status, answer.body
    if status == 402:
        assert answer.reason == "stale-time" and rig.broadcaster.seen == []


async def test_a_refusal_says_success_false_with_the_payer(rig: Rig) -> None:
    built = build(rig, 26)
    answer = await pay(rig, built)
    assert answer.status == 402
    response = answer.response()
    assert response == {
        "success": False,
        "errorReason": "invalid_exact_bsv_payload_amount_mismatch",
        "errorMessage": answer.problem()["detail"],
        "transaction": "",
        "network": NET,
        "payer": CLIENT.public_key().hex(),
    }


async def test_success_names_the_txid_and_payer(rig: Rig) -> None:
    built = build(rig)
    answer = await pay(rig, built)
    assert answer.status == 200
    assert answer.response() == {
        "success": True,
        "payer": CLIENT.public_key().hex(),
        "transaction": built.txid,
        "network": NET,
    }


async def test_resource_url_takes_no_forwarded_word_from_an_untrusted_client(
    paid_gateway,
) -> None:
    """No proxy trusted: X-Forwarded-Proto/-Host from the client are not used
    (the fix for resource.url behind a trusted proxy must keep this)."""
    started = await paid_gateway(Tracker(), FakeBroadcaster())
    answer = await fetch(
        started.base + PAGE + "?q=1",
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
    )
    url = answer.required()["resource"]["url"]
    assert "evil.example" not in url and url == started.base + PAGE + "?q=1"


async def test_resource_url_behind_a_trusted_tls_proxy(rig: Rig) -> None:
    answer = await fetch(
        rig.base + PAGE,
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gateway.example"},
    )
    assert answer.status == 402
    assert answer.required()["resource"]["url"] == "https://gateway.example" + PAGE


# --- what reaches the service -----------------------------------------------------------------


def _sent_upstream(rig: Rig) -> dict[str, str]:
    return {k.lower(): v for k, v in rig.upstream.seen[-1].headers.items()}


async def test_brc121_payment_headers_never_reach_the_service(rig: Rig) -> None:
    """The baseline x402 is measured against."""
    answer = await fetch(rig.base + PAGE, build(rig).brc121())
    assert answer.status == 200
    assert not any(k.startswith("x-bsv-") for k in _sent_upstream(rig))


async def test_payment_signature_never_reaches_the_service(rig: Rig) -> None:
    answer = await pay(rig, build(rig))
    assert answer.status == 200
    assert "payment-signature" not in _sent_upstream(rig)


@pytest.mark.parametrize("opened_by", ["free-route", "token"])
async def test_an_untaken_payment_is_not_handed_to_the_service(rig: Rig, opened_by: str) -> None:
    headers: dict[str, str] = {}
    target = FREE
    if opened_by == "token":
        first = await pay(rig, build(rig))
        headers = {"Authorization": "Bearer " + first.headers["X-Farebox-Token"]}
        target = PAGE
    built = build(rig)
    answer = await fetch(rig.base + target, {**headers, **built.header})
    assert answer.status == 200 and "PAYMENT-RESPONSE" not in answer.headers  # not taken
    leaked = _sent_upstream(rig).get("payment-signature")
    if leaked is not None:
        # What the service can do with it: buy a page for itself with the client's coins.
        stolen = await fetch(rig.base + OTHER_PAGE, {"PAYMENT-SIGNATURE": leaked})
        assert stolen.status != 200, "the service spent the client's payment for itself"
    assert leaked is None


async def test_a_token_beside_a_payment_leaves_the_payment_untaken(rig: Rig) -> None:
    first = await pay(rig, build(rig))
    token = first.headers["X-Farebox-Token"]
    built = build(rig)
    answer = await fetch(rig.base + PAGE, {"Authorization": f"Bearer {token}", **built.header})
    assert answer.status == 200
    assert "PAYMENT-RESPONSE" not in answer.headers
    assert len(rig.broadcaster.seen) == 1  # not charged twice


# --- nginx in front (the templates in nginx/ as shipped, a real nginx and farebox serve) -------


async def _x402_through(gw: Any, path: str) -> tuple[dict[str, str], str]:
    """Ask `path` through nginx, read PAYMENT-REQUIRED and pay exactly what it
    asks on the devnet, as an x402 client does: (the retry's headers, txid)."""
    client = PrivateKey()
    coin = await faucet(gw.devnet, client, 100_000)
    async with gw.client() as http, http.get(gw.base + path) as r:
        assert r.status == 402
        required = unb64(r.headers["PAYMENT-REQUIRED"])
    entry = required["accepts"][0]
    prefix, now = b64(os.urandom(12)), str(int(time.time() * 1000))
    suffix = b64(now)
    payee = payee_key_for_sender(PublicKey(entry["payTo"]), client, prefix, suffix)
    amount = int(entry["amount"])
    change = coin.outputs[0].satoshis - amount - 1
    tx = spend(coin, 0, client, [(payee, amount), (client.public_key(), change)])
    signature = {
        "x402Version": 2,
        "resource": required["resource"],
        "accepted": entry,
        "payload": {
            "transaction": b64(atomic_beef(tx)),
            "derivationPrefix": prefix,
            "derivationSuffix": suffix,
            "senderIdentityKey": client.public_key().hex(),
            "outputIndex": 0,
        },
    }
    return {"PAYMENT-SIGNATURE": b64(json.dumps(signature))}, tx.txid()


async def test_behind_nginx_auth_request_a_paid_answer_says_payment_response(
    front: Any,  # noqa: F811
    decoy: Upstream,  # noqa: F811
) -> None:
    gw = await front("farebox-auth-request.conf", decoy.url)
    headers, txid = await _x402_through(gw, "/page/1")
    async with gw.client() as http, http.get(gw.base + "/page/1", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Farebox-Token"]  # paid: the token is relayed
        assert unb64(r.headers["PAYMENT-RESPONSE"])["transaction"] == txid


async def test_behind_nginx_auth_request_the_service_never_sees_the_payment(
    front: Any,  # noqa: F811
    decoy: Upstream,  # noqa: F811
) -> None:
    gw = await front("farebox-auth-request.conf", decoy.url)
    headers, _ = await _x402_through(gw, "/page/1")
    async with gw.client() as http, http.get(gw.base + "/page/1", headers=headers) as r:
        assert r.status == 200, await r.text()
    seen = {k.lower() for k in gw.upstream.seen[-1].headers}
    assert "payment-signature" not in seen


async def test_behind_nginx_tls_resource_url_is_https(front: Any) -> None:  # noqa: F811
    gw = await front("farebox-tls.conf")
    async with gw.client() as http, http.get(gw.base + "/page/1?x=1") as r:
        assert r.status == 402
        url = unb64(r.headers["PAYMENT-REQUIRED"])["resource"]["url"]
    assert url.startswith("https://"), url


async def test_behind_nginx_tls_x402_pays_once(front: Any) -> None:  # noqa: F811
    """The TLS template as shipped: x402 is challenged, paid, and refused again."""
    gw = await front("farebox-tls.conf")
    headers, txid = await _x402_through(gw, "/page/1")
    async with gw.client() as http:
        async with http.get(gw.base + "/page/1", headers=headers) as r:
            assert r.status == 200, await r.text()
            assert unb64(r.headers["PAYMENT-RESPONSE"])["transaction"] == txid
        async with http.get(gw.base + "/page/2", headers=headers) as r:
            assert r.status == 402
            assert unb64(r.headers["PAYMENT-RESPONSE"])["errorReason"] == "duplicate_settlement"
    assert [p for p in gw.upstream.paths if p.startswith("/page/")] == ["/page/1"]
