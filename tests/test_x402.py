"""x402 v2, scheme `exact` on `bsv:*`, through the one intake.

A real gateway over a fake chain (tests/chainkit.py). First the x402
Foundation's own Python client (PyPI `x402`, its `requests` wrapper) pays a
priced route, with a small BSV `exact` plug-in written here (the package
ships none: x402-foundation/x402 PR #2890 is a TypeScript draft); then
hand-built PAYMENT-SIGNATURE headers try every way such a payment can be
wrong, and the other protocols are checked to be answered as before.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import requests
from bsv import PrivateKey, PublicKey, Transaction
from multidict import CIMultiDict
from x402 import x402ClientSync
from x402.http.clients.requests import PaymentError as ClientPaymentError
from x402.http.clients.requests import wrapRequestsWithPayment
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.schemas import PaymentRequirements

from gateway.bsv.derivation import payee_key_for_sender
from gateway.config import ConfigError, load_settings
from gateway.errors import PaymentError
from gateway.payments import x402 as wire
from gateway.payments.cashier import Cashier
from gateway.payments.intake import from_request
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens
from tests.chainkit import Tracker, atomic_beef, funding, spend
from tests.conftest import PAID_SERVER
from tests.test_paid_access import CLIENT, FakeBroadcaster, brc121, send

SERVER_HEX = PAID_SERVER.public_key().hex()
NET = "bsv:mainnet"
BIP122 = "bip122:000000000019d6689c085ae165831e93"  # BTC's (and BSV's) genesis block
PAGE = "/archive/pages/1"  # 25 satoshis (tests/conftest.py PAID_POLICY)


@dataclass
class Setup:
    base: str
    tracker: Tracker
    broadcaster: FakeBroadcaster
    upstream: Any

    @property
    def upstream_calls(self) -> int:
        return len(self.upstream.seen)


@pytest.fixture
async def paid(paid_gateway, upstream) -> Setup:
    tracker, broadcaster = Tracker(), FakeBroadcaster()
    started = await paid_gateway(tracker, broadcaster)
    return Setup(started.base, tracker, broadcaster, upstream)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(value: str) -> Any:
    return json.loads(base64.b64decode(value))


def offered(satoshis: int = 25, network: str = "bsv:mainnet") -> dict[str, Any]:
    """The requirements Farebox offers (what a client echoes as `accepted`)."""
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
    signature: dict[str, Any]  # the PaymentPayload before base64
    txid: str
    tx: Transaction

    @property
    def header(self) -> dict[str, str]:
        return {"PAYMENT-SIGNATURE": b64(json.dumps(self.signature))}


def x402_payment(
    setup: Setup,
    sats: int = 25,
    *,
    client: PrivateKey = CLIENT,
    pay_to: str = SERVER_HEX,
    time_ms: int | None = None,
    accepted: dict[str, Any] | None = None,
    parent: Transaction | None = None,
    url: str = PAGE,
) -> Built:
    """A PAYMENT-SIGNATURE paying `sats` at output 0 to the BRC-29 key of `pay_to`."""
    time_ms = int(time.time() * 1000) if time_ms is None else time_ms
    prefix = b64(os.urandom(12))
    suffix = b64(str(time_ms))
    parent = parent or funding(client, 100_000, setup.tracker)
    payee = payee_key_for_sender(PublicKey(pay_to), client, prefix, suffix)
    change = parent.outputs[0].satoshis - sats - 20
    tx = spend(parent, 0, client, [(payee, sats), (client.public_key(), change)])
    signature = {
        "x402Version": 2,
        "resource": {"url": setup.base + url},
        "accepted": accepted if accepted is not None else offered(sats),
        "payload": {
            "transaction": b64(atomic_beef(tx)),
            "derivationPrefix": prefix,
            "derivationSuffix": suffix,
            "senderIdentityKey": client.public_key().hex(),
            "outputIndex": 0,
        },
    }
    return Built(signature, tx.txid(), tx)


async def fetch(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def required_of(headers: dict[str, str]) -> dict[str, Any]:
    return unb64(headers["PAYMENT-REQUIRED"])


async def refused(setup: Setup, headers: dict[str, str], reason: str, target: str = PAGE) -> dict:
    """Send a payment that must be refused with `reason` (402): nothing taken or served."""
    seen, calls = len(setup.broadcaster.seen), setup.upstream_calls
    status, answer, body = await fetch(setup.base + target, headers)
    problem = json.loads(body)
    assert status == 402, body
    assert problem["reason"] == reason, problem
    assert required_of(answer)["error"] == reason
    response = unb64(answer["PAYMENT-RESPONSE"])
    assert response["success"] is False
    assert response["transaction"] == ""
    assert response["network"] == "bsv:mainnet"
    assert response["errorReason"] == wire.ERROR_REASONS.get(reason, reason)
    assert "PAYMENT-RESPONSE" in answer["Access-Control-Expose-Headers"]
    assert len(setup.broadcaster.seen) == seen, "a refused payment was broadcast"
    assert setup.upstream_calls == calls, "a refused payment reached the upstream"
    return response


async def malformed(setup: Setup, value: str, field: str, reason: str = "bad-payment-signature"):
    """A PAYMENT-SIGNATURE that cannot be read: 400 naming the field, never a 500."""
    status, _, body = await fetch(setup.base + PAGE, {"PAYMENT-SIGNATURE": value})
    problem = json.loads(body)
    assert status == 400, body
    assert problem["reason"] == reason, problem
    if reason == "bad-payment-signature":
        assert problem["field"] == field, problem
    assert setup.broadcaster.seen == [] and setup.upstream_calls == 0


# --- the challenge -------------------------------------------------------------------


async def test_every_402_asks_x402_clients_too(paid: Setup) -> None:
    status, headers, body = await fetch(paid.base + PAGE)
    assert status == 402
    required = required_of(headers)
    assert required == {
        "x402Version": 2,
        "error": "payment-required",
        "resource": {"url": paid.base + PAGE},
        "accepts": [offered(25)],
    }
    assert headers["x-bsv-sats"] == "25" and headers["x-bsv-server"] == SERVER_HEX
    exposed = [h.strip() for h in headers["Access-Control-Expose-Headers"].split(",")]
    assert {"x-bsv-sats", "x-bsv-server", "PAYMENT-REQUIRED"} <= set(exposed)
    # The x402 package itself reads it.
    parsed = decode_payment_required_header(headers["PAYMENT-REQUIRED"])
    assert parsed.accepts[0].amount == "25" and parsed.accepts[0].pay_to == SERVER_HEX
    # The problem+json body is what it was: BRC-121 and the pay endpoint.
    problem = json.loads(body)
    assert problem["reason"] == "payment-required"
    assert [a["scheme"] for a in problem["payment"]["accepts"]] == ["brc-121", "farebox"]
    assert "x402" not in body.decode().lower()


async def test_a_route_description_is_the_resource_description(gateway, upstream) -> None:
    base = await gateway(
        f"""
        services:
          maps:
            upstream: {upstream.url}
            mount: /maps
            description: Survey maps
            routes:
              - path: /sheets/{{n}}
                price: 7
                description: One map sheet at full resolution
        """,
        x402_network="bsv:testnet",
    )
    status, headers, _ = await fetch(base + "/maps/sheets/3?dpi=600")
    assert status == 402
    required = required_of(headers)
    assert required["resource"] == {
        "url": base + "/maps/sheets/3?dpi=600",
        "description": "One map sheet at full resolution",
    }
    assert required["accepts"][0]["network"] == "bsv:testnet"
    assert required["accepts"][0]["amount"] == "7"


async def test_the_paywall_page_carries_it_too(paid: Setup) -> None:
    status, headers, body = await fetch(paid.base + PAGE, {"Accept": "text/html"})
    assert status == 402 and headers["Content-Type"].startswith("text/html")
    assert required_of(headers)["accepts"] == [offered(25)]
    assert b"<html" in body.lower()


async def test_a_metered_route_asks_for_the_top_up(gateway, upstream, tmp_path) -> None:
    tracker, broadcaster, store = Tracker(), FakeBroadcaster(), MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    base = await gateway(
        f"""
        services:
          util:
            upstream: {upstream.url}
            mount: /util
            tabs: {{top_up: 1000, lasts: 1d}}
            routes:
              - path: /calls/{{n}}
                price: 10
                meter: {{per: request}}
        """,
        server_key=SERVER_HEX,
        tokens=tokens,
        cashier=cashier,
        store=store,
        cookie_secure=False,
    )
    status, headers, _ = await fetch(base + "/util/calls/1")
    assert status == 402
    assert headers["x-bsv-sats"] == "1000"
    assert required_of(headers)["accepts"] == [offered(1000)]
    # An x402 top-up of exactly that opens a tab.
    setup = Setup(base, tracker, broadcaster, upstream)
    paying = x402_payment(setup, 1000, url="/util/calls/1")
    status, headers, body = await fetch(base + "/util/calls/1", paying.header)
    assert status == 200, body
    assert headers["X-Farebox-Tab"]
    assert unb64(headers["PAYMENT-RESPONSE"])["transaction"] == paying.txid
    assert await store.balance(headers["X-Farebox-Tab"]) == (1000 - 10) * 1000  # msat


# --- the x402 Foundation's client -----------------------------------------------------


class ExactBsv:
    """A BSV `exact` scheme for x402's Python client (the package ships none).

    It builds what PR #2890's TypeScript client builds: a fresh derivation
    prefix, the time as the suffix, one output of exactly `amount` to the
    BRC-29 key of `payTo`, sent as Atomic BEEF. Coins are funded beforehand
    (the chain is the test's): each payment spends the next one.
    """

    scheme = "exact"

    def __init__(self, key: PrivateKey, coins: list[Transaction], lag: float = 0) -> None:
        self.key = key
        self.coins = coins
        self.lag = lag  # seconds the wallet took to sign (tests)
        self.paid: list[str] = []

    def create_payment_payload(self, requirements: PaymentRequirements) -> dict[str, Any]:
        if not requirements.network.startswith("bsv:"):  # never a bip122 id
            raise ValueError(f"not a BSV network: {requirements.network}")
        if requirements.asset.upper() != "BSV":
            raise ValueError(f"not native BSV: {requirements.asset}")
        kind = (requirements.extra or {}).get("payloadFormat", {}).get("kind", "brc29-beef")
        if kind != "brc29-beef":
            raise ValueError(f"payload format {kind}")
        if not re.fullmatch(r"0[23][0-9a-fA-F]{64}", requirements.pay_to):
            raise ValueError("payTo is not an identity key")
        satoshis = int(requirements.amount)
        prefix = b64(os.urandom(8))
        suffix = b64(str(int((time.time() - self.lag) * 1000)))
        payee = payee_key_for_sender(PublicKey(requirements.pay_to), self.key, prefix, suffix)
        parent = self.coins.pop()
        change = parent.outputs[0].satoshis - satoshis - 20
        tx = spend(parent, 0, self.key, [(payee, satoshis), (self.key.public_key(), change)])
        self.paid.append(tx.txid())
        return {
            "transaction": b64(atomic_beef(tx)),
            "derivationPrefix": prefix,
            "derivationSuffix": suffix,
            "senderIdentityKey": self.key.public_key().hex(),
            "outputIndex": 0,
        }


def x402_session(scheme: ExactBsv, cap_satoshis: int = 1000) -> requests.Session:
    client = x402ClientSync()
    client.register("bsv:*", scheme)
    # Spend controls: by default only the package's known assets (stablecoins,
    # whose `$1` cap is a dollar) may be paid. BSV is none of them: it is
    # allowed by name, capped in satoshis (a dollar cap would need a rate).
    client.set_spend_controls(
        {
            "allowed_assets": [
                {"network": "bsv:*", "asset": "BSV", "max_amount_per_payment": str(cap_satoshis)}
            ],
            "max_amount_per_payment": "$0.10",
        }
    )
    return wrapRequestsWithPayment(requests.Session(), client)


async def test_the_x402_python_client_pays_a_priced_route(paid: Setup) -> None:
    scheme = ExactBsv(CLIENT, [funding(CLIENT, 100_000, paid.tracker)])
    session = x402_session(scheme)
    answer = await asyncio.to_thread(session.get, paid.base + PAGE, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["path"] == "/pages/1"  # the upstream answered (mount stripped)
    settled = decode_payment_response_header(answer.headers["PAYMENT-RESPONSE"])
    assert settled.success is True
    assert settled.transaction == scheme.paid[0]
    assert settled.payer == CLIENT.public_key().hex()
    assert settled.network == "bsv:mainnet"
    assert len(paid.broadcaster.seen) == 1
    # What it bought is a grant like any other: its token opens the page again.
    token = answer.headers["X-Farebox-Token"]
    status, _, _ = await fetch(paid.base + PAGE, {"Authorization": f"Bearer {token}"})
    assert status == 200 and len(paid.broadcaster.seen) == 1


async def test_the_client_spend_cap_keeps_it_from_paying(paid: Setup) -> None:
    scheme = ExactBsv(CLIENT, [funding(CLIENT, 100_000, paid.tracker)])
    session = x402_session(scheme, cap_satoshis=20)  # the page costs 25
    with pytest.raises(ClientPaymentError, match="max_amount_per_payment"):
        await asyncio.to_thread(session.get, paid.base + PAGE, timeout=10)
    assert scheme.paid == [] and paid.broadcaster.seen == [] and paid.upstream_calls == 0


async def test_a_client_refused_once_is_told_why(paid: Setup) -> None:
    """A wallet whose payment waited longer than the window allows: refused, told why."""
    scheme = ExactBsv(CLIENT, [funding(CLIENT, 100_000, paid.tracker)], lag=300)
    session = x402_session(scheme)
    answer = await asyncio.to_thread(session.get, paid.base + PAGE, timeout=10)
    assert answer.status_code == 402
    assert answer.json()["reason"] == "stale-time"
    settled = decode_payment_response_header(answer.headers["PAYMENT-RESPONSE"])
    assert settled.success is False
    assert settled.error_reason == "invalid_exact_bsv_payload_timestamp_out_of_window"
    assert settled.payer == CLIENT.public_key().hex()
    assert paid.broadcaster.seen == [] and paid.upstream_calls == 0


async def test_an_unknown_outcome_is_503_and_the_same_payment_is_taken_later(
    paid: Setup,
) -> None:
    """x402 refuses a transaction seen before, but not one whose broadcast never
    finished: the client sends the same PAYMENT-SIGNATURE again and is served."""
    paying = x402_payment(paid)
    paid.broadcaster.down = True
    status, headers, body = await fetch(paid.base + PAGE, paying.header)
    assert status == 503, body
    assert json.loads(body)["reason"] == "chain-unavailable" and headers["Retry-After"]
    paid.broadcaster.down = False
    status, headers, body = await fetch(paid.base + PAGE, paying.header)
    assert status == 200, body
    assert unb64(headers["PAYMENT-RESPONSE"])["transaction"] == paying.txid


async def test_a_gateway_on_another_network_takes_payments_on_it(gateway, upstream, tmp_path):
    tracker, broadcaster, store = Tracker(), FakeBroadcaster(), MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    base = await gateway(
        f"""
        services:
          archive:
            upstream: {upstream.url}
            mount: /archive
            routes:
              - path: /pages/{{n}}
                price: 25
        """,
        server_key=SERVER_HEX,
        tokens=tokens,
        cashier=cashier,
        store=store,
        x402_network="bsv:testnet",
    )
    status, headers, _ = await fetch(base + PAGE)
    assert required_of(headers)["accepts"] == [offered(25, "bsv:testnet")]
    setup = Setup(base, tracker, broadcaster, upstream)
    paying = x402_payment(setup, accepted=offered(25, "bsv:testnet"))
    status, headers, body = await fetch(base + PAGE, paying.header)
    assert status == 200, body
    assert unb64(headers["PAYMENT-RESPONSE"])["network"] == "bsv:testnet"


# --- what is refused ------------------------------------------------------------------


async def test_a_good_payment_then_the_same_transaction_again(paid: Setup) -> None:
    paying = x402_payment(paid)
    status, headers, body = await fetch(paid.base + PAGE, paying.header)
    assert status == 200, body
    assert unb64(headers["PAYMENT-RESPONSE"]) == {
        "success": True,
        "payer": CLIENT.public_key().hex(),
        "transaction": paying.txid,
        "network": "bsv:mainnet",
    }
    assert "x-bsv-payment-satoshis-paid" not in headers
    # x402 refuses a transaction seen before (BRC-121 would answer its grant).
    await refused(paid, paying.header, "payment-reused")
    # And for another resource just as well.
    await refused(paid, paying.header, "payment-reused", target="/archive/pages/2")
    assert len(paid.broadcaster.seen) == 1


@pytest.mark.parametrize(
    ("network", "reason"),
    [
        ("bsv:testnet", "wrong-network"),
        (BIP122, "ambiguous-network"),
        ("eip155:8453", "wrong-network"),
    ],
)
async def test_another_network_is_refused(paid: Setup, network: str, reason: str) -> None:
    paying = x402_payment(paid, accepted=offered(25, network))
    detail = (await refused(paid, paying.header, reason))["errorMessage"]
    assert network in detail
    if reason == "ambiguous-network":
        assert "BTC" in detail and "bsv:mainnet" in detail


async def test_pay_to_another_key_is_refused(paid: Setup) -> None:
    other = PrivateKey().public_key().hex()
    paying = x402_payment(paid, pay_to=other, accepted={**offered(25), "payTo": other})
    status, _, body = await fetch(paid.base + PAGE, paying.header)
    problem = json.loads(body)
    assert status == 402
    # By name once the pipeline passes the server key to the intake; meanwhile
    # by the cashier: the output pays a key only `other` can derive.
    assert problem["reason"] in ("wrong-pay-to", "wrong-payee"), problem
    await refused(paid, paying.header, problem["reason"])


def test_pay_to_is_checked_by_name_when_the_intake_knows_the_key() -> None:
    setup = Setup("http://x", Tracker(), FakeBroadcaster(), None)
    other = PrivateKey().public_key().hex()
    paying = x402_payment(setup, pay_to=other, accepted={**offered(25), "payTo": other})
    with pytest.raises(PaymentError) as caught:
        from_request(
            CIMultiDict(paying.header), 1 << 20, None, None, x402_network=NET, server=SERVER_HEX
        )
    assert caught.value.reason == "wrong-pay-to" and caught.value.status == 402


def test_the_configured_network_is_the_one_taken() -> None:
    setup = Setup("http://x", Tracker(), FakeBroadcaster(), None)
    testnet = x402_payment(setup, accepted=offered(25, "bsv:testnet"))
    headers = CIMultiDict(testnet.header)
    payment = from_request(
        headers, 1 << 20, None, None, x402_network="bsv:testnet", server=SERVER_HEX
    )
    assert payment.protocol == "x402" and payment.vout == 0
    assert payment.rules == dataclasses.replace(wire.RULES, amount=25)  # the amount accepted
    assert payment.rules.exact and not payment.rules.answer_again
    assert payment.rules.window == 30 + 60
    with pytest.raises(PaymentError) as caught:
        from_request(headers, 1 << 20, None, None, x402_network="bsv:dev1", server=SERVER_HEX)
    assert caught.value.reason == "wrong-network"


@pytest.mark.parametrize(("sats", "reason"), [(24, "underpaid"), (26, "amount-not-exact")])
async def test_the_amount_must_be_the_price_exactly(paid: Setup, sats: int, reason: str) -> None:
    # The client accepted `sats` and paid `sats`, not today's price of 25
    # (as when the price changed after the 402 it saw).
    response = await refused(paid, x402_payment(paid, sats).header, reason)
    assert response["errorReason"] == "invalid_exact_bsv_payload_amount_mismatch"


async def test_the_output_must_carry_the_amount_accepted(paid: Setup) -> None:
    # Accepted 25 (the price) but paid 30: what was accepted is what is charged.
    paying = x402_payment(paid, 30, accepted=offered(25))
    await refused(paid, paying.header, "amount-mismatch")


@pytest.mark.parametrize("seconds", [-120, 45])
async def test_a_stale_or_future_time_is_refused(paid: Setup, seconds: int) -> None:
    paying = x402_payment(paid, time_ms=int((time.time() + seconds) * 1000))
    await refused(paid, paying.header, "stale-time")


async def test_the_past_window_is_longer_by_max_timeout_seconds(paid: Setup) -> None:
    # 70 s old: beyond BRC-121's 30 s, within the draft's 30 + maxTimeoutSeconds.
    paying = x402_payment(paid, time_ms=int((time.time() - 70) * 1000))
    status, _, body = await fetch(paid.base + PAGE, paying.header)
    assert status == 200, body


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"x402Version": 1}, "x402-version-unsupported"),
        ({"accepted": {**offered(25), "scheme": "upto"}}, "unsupported-scheme"),
        ({"accepted": {**offered(25), "asset": "USDC"}}, "wrong-asset"),
        (
            {"accepted": {**offered(25), "extra": {"payloadFormat": {"kind": "p2pkh-rawtx"}}}},
            "unsupported-scheme",
        ),
    ],
)
async def test_other_terms_are_refused(paid: Setup, change: dict, reason: str) -> None:
    paying = x402_payment(paid)
    paying.signature.update(change)
    await refused(paid, paying.header, reason)


async def test_an_output_index_past_the_outputs_is_refused(paid: Setup) -> None:
    paying = x402_payment(paid)
    paying.signature["payload"]["outputIndex"] = 7
    await refused(paid, paying.header, "bad-vout")


# --- what cannot be read ----------------------------------------------------------------


def _with(path: str, value: Any) -> Callable[[dict], None]:
    def change(signature: dict) -> None:
        *parents, last = path.split(".")
        node = signature
        for name in parents:
            node = node[name]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_with("x402Version", "2"), "x402Version"),
        (_with("x402Version", True), "x402Version"),
        (_with("x402Version", KeyError), "x402Version"),
        (_with("accepted", "exact"), "accepted"),
        (_with("payload", KeyError), "payload"),
        (_with("payload", [1, 2]), "payload"),
        (_with("accepted.network", 8453), "accepted.network"),
        (_with("accepted.amount", 25), "accepted.amount"),
        (_with("accepted.amount", "25.0"), "accepted.amount"),
        (_with("accepted.payTo", None), "accepted.payTo"),
        (_with("accepted.extra", "brc29-beef"), "accepted.extra"),
        (_with("payload.outputIndex", "0"), "payload.outputIndex"),
        (_with("payload.outputIndex", True), "payload.outputIndex"),
        (_with("payload.outputIndex", -1), "payload.outputIndex"),
        (_with("payload.outputIndex", 0.0), "payload.outputIndex"),
        (_with("payload.senderIdentityKey", 5), "payload.senderIdentityKey"),
        (_with("payload.senderIdentityKey", "02" + "zz" * 32), "payload.senderIdentityKey"),
        (_with("payload.senderIdentityKey", "02" + "00" * 32), "payload.senderIdentityKey"),
        (_with("payload.derivationPrefix", b64("short")), "payload.derivationPrefix"),
        (_with("payload.derivationPrefix", "not base64!"), "payload.derivationPrefix"),
        (_with("payload.derivationSuffix", b64("yesterday")), "payload.derivationSuffix"),
        (_with("payload.derivationSuffix", "%%%"), "payload.derivationSuffix"),
        (_with("payload.transaction", {"beef": 1}), "payload.transaction"),
        (_with("payload.transaction", ""), "payload.transaction"),
    ],
)
async def test_mistyped_fields_are_400_naming_the_field(
    paid: Setup, change: Callable[[dict], None], field: str
) -> None:
    paying = x402_payment(paid)
    change(paying.signature)
    await malformed(paid, paying.header["PAYMENT-SIGNATURE"], field)


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        b64("{not json"),
        b64(json.dumps([1, 2, 3])),
        b64(json.dumps("a string")),
        b64(b"\xff\xfe\x00garbage"),
        b64("[" * 50_000),  # nesting deep enough to exhaust a recursive parser
        b64('{"x402Version": ' + "9" * 5000 + "}"),  # an integer too long to read
    ],
)
async def test_garbled_headers_are_400(paid: Setup, value: str) -> None:
    if len(value) > 6000:  # over aiohttp's header limit in this test server: the adapter itself
        with pytest.raises(PaymentError) as caught:
            from_request(
                {"payment-signature": value},
                1 << 20,
                None,
                None,
                x402_network=NET,
                server=SERVER_HEX,
            )
        assert caught.value.status == 400 and caught.value.extra["field"] == "PAYMENT-SIGNATURE"
        return
    await malformed(paid, value, "PAYMENT-SIGNATURE")


async def test_a_transaction_that_is_not_beef_is_400(paid: Setup) -> None:
    paying = x402_payment(paid)
    paying.signature["payload"]["transaction"] = "!!!"
    await malformed(paid, paying.header["PAYMENT-SIGNATURE"], "", "malformed-beef")
    paying.signature["payload"]["transaction"] = b64(b"\x01\x01\x01\x01" + b"\x00" * 40)
    await malformed(paid, paying.header["PAYMENT-SIGNATURE"], "", "malformed-beef")


def test_a_huge_header_is_refused_before_it_is_decoded() -> None:
    huge = "A" * 200_000
    with pytest.raises(PaymentError) as caught:
        from_request(
            {"payment-signature": huge}, 10_000, None, None, x402_network=NET, server=SERVER_HEX
        )
    assert caught.value.status == 413 and caught.value.reason == "beef-too-large"
    # A small envelope around a transaction over the limit: the same.
    inner = {**x402_payment(Setup("", Tracker(), FakeBroadcaster(), None)).signature}
    inner["payload"] = {**inner["payload"], "transaction": "A" * 20_000}
    with pytest.raises(PaymentError) as caught:
        from_request(
            {"payment-signature": b64(json.dumps(inner))},
            10_000,
            None,
            None,
            x402_network=NET,
            server=SERVER_HEX,
        )
    assert caught.value.status == 413


async def test_random_damage_is_never_a_500(paid: Setup) -> None:
    good = x402_payment(paid).header["PAYMENT-SIGNATURE"]
    rng = __import__("random").Random(402)
    for _ in range(60):
        chars = list(good)
        for _ in range(rng.randint(1, 6)):
            chars[rng.randrange(len(chars))] = rng.choice('AZaz09+/="{}[]:, ')
        status, _, body = await fetch(paid.base + PAGE, {"PAYMENT-SIGNATURE": "".join(chars)})
        # Damage the payment does not depend on (the resource URL, say) still pays, once.
        assert status in (200, 400, 402, 413), (status, body)
        assert status == 200 or json.loads(body)["reason"]
    assert paid.upstream_calls <= 1 and len(paid.broadcaster.seen) <= 1


# --- the other protocols, as before ------------------------------------------------------


async def test_brc121_clients_get_what_they_got_before(paid: Setup) -> None:
    headers = brc121(paid, 25)
    status, answer, body = await fetch(paid.base + PAGE, send(headers))
    assert status == 200, body
    assert "PAYMENT-RESPONSE" not in answer
    # A refused BRC-121 payment: its reason in the body, x402's terms beside it,
    # but no x402 settlement answer (no PAYMENT-SIGNATURE was sent).
    status, answer, body = await fetch(paid.base + "/archive/pages/2", send(brc121(paid, 5)))
    assert status == 402 and json.loads(body)["reason"] == "underpaid"
    assert required_of(answer)["error"] == "underpaid"
    assert "PAYMENT-RESPONSE" not in answer


async def test_a_brc121_payment_and_an_x402_one_on_one_request(paid: Setup) -> None:
    """One protocol per request: x402's header is read, BRC-121's left alone."""
    paying = x402_payment(paid)
    both = {**send(brc121(paid, 25)), **paying.header}
    status, answer, body = await fetch(paid.base + PAGE, both)
    assert status == 200, body
    assert unb64(answer["PAYMENT-RESPONSE"])["transaction"] == paying.txid
    assert len(paid.broadcaster.seen) == 1


# --- the setting ---------------------------------------------------------------------


def test_the_network_setting() -> None:
    assert load_settings(None, {}, {}).x402_network == "bsv:mainnet"
    env = {"FAREBOX_X402_NETWORK": "bsv:testnet"}
    assert load_settings(None, {}, env).x402_network == "bsv:testnet"
    assert load_settings(None, {"x402_network": "bsv:regtest-7"}, env).x402_network == (
        "bsv:regtest-7"
    )
    with pytest.raises(ConfigError, match=r"x402_network: bip122.*BTC and BCH"):
        load_settings(None, {"x402_network": BIP122}, {})
    for wrong in ("mainnet", "bsv:", "eip155:8453", "bsv:" + "x" * 33):
        with pytest.raises(ConfigError, match=r"x402_network: .*not a BSV network id"):
            load_settings(None, {"x402_network": wrong}, {})


def test_the_network_flag() -> None:
    from gateway.cli import _parser

    args = _parser().parse_args(["serve", "--x402-network", "bsv:testnet"])
    assert args.x402_network == "bsv:testnet"
    assert _parser().parse_args(["serve"]).x402_network is None
