"""Paying for a resource through the gateway: BRC-121 headers and the pay endpoint.

Real signed transactions and a real gateway and upstream; the chain is the
test tracker plus a recording broadcaster (the devnet tests run the same
flows against a real local chain).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import aiohttp
import jwt
import pytest
from bsv import PrivateKey

from gateway.chain import ChainError
from gateway.store.memory import MemoryStore
from gateway.tokens import LEEWAY, UPSTREAM, Tokens
from tests.chainkit import Tracker, atomic_beef, pay
from tests.conftest import PAID_SERVER

SERVER = PAID_SERVER
CLIENT = PrivateKey(0xC1_1E_17)


@dataclass
class Result:
    accepted: bool = True
    rejected: bool = False
    reason: str = ""
    detail: str = ""
    status: str = "SEEN_ON_NETWORK"


@dataclass
class FakeBroadcaster:
    result: Result = field(default_factory=Result)
    seen: list[bytes] = field(default_factory=list)
    down: bool = False
    delay: float = 0.0

    async def broadcast(self, beef: bytes, *, txid: str | None = None) -> Result:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise ChainError("unreachable", "connection refused")
        self.seen.append(beef)
        return self.result


@dataclass
class Setup:
    base: str
    tracker: Tracker
    broadcaster: FakeBroadcaster
    tokens: Tokens
    store: MemoryStore


@pytest.fixture
async def paid(paid_gateway) -> Setup:
    tracker, broadcaster = Tracker(), FakeBroadcaster()
    started = await paid_gateway(tracker, broadcaster)
    return Setup(started.base, tracker, broadcaster, started.tokens, started.store)


def brc121(
    setup: Setup,
    sats: int,
    *,
    time_ms: int | None = None,
    client: PrivateKey = CLIENT,
    atomic: bool = True,
    **kw,
) -> dict[str, str]:
    time_ms = int(time.time() * 1000) if time_ms is None else time_ms
    suffix = base64.b64encode(str(time_ms).encode()).decode()
    p = pay(
        SERVER.public_key(), client, sats, setup.tracker, prefix="bm9uY2U=", suffix=suffix, **kw
    )
    beef = atomic_beef(p.tx) if atomic else p.tx.to_beef()
    return {
        "x-bsv-beef": base64.b64encode(beef).decode(),
        "x-bsv-sender": client.public_key().hex(),
        "x-bsv-nonce": "bm9uY2U=",
        "x-bsv-time": str(time_ms),
        "x-bsv-vout": "0",
        "_txid": p.tx.txid(),
    }


def send(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if not k.startswith("_")}


async def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET"):
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read(), r.cookies


# --- BRC-121 --------------------------------------------------------------------------


async def test_paid_request_is_served_with_token_and_cookie(paid: Setup, upstream) -> None:
    headers = brc121(paid, 25)
    status, resp, body, cookies = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    assert status == 200, body
    assert b'"/pages/1"' in body  # the upstream's answer
    token = resp["X-Farebox-Token"]
    grant, _ = paid.tokens.verify(token)
    assert (grant.service, grant.scope, grant.txid, grant.satoshis) == (
        "archive",
        "/archive/pages/1",
        headers["_txid"],
        25,
    )
    cookie = cookies["farebox_token"]
    assert cookie.value == token and cookie["httponly"] and cookie["path"] == "/archive/pages/1"
    assert len(paid.broadcaster.seen) == 1

    # What the upstream saw: a verifiable grant, no payment, no token.
    seen = {k.lower(): v for k, v in upstream.seen[-1].headers.items()}
    claims = jwt.decode(
        seen["x-farebox-grant"], options={"verify_signature": False}, audience=UPSTREAM
    )
    assert claims["txid"] == headers["_txid"] and claims["sub"] == grant.payer
    assert CLIENT.public_key().hex() not in str(seen)
    assert not [k for k in seen if k.startswith("x-bsv-")]

    # The receipt was stored before the token left.
    receipt = await paid.store.receipt(headers["_txid"])
    assert receipt is not None and receipt.grant_id == grant.id


async def test_token_reuse_pays_nothing_and_is_scoped(paid: Setup) -> None:
    status, resp, _, _ = await fetch(f"{paid.base}/archive/pages/1", send(brc121(paid, 25)))
    token = resp["X-Farebox-Token"]
    for _ in range(3):
        status, _, _, _ = await fetch(
            f"{paid.base}/archive/pages/1", {"Authorization": f"Bearer {token}"}
        )
        assert status == 200
    status, _, _, _ = await fetch(
        f"{paid.base}/archive/pages/1", {"Cookie": f"farebox_token={token}"}
    )
    assert status == 200
    status, _, _, _ = await fetch(
        f"{paid.base}/archive/pages/2", {"Authorization": f"Bearer {token}"}
    )
    assert status == 402  # another resource: a fresh challenge
    assert len(paid.broadcaster.seen) == 1


async def test_a_token_just_bought_is_used_without_another_signature_check(
    paid: Setup, upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    real = paid.tokens._decode

    def counting(token: str):  # type: ignore[no-untyped-def]
        decoded.append(token)
        return real(token)

    monkeypatch.setattr(paid.tokens, "_decode", counting)
    status, resp, _, _ = await fetch(f"{paid.base}/archive/pages/1", send(brc121(paid, 25)))
    assert status == 200
    bought = upstream.seen[-1].headers["X-Farebox-Grant"]
    token = resp["X-Farebox-Token"]
    status, _, _, _ = await fetch(
        f"{paid.base}/archive/pages/1", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200
    assert decoded == []  # minted here a moment ago: known without checking its signature
    assert upstream.seen[-1].headers["X-Farebox-Grant"] == bought  # one statement per grant
    # Another resource still asks for a payment, and a junk token is still checked.
    status, _, _, _ = await fetch(
        f"{paid.base}/archive/pages/2", {"Authorization": f"Bearer {token}"}
    )
    assert status == 402
    status, _, _, _ = await fetch(
        f"{paid.base}/archive/pages/1", {"Authorization": f"Bearer {token[:-4]}AAAA"}
    )
    assert status == 402 and decoded == [f"{token[:-4]}AAAA"]


async def test_route_grant_opens_the_whole_route(paid: Setup) -> None:
    status, resp, _, cookies = await fetch(
        f"{paid.base}/archive/datasets/air/2024", send(brc121(paid, 100))
    )
    assert status == 200
    assert cookies["farebox_token"]["path"] == "/archive/datasets"
    token = resp["X-Farebox-Token"]
    status, _, _, _ = await fetch(
        f"{paid.base}/archive/datasets/bus", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-5] + "AAAAA",
        lambda t: "",
        lambda t: "not.a.jwt",
        lambda t: jwt.encode({"svc": "archive"}, None, algorithm="none"),
    ],
)
async def test_bad_tokens_get_a_fresh_challenge(paid: Setup, mangle) -> None:
    _, resp, _, _ = await fetch(f"{paid.base}/archive/pages/1", send(brc121(paid, 25)))
    status, headers, body, _ = await fetch(
        f"{paid.base}/archive/pages/1",
        {"Authorization": f"Bearer {mangle(resp['X-Farebox-Token'])}"},
    )
    assert status == 402 and headers["x-bsv-sats"] == "25"
    assert b'"/pages/1"' not in body


async def test_expired_token_gets_a_challenge(paid: Setup) -> None:
    from gateway.tokens import Grant

    grant = Grant(
        "g",
        "archive",
        "/archive/pages/1",
        "resource",
        ("GET",),
        int(time.time()) - LEEWAY - 5,  # beyond the clock leeway
        "00" * 32,
        25,
        "p",
    )
    status, _, _, _ = await fetch(
        f"{paid.base}/archive/pages/1", {"Authorization": f"Bearer {paid.tokens.mint(grant)}"}
    )
    assert status == 402


async def test_same_payment_again_gets_the_same_grant(paid: Setup) -> None:
    headers = brc121(paid, 25)
    _, first, _, _ = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    status, again, _, _ = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    assert status == 200
    assert again["X-Farebox-Token"] == first["X-Farebox-Token"]
    assert len(paid.broadcaster.seen) == 1


async def test_same_payment_for_another_resource_is_refused(paid: Setup, upstream) -> None:
    headers = brc121(paid, 100)
    status, _, _, _ = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    assert status == 200
    served = len(upstream.seen)
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/2", send(headers))
    assert status == 402 and b"payment-reused" in body
    assert len(upstream.seen) == served


async def test_concurrent_replays_are_accepted_once(paid: Setup) -> None:
    paid.broadcaster.delay = 0.05
    headers = send(brc121(paid, 25))
    results = await asyncio.gather(
        *(fetch(f"{paid.base}/archive/pages/1", headers) for _ in range(30))
    )
    assert {status for status, *_ in results} == {200}
    assert len({resp["X-Farebox-Token"] for _, resp, _, _ in results}) == 1
    assert len(paid.broadcaster.seen) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"x-bsv-sender": None}, "missing-payment-field"),
        ({"x-bsv-vout": "x"}, "bad-vout"),
        ({"x-bsv-time": "soon"}, "bad-time"),
        ({"x-bsv-sender": "02" + "00" * 32}, "bad-sender"),
        ({"x-bsv-nonce": "!!"}, "bad-nonce"),
        ({"x-bsv-vout": "1"}, "wrong-payee"),
        ({"x-bsv-nonce": "b3RoZXI="}, "wrong-payee"),
    ],
)
async def test_garbled_headers_are_refused_with_a_reason(
    paid: Setup, upstream, change, reason: str
) -> None:
    headers = send(brc121(paid, 25))
    for key, value in change.items():
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", headers)
    assert status == 402, body
    assert f'"reason": "{reason}"'.encode() in body
    assert upstream.seen == [] and paid.broadcaster.seen == []


async def test_stale_time_is_refused(paid: Setup) -> None:
    headers = brc121(paid, 25, time_ms=int(time.time() * 1000) - 120_000)
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    assert status == 402 and b"stale-time" in body


async def test_accepted_payment_resent_after_the_window_gets_its_grant(
    paid: Setup, monkeypatch
) -> None:
    headers = send(brc121(paid, 25))
    status, first, _, _ = await fetch(f"{paid.base}/archive/pages/1", headers)
    assert status == 200
    later = time.time() + 600  # the client lost the answer and retries much later

    # The cashier's clock only: the token itself still has most of its hour.
    clock = SimpleNamespace(
        time=lambda: later, perf_counter=time.perf_counter, monotonic=time.monotonic
    )
    monkeypatch.setattr("gateway.payments.cashier.time", clock)
    stale = send(brc121(paid, 25))
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/2", stale)
    assert status == 402 and b"stale-time" in body  # a new payment that old is refused
    status, again, body, _ = await fetch(f"{paid.base}/archive/pages/1", headers)
    assert status == 200 and again["X-Farebox-Token"] == first["X-Farebox-Token"], body
    assert len(paid.broadcaster.seen) == 1


async def test_underpayment_is_refused(paid: Setup) -> None:
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", send(brc121(paid, 24)))
    assert status == 402 and b"underpaid" in body


async def test_malformed_beef_is_400(paid: Setup) -> None:
    headers = send(brc121(paid, 25))
    headers["x-bsv-beef"] = base64.b64encode(b"\x01\x00\xbe\xefjunk").decode()
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", headers)
    assert status == 400 and b"malformed-beef" in body


async def test_network_refusal_releases_nothing_and_grants_nothing(paid: Setup) -> None:
    paid.broadcaster.result = Result(False, True, "double-spend", "competing transaction seen")
    headers = brc121(paid, 25)
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    assert status == 402 and b"double-spend" in body
    assert await paid.store.receipt(headers["_txid"]) is None


async def test_pending_broadcast_is_503_and_can_be_retried(paid: Setup) -> None:
    paid.broadcaster.result = Result(False, False, "pending", "", "STORED")
    headers = brc121(paid, 25)
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    assert status == 503 and b"broadcast-pending" in body
    paid.broadcaster.result = Result()
    status, _, _, _ = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    assert status == 200


async def test_chain_outage_is_503_and_retry_works(paid: Setup) -> None:
    paid.broadcaster.down = True
    headers = brc121(paid, 25)
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    assert status == 503 and b"chain-unavailable" in body
    paid.broadcaster.down = False
    status, _, _, _ = await fetch(f"{paid.base}/archive/pages/1", send(headers))
    assert status == 200


# --- the pay endpoint -----------------------------------------------------------------


async def test_pay_endpoint_json_and_receipt(paid: Setup) -> None:
    h = brc121(paid, 25)
    body = {
        "beef": h["x-bsv-beef"],
        "sender": h["x-bsv-sender"],
        "nonce": h["x-bsv-nonce"],
        "time": h["x-bsv-time"],
        "vout": 0,
        "method": "GET",
        "url": "/archive/pages/3",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{paid.base}/.well-known/farebox/pay", json=body) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
        assert answer["receipt"]["txid"] == h["_txid"] and answer["receipt"]["satoshis"] == 25
        assert answer["grant"]["scope"] == "/archive/pages/3" and not answer["repeated"]
        token = answer["token"]
        async with http.get(
            f"{paid.base}/archive/pages/3", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 200
        url = f"{paid.base}/.well-known/farebox/receipts/{h['_txid']}"
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
            shown = await r.json()
            assert shown["grant_id"] == answer["receipt"]["grant_id"]
            # The derivation data kept for sweeping is not shown, not even to the payer.
            assert not {"sender", "prefix", "suffix"} & (set(shown) | set(answer["receipt"]))
        async with http.get(url) as r:
            assert r.status == 404  # not without proof of being the payer
        async with http.post(f"{paid.base}/.well-known/farebox/pay", json=body) as r:
            assert (await r.json())["repeated"] is True


async def test_pay_endpoint_binary_beef(paid: Setup) -> None:
    h = brc121(paid, 25)
    query = {
        "sender": h["x-bsv-sender"],
        "nonce": h["x-bsv-nonce"],
        "time": h["x-bsv-time"],
        "vout": "0",
        "url": "/archive/pages/4",
    }
    async with aiohttp.ClientSession() as http:
        data = base64.b64decode(h["x-bsv-beef"])
        async with http.post(
            f"{paid.base}/.well-known/farebox/pay",
            params=query,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        ) as r:
            assert r.status == 200, await r.text()


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ("not json", 400, "malformed-payment"),
        ("[]", 400, "malformed-payment"),
        ('{"url": "/archive/free"}', 400, "not-for-sale"),
        ('{"url": "/archive/%2f"}', 400, "encoded-slash"),
        ('{"url": "/archive/pages/1"}', 402, "missing-payment-field"),
    ],
)
async def test_pay_endpoint_bad_input(paid: Setup, body: str, status: int, reason: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{paid.base}/.well-known/farebox/pay",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == status
        assert (await r.json(content_type=None))["reason"] == reason


async def test_jwks_lists_the_signing_keys(paid: Setup) -> None:
    status, _, body, _ = await fetch(f"{paid.base}/.well-known/jwks.json")
    assert status == 200 and b'"crv": "Ed25519"' in body


async def test_streamed_paid_response_carries_the_token(paid: Setup) -> None:
    # Above 256 KiB the answer streams: the token must be in its headers too.
    size = 1 << 20
    status, resp, body, cookies = await fetch(
        f"{paid.base}/archive/big/{size}", send(brc121(paid, 10))
    )
    assert status == 200 and len(body) == size
    assert "X-Farebox-Token" in resp and "farebox_token" in cookies
