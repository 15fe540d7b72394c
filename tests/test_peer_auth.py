"""BRC-103/104 mutual authentication and BRC-105 payments, attacked from a client.

`Client` below is a BRC-103 peer written from the specs (bitcoin-sv/BRCs
peer-to-peer/0103.md, 0104.md) and from what @bsv/sdk's AuthFetch sends,
independent of gateway/peer/: it signs requests and checks the gateway's
signatures itself. tests/test_authfetch.py runs the real AuthFetch.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from bsv import PrivateKey, PublicKey

from gateway.peer.guard import Authenticator
from gateway.store.memory import MemoryStore
from tests.chainkit import Tracker, atomic_beef, funding, spend
from tests.conftest import PAID_SERVER
from tests.test_paid_access import FakeBroadcaster

SERVER_HEX = PAID_SERVER.public_key().hex()
INVOICE = "2-auth message signature-"
BRC29 = "2-3241645161d8-"


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    if n < 0xFD:
        return bytes((n,))
    if n < 0x10000:
        return b"\xfd" + n.to_bytes(2, "little")
    if n < 0x100000000:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def field_bytes(value: bytes | None) -> bytes:
    return varint(-1) if value is None else varint(len(value)) + value


def headers_bytes(pairs: list[tuple[str, str]]) -> bytes:
    out = varint(len(pairs))
    for name, value in sorted(pairs):
        out += field_bytes(name.encode()) + field_bytes(value.encode())
    return out


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    """A BRC-103 peer over HTTP: handshake, signed requests, checked answers."""

    base: str
    key: PrivateKey = field(default_factory=PrivateKey)
    nonce: str = ""  # our session nonce
    server_nonce: str = ""  # the server's session nonce
    sent: list[dict[str, str]] = field(default_factory=list)  # headers of each signed request
    server: str = SERVER_HEX  # the gateway's identity key, hex
    session: Any = None  # () -> aiohttp.ClientSession (TLS, a client address); default plain

    def http(self, **kw: Any) -> aiohttp.ClientSession:
        return self.session() if self.session is not None else aiohttp.ClientSession(**kw)

    @property
    def identity(self) -> str:
        return self.key.public_key().hex()

    async def handshake(self) -> dict[str, Any]:
        self.nonce = base64.b64encode(os.urandom(48)).decode()
        message = {
            "version": "0.1",
            "messageType": "initialRequest",
            "identityKey": self.identity,
            "initialNonce": self.nonce,
            "requestedCertificates": {"certifiers": [], "types": {}},
        }
        async with (
            self.http() as http,
            http.post(f"{self.base}/.well-known/auth", json=message) as r,
        ):
            assert r.status == 200, await r.text()
            reply = await r.json()
        assert reply["yourNonce"] == self.nonce
        assert reply["identityKey"] == self.server
        data = base64.b64decode(self.nonce) + base64.b64decode(reply["initialNonce"])
        child = PublicKey(self.server).derive_child(
            self.key, f"{INVOICE}{self.nonce} {reply['initialNonce']}"
        )
        assert child.verify(bytes(reply["signature"]), data, hasher=sha256)
        self.server_nonce = reply["initialNonce"]
        return reply

    def sign(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        *,
        request_id: bytes | None = None,
    ) -> dict[str, str]:
        headers = dict(headers or {})
        request_id = request_id or os.urandom(32)
        nonce = base64.b64encode(os.urandom(32)).decode()
        path, _, query = target.partition("?")
        signed = [
            (k.lower(), v.split(";")[0].strip() if k.lower() == "content-type" else v)
            for k, v in headers.items()
            if k.lower().startswith("x-bsv-") or k.lower() in ("authorization", "content-type")
        ]
        payload = (
            request_id
            + field_bytes(method.encode())
            + field_bytes(path.encode())
            + field_bytes(("?" + query).encode() if query else None)
            + headers_bytes(signed)
            + field_bytes(body)
        )
        child = self.key.derive_child(
            PublicKey(self.server), f"{INVOICE}{nonce} {self.server_nonce}"
        )
        headers.update(
            {
                "x-bsv-auth-version": "0.1",
                "x-bsv-auth-identity-key": self.identity,
                "x-bsv-auth-nonce": nonce,
                "x-bsv-auth-your-nonce": self.server_nonce,
                "x-bsv-auth-request-id": base64.b64encode(request_id).decode(),
                "x-bsv-auth-signature": child.sign(payload, hasher=sha256).hex(),
            }
        )
        self.sent.append(headers)
        return headers

    async def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None = None
    ) -> Answer:
        async with (
            self.http(auto_decompress=False) as http,
            http.request(
                method,
                self.base + target,
                headers=headers,
                data=body,
                skip_auto_headers=["Content-Type"],
            ) as r,
        ):
            return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())

    async def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        answer = await self.send(method, target, self.sign(method, target, headers, body), body)
        if answer.status not in (400, 401, 413, 503) or "x-bsv-auth-signature" in answer.headers:
            self.check(answer)
        return answer

    def check(self, answer: Answer) -> None:
        """The answer is signed by the server for us, over what we received."""
        h = answer.headers
        assert h.get("x-bsv-auth-identity-key") == self.server, h
        assert h["x-bsv-auth-your-nonce"] == self.nonce
        signed = [
            (k, v)
            for k, v in h.items()
            if (k.startswith("x-bsv-") or k == "authorization") and not k.startswith("x-bsv-auth")
        ]
        payload = (
            base64.b64decode(h["x-bsv-auth-request-id"])
            + varint(answer.status)
            + headers_bytes(signed)
            + varint(len(answer.body))
            + answer.body
        )
        child = PublicKey(self.server).derive_child(
            self.key, f"{INVOICE}{h['x-bsv-auth-nonce']} {self.nonce}"
        )
        assert child.verify(bytes.fromhex(h["x-bsv-auth-signature"]), payload, hasher=sha256), (
            "the answer's signature does not verify"
        )


@pytest.fixture
async def setup(paid_gateway):
    tracker, broadcaster = Tracker(), FakeBroadcaster()
    started = await paid_gateway(tracker, broadcaster, peer_limit=64 * 1024)
    started.tracker = tracker  # type: ignore[attr-defined]
    started.broadcaster = broadcaster  # type: ignore[attr-defined]
    return started


@pytest.fixture
async def client(setup) -> Client:
    c = Client(setup.base)
    await c.handshake()
    return c


FREE_BIG = """\
services:
  files:
    upstream: {upstream}
    mount: /files
    routes:
      - path: /**
        price: free
        methods: [GET, HEAD, POST, PUT]
"""


@pytest.fixture
async def free_base(gateway, upstream) -> str:
    return await gateway(
        FREE_BIG.format(upstream=upstream.url),
        server_key=SERVER_HEX,
        peers=Authenticator(PAID_SERVER, MemoryStore(), limit=64 * 1024),
    )


@pytest.fixture
async def free_client(free_base: str) -> Client:
    c = Client(free_base)
    await c.handshake()
    return c


def reason(answer: Answer) -> str:
    return answer.json()["reason"]


# --- the handshake ---------------------------------------------------------------------


async def test_handshake_is_signed_for_the_client(setup) -> None:
    reply = await Client(setup.base).handshake()
    assert reply["messageType"] == "initialResponse"
    assert reply["requestedCertificates"] == {"certifiers": [], "types": {}}


@pytest.mark.parametrize(
    "message, expected",
    [
        ("not json", "bad-auth-message"),
        ([1, 2], "bad-auth-message"),
        ({"version": "9.9", "messageType": "initialRequest"}, "unsupported-auth-version"),
        ({"version": "0.1", "messageType": "general"}, "unsupported-auth-message"),
        (
            {
                "version": "0.1",
                "messageType": "initialRequest",
                "identityKey": "02ab",
                "initialNonce": "AA==",
            },
            "bad-identity-key",
        ),
        (
            {
                "version": "0.1",
                "messageType": "initialRequest",
                "identityKey": PrivateKey().public_key().hex(),
                "initialNonce": "not base64!",
            },
            "bad-nonce",
        ),
        (
            {
                "version": "0.1",
                "messageType": "initialRequest",
                "identityKey": PrivateKey().public_key().hex(),
                "initialNonce": base64.b64encode(os.urandom(200)).decode(),
            },
            "bad-nonce",
        ),
    ],
)
async def test_a_bad_handshake_gets_a_clear_400(setup, message, expected) -> None:
    data = message.encode() if isinstance(message, str) else json.dumps(message).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{setup.base}/.well-known/auth", data=data) as r,
    ):
        assert r.status == 400
        assert r.content_type == "application/problem+json"
        assert (await r.json())["reason"] == expected


# --- signed requests -------------------------------------------------------------------


async def test_a_free_route_is_answered_signed(client: Client, upstream) -> None:
    answer = await client.request("GET", "/archive/catalogue?q=census&page=2")
    assert answer.status == 200
    assert upstream.seen[-1].raw_path == "/catalogue?q=census&page=2"
    assert "x-bsv-auth" not in " ".join(upstream.seen[-1].headers).lower()


async def test_a_body_is_checked_and_reaches_the_upstream(free_client: Client, upstream) -> None:
    body = json.dumps({"answer": "yes", "n": 3}, separators=(",", ": ")).encode()
    answer = await free_client.request(
        "POST", "/files/survey", {"content-type": "application/json; charset=utf-8"}, body
    )
    assert answer.status == 200
    assert upstream.seen[-1].body_sha256 == hashlib.sha256(body).hexdigest()


async def test_a_head_request_is_answered_signed(client: Client) -> None:
    answer = await client.request("HEAD", "/archive/catalogue")
    assert answer.status == 200 and answer.body == b""


@pytest.mark.parametrize(
    "tamper",
    ["method", "path", "query", "body", "header", "identity"],
)
async def test_a_request_changed_after_signing_is_refused(
    free_client: Client, upstream, tamper: str
) -> None:
    headers = free_client.sign(
        "POST", "/files/survey?x=1", {"content-type": "text/plain", "x-bsv-note": "a"}, b"one"
    )
    method, target, body = "POST", "/files/survey?x=1", b"one"
    if tamper == "method":
        method = "PUT"
    elif tamper == "path":
        target = "/files/surveys?x=1"
    elif tamper == "query":
        target = "/files/survey?x=2"
    elif tamper == "body":
        body = b"two"
    elif tamper == "header":
        headers["x-bsv-note"] = "b"
    else:
        headers["x-bsv-auth-identity-key"] = PrivateKey().public_key().hex()
    before = len(upstream.seen)
    answer = await free_client.send(method, target, headers, body)
    assert answer.status == 401
    assert reason(answer) in ("auth-bad-signature", "auth-session-unknown")
    assert len(upstream.seen) == before, "nothing unauthenticated reaches the upstream"


async def test_a_replayed_request_is_refused_once_it_was_served(
    free_client: Client, upstream
) -> None:
    headers = free_client.sign("POST", "/files/vote", {"content-type": "text/plain"}, b"yes")
    first = await free_client.send("POST", "/files/vote", headers, b"yes")
    assert first.status == 200
    again = await free_client.send("POST", "/files/vote", headers, b"yes")
    assert again.status == 401 and reason(again) == "auth-replayed"
    assert upstream.paths.count("/vote") == 1


async def test_a_session_nonce_is_bound_to_its_identity(setup, client: Client) -> None:
    thief = Client(setup.base, server_nonce=client.server_nonce, nonce=client.nonce)
    answer = await thief.send("GET", "/archive/catalogue", thief.sign("GET", "/archive/catalogue"))
    assert answer.status == 401 and reason(answer) == "auth-session-unknown"


async def test_a_made_up_session_is_refused(setup) -> None:
    stranger = Client(setup.base, server_nonce=base64.b64encode(os.urandom(73)).decode())
    answer = await stranger.send("GET", "/archive/x", stranger.sign("GET", "/archive/x"))
    assert answer.status == 401 and reason(answer) == "auth-session-unknown"


async def test_an_expired_session_is_refused_so_the_client_authenticates_again(
    paid_gateway,
) -> None:
    started = await paid_gateway(Tracker(), FakeBroadcaster(), peer_lifetime=1)
    c = Client(started.base)
    await c.handshake()
    await asyncio.sleep(2.1)
    answer = await c.send("GET", "/archive/x", c.sign("GET", "/archive/x"))
    assert answer.status == 401 and reason(answer) == "auth-session-unknown"
    await c.handshake()
    assert (await c.request("GET", "/archive/x")).status == 200


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"x-bsv-auth-signature": ""}, "auth-malformed"),
        ({"x-bsv-auth-signature": "zz"}, "auth-malformed"),
        ({"x-bsv-auth-request-id": "%%%"}, "auth-malformed"),
        ({"x-bsv-auth-version": "0.2"}, "unsupported-auth-version"),
        ({"x-bsv-auth-identity-key": "nope"}, "bad-identity-key"),
    ],
)
async def test_malformed_auth_headers_get_a_clear_400(client: Client, change, expected) -> None:
    headers = client.sign("GET", "/archive/x")
    headers.update(change)
    headers = {k: v for k, v in headers.items() if v}
    answer = await client.send("GET", "/archive/x", headers)
    assert answer.status == 400 and reason(answer) == expected


async def test_headers_an_upstream_adds_do_not_break_the_signature(client: Client) -> None:
    # The recording upstream answers ?forge with x-bsv-*, x402 and Farebox headers.
    answer = await client.request("GET", "/archive/anything?forge=1")
    assert answer.status == 200
    assert not [k for k in answer.headers if k.startswith("x-bsv-") and "auth" not in k]


async def test_an_answer_too_large_to_sign_is_a_clear_problem(free_base: str) -> None:
    c = Client(free_base)
    await c.handshake()
    small = await c.request("GET", f"/files/big/{64 * 1024}")
    assert small.status == 200 and len(small.body) == 64 * 1024
    large = await c.request("GET", f"/files/big/{64 * 1024 + 1}")
    assert large.status == 502 and reason(large) == "answer-too-large"


async def test_a_request_body_too_large_to_check_is_refused(free_base: str, upstream) -> None:
    c = Client(free_base)
    await c.handshake()
    body = b"x" * (64 * 1024 + 1)
    answer = await c.send(
        "POST", "/files/up", c.sign("POST", "/files/up", {"content-type": "text/plain"}, body), body
    )
    assert answer.status == 413 and reason(answer) == "body-too-large"
    c.check(answer)  # signed: the client reads it as an answer
    assert upstream.seen == []


async def test_unsigned_clients_still_stream_large_answers(free_base: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{free_base}/files/big/{1024 * 1024}") as r,
    ):
        assert r.status == 200 and len(await r.read()) == 1024 * 1024


async def test_a_websocket_cannot_be_signed(client: Client) -> None:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    answer = await client.send("GET", "/archive/ws", client.sign("GET", "/archive/ws") | headers)
    assert answer.status == 400 and reason(answer) == "not-signable"
    client.check(answer)


# --- BRC-105 payments ------------------------------------------------------------------


def brc105_payment(
    client: Client,
    setup,
    prefix: str,
    sats: int,
    *,
    payee_first: bool = True,
    wrong_key: bool = False,
) -> tuple[str, str]:
    """An x-bsv-payment value paying `sats` as AuthFetch would; and its txid."""
    suffix = base64.b64encode(os.urandom(32)).decode()
    parent = funding(client.key, 100_000, setup.tracker)
    if wrong_key:
        payee = PrivateKey().public_key()
    else:
        payee = PublicKey(SERVER_HEX).derive_child(client.key, f"{BRC29}{prefix} {suffix}")
    change = (client.key.public_key(), 100_000 - sats - 10)
    outputs = [(payee, sats), change] if payee_first else [change, (payee, sats)]
    tx = spend(parent, 0, client.key, outputs)
    value = json.dumps(
        {
            "derivationPrefix": prefix,
            "derivationSuffix": suffix,
            "transaction": base64.b64encode(atomic_beef(tx)).decode(),
        }
    )
    return value, tx.txid()


async def challenge(client: Client, target: str) -> Answer:
    answer = await client.request("GET", target)
    assert answer.status == 402
    return answer


async def test_an_authenticated_402_asks_for_brc105_and_is_signed(client: Client) -> None:
    answer = await challenge(client, "/archive/pages/1")
    h = answer.headers
    assert h["x-bsv-payment-version"] == "1.0"
    assert h["x-bsv-payment-satoshis-required"] == "25" == h["x-bsv-sats"]
    assert h["x-bsv-payment-derivation-prefix"]
    assert answer.json()["reason"] == "payment-required"


async def test_an_unauthenticated_402_does_not_ask_for_brc105(setup) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{setup.base}/archive/pages/1") as r:
        assert r.status == 402
        assert "x-bsv-payment-derivation-prefix" not in r.headers


async def test_brc105_pays_once_and_the_grant_is_kept_for_the_identity(
    client: Client, setup, upstream
) -> None:
    prefix = (await challenge(client, "/archive/pages/1")).headers[
        "x-bsv-payment-derivation-prefix"
    ]
    value, _ = brc105_payment(client, setup, prefix, 25, payee_first=False)
    paid = await client.request("GET", "/archive/pages/1", {"x-bsv-payment": value})
    assert paid.status == 200, paid.body
    assert paid.headers["x-bsv-payment-satoshis-paid"] == "25"
    assert len(setup.broadcaster.seen) == 1
    # The same identity reads it again without paying: its grant was kept for it.
    again = await client.request("GET", "/archive/pages/1")
    assert again.status == 200
    assert len(setup.broadcaster.seen) == 1
    # Another identity has no such grant.
    other = Client(setup.base)
    await other.handshake()
    assert (await other.request("GET", "/archive/pages/1")).status == 402
    # And the grant covers what was bought only.
    assert (await client.request("GET", "/archive/pages/2")).status == 402


async def test_a_brc105_payment_sent_again_gets_the_same_grant(client: Client, setup) -> None:
    prefix = (await challenge(client, "/archive/pages/3")).headers[
        "x-bsv-payment-derivation-prefix"
    ]
    value, _ = brc105_payment(client, setup, prefix, 25)
    first = await client.request("GET", "/archive/pages/3", {"x-bsv-payment": value})
    second = await client.request("GET", "/archive/pages/3", {"x-bsv-payment": value})
    assert first.status == second.status == 200
    assert len(setup.broadcaster.seen) == 1


async def test_a_brc105_payment_replayed_for_another_resource_is_refused(
    client: Client, setup
) -> None:
    prefix = (await challenge(client, "/archive/pages/4")).headers[
        "x-bsv-payment-derivation-prefix"
    ]
    value, _ = brc105_payment(client, setup, prefix, 25)
    assert (await client.request("GET", "/archive/pages/4", {"x-bsv-payment": value})).status == 200
    replay = await client.request("GET", "/archive/pages/5", {"x-bsv-payment": value})
    assert replay.status == 402 and reason(replay) == "payment-reused"


@pytest.mark.parametrize(
    "kind, expected",
    [("underpaid", "underpaid"), ("wrong-output", "wrong-payee")],
)
async def test_a_bad_brc105_payment_is_refused_and_the_same_prefix_offered_again(
    client: Client, setup, kind: str, expected: str
) -> None:
    prefix = (await challenge(client, "/archive/pages/6")).headers[
        "x-bsv-payment-derivation-prefix"
    ]
    value, _ = brc105_payment(
        client, setup, prefix, 24 if kind == "underpaid" else 25, wrong_key=kind == "wrong-output"
    )
    refused = await client.request("GET", "/archive/pages/6", {"x-bsv-payment": value})
    assert refused.status == 402 and reason(refused) == expected
    assert refused.headers["x-bsv-payment-derivation-prefix"] == prefix
    assert setup.broadcaster.seen == []


async def test_a_prefix_this_server_did_not_issue_is_refused(client: Client, setup) -> None:
    value, _ = brc105_payment(client, setup, base64.b64encode(os.urandom(33)).decode(), 25)
    refused = await client.request("GET", "/archive/pages/7", {"x-bsv-payment": value})
    assert refused.status == 402 and reason(refused) == "unknown-prefix"
    assert setup.broadcaster.seen == []


async def test_a_prefix_issued_to_another_identity_is_refused(client: Client, setup) -> None:
    other = Client(setup.base)
    await other.handshake()
    prefix = (await challenge(other, "/archive/pages/8")).headers["x-bsv-payment-derivation-prefix"]
    value, _ = brc105_payment(client, setup, prefix, 25)
    refused = await client.request("GET", "/archive/pages/8", {"x-bsv-payment": value})
    assert refused.status == 402 and reason(refused) == "unknown-prefix"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("not json", "bad-payment-header"),
        ("[]", "bad-payment-header"),
        ('{"derivationPrefix": "a", "derivationSuffix": "b"}', "bad-payment-header"),
        (
            '{"derivationPrefix": "a", "derivationSuffix": "b", "transaction": "!!"}',
            "malformed-beef",
        ),
    ],
)
async def test_a_malformed_brc105_header_is_a_clear_400(client: Client, value, expected) -> None:
    answer = await client.request("GET", "/archive/pages/9", {"x-bsv-payment": value})
    assert answer.status == 400 and reason(answer) == expected


async def test_brc105_needs_an_authenticated_request(setup) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{setup.base}/archive/pages/1",
            headers={"x-bsv-payment": '{"derivationPrefix": "a"}'},
        ) as r,
    ):
        assert r.status == 400
        assert (await r.json())["reason"] == "authentication-required"


# --- sessions across instances ---------------------------------------------------------


async def test_sessions_replays_and_kept_grants_span_instances(gateway, upstream, tmp_path) -> None:
    """Two instances with the same server key and store: a session opened on
    one works on the other, a request replayed to the other is refused, and a
    grant bought on one opens the resource on the other."""
    from gateway.payments.cashier import Cashier
    from gateway.tokens import KeyRing, Tokens
    from tests.conftest import PAID_POLICY

    store, tracker, broadcaster = MemoryStore(), Tracker(), FakeBroadcaster()
    ring = tmp_path / "shared-ring"
    bases = []
    for _ in range(2):
        tokens = Tokens(KeyRing.load(ring))
        cashier = Cashier(
            PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
        )  # type: ignore[arg-type]
        bases.append(
            await gateway(
                PAID_POLICY.format(upstream=upstream.url),
                server_key=SERVER_HEX,
                tokens=tokens,
                cashier=cashier,
                store=store,
                peers=Authenticator(PAID_SERVER, store),
            )
        )
    one = Client(bases[0])
    await one.handshake()
    two = Client(bases[1], key=one.key, nonce=one.nonce, server_nonce=one.server_nonce)
    assert (await two.request("GET", "/archive/catalogue")).status == 200
    headers = one.sign("GET", "/archive/catalogue")
    assert (await one.send("GET", "/archive/catalogue", headers)).status == 200
    replayed = await two.send("GET", "/archive/catalogue", headers)
    assert replayed.status == 401 and reason(replayed) == "auth-replayed"

    setup = type("S", (), {"tracker": tracker})()
    prefix = (await challenge(one, "/archive/pages/1")).headers["x-bsv-payment-derivation-prefix"]
    value, _ = brc105_payment(one, setup, prefix, 25)
    assert (await two.request("GET", "/archive/pages/1", {"x-bsv-payment": value})).status == 200
    assert (await one.request("GET", "/archive/pages/1")).status == 200
    assert len(broadcaster.seen) == 1


async def test_pages_on_other_origins_may_authenticate(setup) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.options(
            f"{setup.base}/.well-known/auth",
            headers={
                "Origin": "https://portal.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        ) as r,
    ):
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "content-type" in r.headers["Access-Control-Allow-Headers"]
    reply = await Client(setup.base).handshake()
    assert reply["initialNonce"]


async def test_a_kept_grant_from_a_clock_ahead_is_not_paid_for_again(client: Client, setup) -> None:
    """AuthFetch pays whatever a 402 offers: a grant it holds that opens only
    shortly (minted by an instance whose clock runs ahead) is refused with
    nothing to pay."""
    from tests.test_clock_skew import FAR_AHEAD, minted_ahead, page_grant

    grant = page_grant()
    token = minted_ahead(setup.tokens, grant, FAR_AHEAD)
    await setup.store.bind(
        f"peer:{client.identity}:{grant.service}:{grant.scope}", token, grant.expires + 600
    )
    answer = await client.request("GET", grant.scope)
    assert answer.status == 402 and reason(answer) == "grant-not-yet-valid"
    assert "x-bsv-payment-derivation-prefix" not in answer.headers


def test_signatures_with_a_cached_shared_secret_are_brc42s() -> None:
    """gateway/peer/signatures.py caches the ECDH secret per peer: what it signs
    verifies under bsv-sdk's own BRC-42 child keys, and what those sign it
    verifies, for many keys and keyIDs (the same peer again included)."""
    from gateway.peer import signatures

    server = PrivateKey()
    peers = [PrivateKey() for _ in range(5)]
    for i in range(60):
        peer = peers[i % len(peers)]
        key_id = f"{base64.b64encode(os.urandom(32)).decode()} {i}"
        data = os.urandom(i * 7)
        ours = signatures.sign(server, peer.public_key(), key_id, data)
        child = server.public_key().derive_child(peer, INVOICE + key_id)
        assert child.verify(ours, data, hasher=sha256)
        theirs = peer.derive_child(server.public_key(), INVOICE + key_id).sign(data, hasher=sha256)
        assert signatures.verify(server, peer.public_key(), key_id, data, theirs)
        assert not signatures.verify(server, peer.public_key(), key_id + "!", data, theirs)
        assert not signatures.verify(server, PrivateKey().public_key(), key_id, data, theirs)
