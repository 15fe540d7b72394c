"""BRC-103/104/105 through Farebox, attacked: what an adversary tries, and what holds.

The first group are the flaws an adversarial review found (each failed
before its fix); the rest are attacks that held from the start. `Client`
is tests/test_peer_auth.py's BRC-103 peer, written from the specs
independently of gateway/peer/.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from bsv import PrivateKey, PublicKey

from gateway.payments.cashier import Cashier
from gateway.peer.guard import Authenticator
from gateway.peer.nonces import Nonces
from gateway.pipeline.credentials import Revocations
from gateway.store import StoreUnavailable
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens
from tests.chainkit import Tracker, atomic_beef, funding, pay, spend
from tests.conftest import PAID_SERVER
from tests.test_paid_access import FakeBroadcaster
from tests.test_peer_auth import (
    BRC29,
    INVOICE,
    SERVER_HEX,
    Answer,
    Client,
    field_bytes,
    headers_bytes,
    sha256,
)

POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    tabs: {{top_up: 1000, lasts: 1d}}
    routes:
      - path: /pages/{{n}}
        price: 25
        grant: {{lasts: 1h, covers: resource}}
      - path: /big/{{size}}
        price: 10
        meter: {{per: request}}
      - path: /slow
        price: 10
        meter: {{per: request}}
      - path: /metered/**
        methods: [GET, POST]
        price: 10
        meter: {{per: request}}
      - path: /**
        price: free
        methods: [GET, HEAD, POST, PUT]
"""
LIMIT = 64 * 1024  # --auth-body-limit of the rig


class FlakyStore(MemoryStore):
    """A memory store whose named operations can be made to fail (an outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.down: set[str] = set()

    def _check(self, name: str) -> None:
        if name in self.down:
            raise StoreUnavailable(f"{name}: store down (test)")

    async def hit(self, key: str, window: int):  # type: ignore[no-untyped-def]
        self._check("hit")
        return await super().hit(key, window)

    async def bind(self, holder: str, token: str, expires: int) -> None:
        self._check("bind")
        return await super().bind(holder, token, expires)

    async def bound(self, holder: str) -> list[str]:
        self._check("bound")
        return await super().bound(holder)

    async def revoked(self, grant_id: str) -> bool:
        self._check("revoked")
        return await super().revoked(grant_id)


@dataclass
class Rig:
    base: str
    store: FlakyStore
    tokens: Tokens
    tracker: Tracker
    broadcaster: FakeBroadcaster


@pytest.fixture
async def rig(gateway, upstream, tmp_path: Path) -> Rig:
    """A gateway that takes payments, revokes grants, and serves BRC-103 peers."""
    store, tracker, broadcaster = FlakyStore(), Tracker(), FakeBroadcaster()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    base = await gateway(
        POLICY.format(upstream=upstream.url),
        server_key=SERVER_HEX,
        tokens=tokens,
        cashier=cashier,
        cookie_secure=False,
        store=store,
        revocations=Revocations(store, ttl=0),
        peers=Authenticator(PAID_SERVER, store, limit=LIMIT),
    )
    return Rig(base, store, tokens, tracker, broadcaster)


@pytest.fixture
async def peer(rig: Rig) -> Client:
    c = Client(rig.base)
    await c.handshake()
    return c


def reason(answer: Answer) -> str:
    return answer.json()["reason"]


def assert_problem(answer: Answer, *statuses: int) -> str:
    """A clear refusal: problem+json with a reason, never a 5xx crash; its reason."""
    assert answer.status != 500, answer.body[:300]
    if statuses:
        assert answer.status in statuses, (answer.status, answer.body[:300])
    assert answer.headers.get("content-type", "").startswith("application/problem+json"), (
        answer.status,
        answer.headers,
        answer.body[:300],
    )
    return reason(answer)


def payment(
    client: Client,
    rig: Rig,
    prefix: str,
    sats: int,
    *,
    suffix: str | None = None,
    outputs: list[int] | None = None,
) -> tuple[str, str]:
    """An x-bsv-payment value paying `sats` (or each of `outputs`) to the BRC-29
    key of (prefix, suffix), as AuthFetch sends it; and the txid."""
    suffix = suffix if suffix is not None else base64.b64encode(os.urandom(32)).decode()
    parent = funding(client.key, 100_000, rig.tracker)
    payee = PublicKey(SERVER_HEX).derive_child(client.key, f"{BRC29}{prefix} {suffix}")
    amounts = outputs if outputs is not None else [sats]
    change = (client.key.public_key(), 100_000 - sum(amounts) - 10)
    tx = spend(parent, 0, client.key, [*((payee, a) for a in amounts), change])
    value = json.dumps(
        {
            "derivationPrefix": prefix,
            "derivationSuffix": suffix,
            "transaction": base64.b64encode(atomic_beef(tx)).decode(),
        }
    )
    return value, tx.txid()


async def prefix_for(client: Client, target: str) -> str:
    answer = await client.request("GET", target)
    assert answer.status == 402, answer.body
    return answer.headers["x-bsv-payment-derivation-prefix"]


async def buy(client: Client, rig: Rig, target: str, sats: int = 25) -> Answer:
    value, _ = payment(client, rig, await prefix_for(client, target), sats)
    paid = await client.request("GET", target, {"x-bsv-payment": value})
    assert paid.status == 200, paid.body
    return paid


def sign_with(
    client: Client,
    method: str,
    target: str,
    *,
    nonce: str,
    request_id: bytes,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> dict[str, str]:
    """Client.sign with the request nonce and id chosen by the caller."""
    headers = dict(headers or {})
    path, _, query = target.partition("?")
    signed = [(k.lower(), v) for k, v in headers.items() if k.lower().startswith("x-bsv-")]
    payload = (
        request_id
        + field_bytes(method.encode())
        + field_bytes(path.encode())
        + field_bytes(("?" + query).encode() if query else None)
        + headers_bytes(signed)
        + field_bytes(body)
    )
    child = client.key.derive_child(
        PublicKey(client.server), f"{INVOICE}{nonce} {client.server_nonce}"
    )
    return headers | {
        "x-bsv-auth-version": "0.1",
        "x-bsv-auth-identity-key": client.identity,
        "x-bsv-auth-nonce": nonce,
        "x-bsv-auth-your-nonce": client.server_nonce,
        "x-bsv-auth-request-id": base64.b64encode(request_id).decode(),
        "x-bsv-auth-signature": child.sign(payload, hasher=sha256).hex(),
    }


async def fetch_like(client: Client, method: str, target: str, headers: dict[str, str]) -> Answer:
    """Send as a WHATWG fetch client reads the answer: a header sent twice is
    one value, joined with ", " (what AuthFetch signs over, via Headers)."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.request(method, client.base + target, headers=headers) as r,
    ):
        joined: dict[str, str] = {}
        for name in {k.lower() for k in r.headers}:
            joined[name] = ", ".join(r.headers.getall(name))
        return Answer(r.status, joined, await r.read())


async def raw_exchange(base: str, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send bytes as they are; (status, lower-case headers, body)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    found = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), found, body


def request_head(method: str, target: str, headers: dict[str, bytes]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [k.encode() + b": " + v for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def odd_upstream() -> tuple[asyncio.AbstractServer, str]:
    """An upstream answering bytes no well-behaved framework would send (per path):
    /dup-auth: Authorization twice; /latin1-auth: a non-UTF-8 value; /public:
    cacheable by shared caches; /gzip: gzip although not asked for."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        body = json.dumps({"path": path, "n": os.urandom(4).hex()}).encode()
        extra = b""
        if "dup-auth" in path:
            extra = b"Authorization: one\r\nAuthorization: two\r\n"
        elif "latin1-auth" in path:
            extra = b"Authorization: caf\xe9\r\n"
        elif "public" in path:
            extra = b"Cache-Control: public, max-age=60\r\n"
        elif "gzip" in path:
            body = gzip.compress(body)
            extra = b"Content-Encoding: gzip\r\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + extra
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def odd(gateway, tmp_path: Path) -> AsyncIterator[Rig]:
    """The rig's gateway in front of odd_upstream()."""
    server, url = await odd_upstream()
    store, tracker, broadcaster = FlakyStore(), Tracker(), FakeBroadcaster()
    tokens = Tokens(KeyRing.load(tmp_path / "odd-ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=tracker, broadcaster=broadcaster, store=store, tokens=tokens
    )  # type: ignore[arg-type]
    base = await gateway(
        POLICY.format(upstream=url),
        server_key=SERVER_HEX,
        tokens=tokens,
        cashier=cashier,
        cookie_secure=False,
        store=store,
        peers=Authenticator(PAID_SERVER, store, limit=LIMIT),
    )
    yield Rig(base, store, tokens, tracker, broadcaster)
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# =======================================================================================
# Findings: each test failed before its fix.
# =======================================================================================

# --- money -----------------------------------------------------------------------------


async def test_an_identity_whose_kept_grant_was_revoked_can_buy_again(
    rig: Rig, peer: Client
) -> None:
    await buy(peer, rig, "/archive/pages/1")
    (token,) = await rig.store.bound(f"peer:{peer.identity}:archive:/archive/pages/1")
    grant = rig.tokens.verify(token)[0]
    await rig.store.revoke(grant.id, grant.expires + 60)  # as POST /revoke does

    refused = await peer.request("GET", "/archive/pages/1")
    assert refused.status == 402 and reason(refused) == "grant-revoked"  # held: refused
    value, _ = payment(peer, rig, refused.headers["x-bsv-payment-derivation-prefix"], 25)
    again = await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": value})
    assert again.status == 200, again.body  # "pay again for access", as the 402 says
    assert len(rig.broadcaster.seen) == 2


async def test_an_identity_whose_kept_tab_was_revoked_can_open_a_new_one(
    rig: Rig, peer: Client
) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/metered/a"), 1000)
    opened = await peer.request("GET", "/archive/metered/a", {"x-bsv-payment": value})
    assert opened.status == 200, opened.body
    tab = opened.headers["x-farebox-tab"]
    await rig.store.revoke(tab, int(time.time()) + 86_400)

    refused = await peer.request("GET", "/archive/metered/b")
    assert refused.status == 402 and reason(refused) == "grant-revoked"  # held: refused
    value, _ = payment(peer, rig, refused.headers["x-bsv-payment-derivation-prefix"], 1000)
    again = await peer.request("GET", "/archive/metered/b", {"x-bsv-payment": value})
    assert again.status == 200, again.body
    assert again.headers["x-farebox-tab"] != tab


async def test_an_identity_that_bought_many_pages_never_pays_twice_for_one(
    rig: Rig, peer: Client
) -> None:
    for n in range(1, 34):
        await buy(peer, rig, f"/archive/pages/{n}")
    assert len(rig.broadcaster.seen) == 33
    statuses = [(await peer.request("GET", f"/archive/pages/{n}")).status for n in range(1, 34)]
    assert statuses == [200] * 33, statuses


async def test_a_grant_bought_while_the_store_could_not_keep_it_is_not_paid_twice(
    rig: Rig, peer: Client
) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/pages/1"), 25)
    rig.store.down = {"bind"}
    paid = await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": value})
    rig.store.down = set()
    # Either the purchase is refused as a whole (nothing charged, send it again),
    # or the grant is there for the identity afterwards.
    if paid.status == 200:
        again = await peer.request("GET", "/archive/pages/1")
        assert again.status == 200, "paid, served once, and the grant is gone"
    else:
        assert_problem(paid, 503)


async def test_a_peer_that_hangs_up_is_charged_nothing_like_an_unsigned_client(
    rig: Rig, peer: Client
) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/metered/a"), 1000)
    opened = await peer.request("GET", "/archive/metered/a", {"x-bsv-payment": value})
    tab, token = opened.headers["x-farebox-tab"], opened.headers["x-farebox-token"]

    async def hang_up(headers: dict[str, str]) -> int:
        """msat charged for a request to a slow metered route, left after 0.1 s."""
        before = await rig.store.balance(tab)
        data = request_head(
            "GET", "/archive/slow?s=0.5", {k: v.encode() for k, v in headers.items()}
        )
        host, port = rig.base.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()
        await asyncio.sleep(1.0)  # the upstream answers; the gateway settles
        after = await rig.store.balance(tab)
        assert before is not None and after is not None
        return before - after

    assert await hang_up({"Authorization": f"Bearer {token}"}) == 0  # unsigned: nothing
    assert await hang_up(peer.sign("GET", "/archive/slow?s=0.5")) == 0


# --- replay ----------------------------------------------------------------------------


async def test_a_signed_request_is_served_once_across_workers(tmp_path: Path, upstream) -> None:
    from tests.farebox_process import serve

    key = tmp_path / "server.key"
    key.write_text(PAID_SERVER.hex() + "\n")
    key.chmod(0o600)
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "main.yaml").write_text(
        f"services:\n  svc:\n    upstream: {upstream.url}\n    routes:\n"
        "      - path: /**\n        methods: '*'\n        price: free\n"
    )
    port = free_port()
    args = ("--policies", str(folder), "--key-file", str(key), "--port", str(port))
    async with serve(*args, "--workers", "2", ready=None) as gw:
        gw.port = port
        for _ in range(200):  # both workers listening (each logs it once)
            if sum("listening on" in line for line in gw.lines) >= 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        # Each worker would remember request nonces on its own: no session is
        # opened at all, said plainly (and once in the log).
        for _ in range(6):  # new connections: the kernel spreads them over both workers
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{gw.base}/.well-known/auth", json={}) as r,
            ):
                assert r.status == 404
                assert (await r.json())["reason"] == "authentication-off"
        assert (
            sum("authenticated clients (BRC-103, AuthFetch) are off" in line for line in gw.lines)
            == 1
        )


# --- answers ---------------------------------------------------------------------------


async def test_a_shared_cache_in_front_never_hands_one_peers_signed_answer_to_another(
    odd,
) -> None:
    from tests.nginx_process import need_nginx, running_nginx

    need_nginx()
    base = odd.base
    cache = Path(tempfile.mkdtemp(prefix="farebox-peer-cache-"))
    cache.chmod(0o777)  # nginx's workers run as nobody
    port = free_port()
    site = f"""\
proxy_cache_path {cache} levels=1 keys_zone=farebox_peer:1m inactive=10m;
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass {base};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_cache farebox_peer;
        add_header X-Cache $upstream_cache_status always;
    }}
}}
"""
    try:
        async with running_nginx(site, (port,)):
            front = f"http://127.0.0.1:{port}"
            a, b = Client(front), Client(front)
            await a.handshake()
            await b.handshake()
            failures = []
            # Two peers, one after the other: each must get an answer signed for it.
            for c in (a, b):
                answer = await c.send(
                    "GET", "/archive/public/s", c.sign("GET", "/archive/public/s")
                )
                try:
                    c.check(answer)
                except AssertionError:
                    failures.append(f"peer after peer: {answer.headers.get('x-cache')}")
            # An unsigned client first, then a peer: the peer must get a signed answer.
            async with aiohttp.ClientSession() as http, http.get(front + "/archive/public/u"):
                pass
            answer = await a.send("GET", "/archive/public/u", a.sign("GET", "/archive/public/u"))
            try:
                a.check(answer)
            except (AssertionError, KeyError):
                failures.append(f"peer after unsigned: {answer.headers.get('x-cache')}")
            assert failures == []
    finally:
        shutil.rmtree(cache, ignore_errors=True)


async def test_an_upstream_sending_authorization_twice_does_not_break_the_signature(
    odd,
) -> None:
    c = Client(odd.base)
    await c.handshake()
    answer = await fetch_like(c, "GET", "/archive/dup-auth", c.sign("GET", "/archive/dup-auth"))
    assert answer.status == 200
    c.check(answer)


async def test_an_upstream_header_that_is_not_utf8_is_no_500(odd) -> None:
    c = Client(odd.base)
    await c.handshake()
    answer = await c.send("GET", "/archive/latin1-auth", c.sign("GET", "/archive/latin1-auth"))
    assert answer.status != 500, answer.body
    if answer.status == 200:
        c.check(answer)
    else:
        assert_problem(answer)


# --- refusals that crash ---------------------------------------------------------------


async def test_a_deeply_nested_handshake_is_a_clear_400(rig: Rig) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{rig.base}/.well-known/auth", data=b"[" * 15_000) as r,
    ):
        answer = Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())
    assert assert_problem(answer, 400) == "bad-auth-message"


async def test_a_deeply_nested_payment_header_is_a_clear_400(peer: Client) -> None:
    answer = await peer.send(
        "GET",
        "/archive/pages/1",
        peer.sign("GET", "/archive/pages/1", {"x-bsv-payment": "[" * 5000}),
    )
    assert assert_problem(answer, 400) == "bad-payment-header"


async def test_a_suffix_that_is_not_unicode_text_is_a_clear_400(rig: Rig, peer: Client) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/pages/1"), 25)
    fields = json.loads(value)
    fields["derivationSuffix"] = "\ud800"
    headers = peer.sign("GET", "/archive/pages/1", {"x-bsv-payment": json.dumps(fields)})
    answer = await peer.send("GET", "/archive/pages/1", headers)
    assert assert_problem(answer, 400) == "bad-payment-header"
    assert rig.broadcaster.seen == []


async def test_a_signed_header_that_is_not_utf8_is_refused_clearly(rig: Rig, peer: Client) -> None:
    signed = peer.sign("GET", "/archive/x", {"x-bsv-note": "caf\u00e9"})
    # Sent as one latin-1 byte (0xE9), as Node's fetch sends a ByteString: not UTF-8.
    data = request_head("GET", "/archive/x", {k: v.encode("latin-1") for k, v in signed.items()})
    status, headers, body = await raw_exchange(rig.base, data)
    answer = Answer(status, headers, body)
    assert assert_problem(answer, 400, 401)


# --- interop ---------------------------------------------------------------------------


async def test_a_signed_request_to_the_pay_endpoint_is_read_like_an_unsigned_one(
    rig: Rig, peer: Client
) -> None:
    body = json.dumps(
        {"url": "/archive/pages/1", "beef": "AAAA", "sender": peer.identity, "nonce": "AAAA",
         "time": "1", "vout": 0}
    ).encode()  # fmt: skip
    signed = await peer.request(
        "POST", "/.well-known/farebox/pay", {"content-type": "application/json"}, body
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            rig.base + "/.well-known/farebox/pay",
            data=body,
            headers={"content-type": "application/json"},
        ) as r,
    ):
        unsigned = (await r.json())["reason"]
    assert unsigned == "malformed-beef"
    assert reason(signed) == unsigned


async def test_a_signed_request_expecting_100_continue_is_told_to_continue(
    rig: Rig, peer: Client
) -> None:
    body = b"hello"
    signed = peer.sign("POST", "/archive/echo", {"content-type": "text/plain"}, body)
    signed |= {"Content-Length": "5", "Expect": "100-continue"}
    host, port = rig.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            request_head("POST", "/archive/echo", {k: v.encode() for k, v in signed.items()})
        )
        await writer.drain()
        try:
            first = await asyncio.wait_for(reader.read(64), 2)
        except TimeoutError:
            first = b""
    finally:
        writer.close()
    assert first.startswith(b"HTTP/1.1 100 Continue"), first


@pytest.mark.parametrize("nonce", ["QR==", "AAAA===="])
async def test_a_non_canonical_client_nonce_is_refused_or_kept_as_sent(
    rig: Rig, nonce: str
) -> None:
    c = Client(rig.base)
    message = {
        "version": "0.1",
        "messageType": "initialRequest",
        "identityKey": c.identity,
        "initialNonce": nonce,
        "requestedCertificates": {"certifiers": [], "types": {}},
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{rig.base}/.well-known/auth", json=message) as r,
    ):
        status, reply = r.status, await r.json(content_type=None)
    if status == 400:
        return
    c.nonce, c.server_nonce = nonce, reply["initialNonce"]
    answer = await c.send("GET", "/archive/x", c.sign("GET", "/archive/x"))
    assert answer.headers["x-bsv-auth-your-nonce"] == nonce


# =======================================================================================
# Attacks that are held.
# =======================================================================================

# --- identity and kept grants ----------------------------------------------------------


async def test_another_identity_cannot_use_a_kept_grant_whatever_it_claims(
    rig: Rig, peer: Client
) -> None:
    await buy(peer, rig, "/archive/pages/1")
    thief = Client(rig.base)
    await thief.handshake()
    # Its own session, the victim's identity key (in any spelling): not signed by it.
    for claimed in (
        peer.identity,
        peer.identity.upper(),
        peer.identity[:2] + peer.identity[2:].upper(),
    ):
        headers = thief.sign("GET", "/archive/pages/1")
        headers["x-bsv-auth-identity-key"] = claimed
        answer = await thief.send("GET", "/archive/pages/1", headers)
        assert answer.status == 401, answer.body
    # The victim's session nonce, its own key: the session is bound to the victim's key.
    thief.server_nonce = peer.server_nonce
    answer = await thief.send("GET", "/archive/pages/1", thief.sign("GET", "/archive/pages/1"))
    assert answer.status == 401 and reason(answer) == "auth-session-unknown"
    # Uncompressed or prefixed keys are not keys here.
    point = PublicKey(peer.identity).serialize(compressed=False).hex()
    for claimed in (point, "0x" + peer.identity, peer.identity + "00"):
        headers = thief.sign("GET", "/archive/pages/1")
        headers["x-bsv-auth-identity-key"] = claimed
        answer = await thief.send("GET", "/archive/pages/1", headers)
        assert assert_problem(answer, 400) == "bad-identity-key"
    # And its own requests find nothing kept for it.
    await thief.handshake()
    assert (await thief.request("GET", "/archive/pages/1")).status == 402
    assert len(rig.broadcaster.seen) == 1


async def test_the_owner_spelling_its_key_in_capitals_is_the_same_identity(
    rig: Rig, peer: Client
) -> None:
    await buy(peer, rig, "/archive/pages/1")
    headers = peer.sign("GET", "/archive/pages/1")
    headers["x-bsv-auth-identity-key"] = peer.identity.upper()
    answer = await peer.send("GET", "/archive/pages/1", headers)
    assert answer.status == 200  # its kept grant, not another one
    # ... and the capitals are no new nonce space: the same request again is a replay.
    again = dict(headers, **{"x-bsv-auth-identity-key": peer.identity})
    assert reason(await peer.send("GET", "/archive/pages/1", again)) == "auth-replayed"


async def test_a_victims_brc105_payment_replayed_by_another_identity_buys_nothing(
    rig: Rig, peer: Client
) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/pages/1"), 25)
    assert (await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": value})).status == 200
    thief = Client(rig.base)
    await thief.handshake()
    stolen = await thief.request("GET", "/archive/pages/1", {"x-bsv-payment": value})
    assert stolen.status == 402 and reason(stolen) == "unknown-prefix"
    assert await rig.store.bound(f"peer:{thief.identity}:archive:/archive/pages/1") == []
    assert (await thief.request("GET", "/archive/pages/1")).status == 402


async def test_a_revoked_kept_grant_is_refused(rig: Rig, peer: Client) -> None:
    await buy(peer, rig, "/archive/pages/1")
    (token,) = await rig.store.bound(f"peer:{peer.identity}:archive:/archive/pages/1")
    grant = rig.tokens.verify(token)[0]
    await rig.store.revoke(grant.id, grant.expires + 60)
    refused = await peer.request("GET", "/archive/pages/1")
    assert refused.status == 402 and reason(refused) == "grant-revoked"


# --- replays ---------------------------------------------------------------------------


async def test_concurrent_copies_of_one_signed_request_are_served_once(
    rig: Rig, peer: Client, upstream
) -> None:
    body = b"once"
    headers = peer.sign("POST", "/archive/vote", {"content-type": "text/plain"}, body)
    answers = await asyncio.gather(
        *(peer.send("POST", "/archive/vote", headers, body) for _ in range(12))
    )
    assert sorted(a.status for a in answers) == [200] + [401] * 11
    assert upstream.paths.count("/vote") == 1


async def test_a_replay_in_other_clothes_is_still_a_replay(rig: Rig, peer: Client) -> None:
    nonce, rid = base64.b64encode(os.urandom(32)).decode(), os.urandom(32)
    headers = sign_with(peer, "GET", "/archive/x", nonce=nonce, request_id=rid)
    assert (await peer.send("GET", "/archive/x", headers)).status == 200
    # Header names in capitals.
    upper = {k.upper(): v for k, v in headers.items()}
    assert reason(await peer.send("GET", "/archive/x", upper)) == "auth-replayed"
    # The same nonce under a new request id (signed afresh by the owner).
    other = sign_with(peer, "GET", "/archive/x", nonce=nonce, request_id=os.urandom(32))
    assert reason(await peer.send("GET", "/archive/x", other)) == "auth-replayed"
    # The same nonce for another path.
    moved = sign_with(peer, "GET", "/archive/y", nonce=nonce, request_id=os.urandom(32))
    assert reason(await peer.send("GET", "/archive/y", moved)) == "auth-replayed"
    # The other ECDSA signature of the same payload (s -> n - s).
    malleated = dict(headers, **{"x-bsv-auth-signature": _high_s(headers["x-bsv-auth-signature"])})
    answer = await peer.send("GET", "/archive/x", malleated)
    assert answer.status == 401 and reason(answer) in ("auth-replayed", "auth-bad-signature")
    # After the client authenticated again, the old request is still spent.
    await peer.handshake()
    assert reason(await peer.send("GET", "/archive/x", headers)) == "auth-replayed"


def _high_s(signature_hex: str) -> str:
    """The same ECDSA signature with s replaced by n - s (DER)."""
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    der = bytes.fromhex(signature_hex)
    rlen = der[3]
    r = der[4 : 4 + rlen]
    s = int.from_bytes(der[6 + rlen :], "big")
    s_bytes = (n - s).to_bytes(33, "big").lstrip(b"\x00")
    if s_bytes[0] & 0x80:
        s_bytes = b"\x00" + s_bytes
    body = b"\x02" + bytes([len(r)]) + r + b"\x02" + bytes([len(s_bytes)]) + s_bytes
    return (b"\x30" + bytes([len(body)]) + body).hex()


async def test_a_refused_request_does_not_spend_its_nonce_but_a_served_one_does(
    rig: Rig, peer: Client
) -> None:
    headers = peer.sign("GET", "/archive/pages/1")
    rig.store.down = {"hit"}
    paused = await peer.send("GET", "/archive/pages/1", headers)
    assert assert_problem(paused, 503) == "store-unavailable"
    assert paused.headers.get("retry-after")
    rig.store.down = set()
    assert (await peer.send("GET", "/archive/pages/1", headers)).status == 402
    assert reason(await peer.send("GET", "/archive/pages/1", headers)) == "auth-replayed"


# --- what the signature covers ---------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        "/archive/./catalogue",
        "/archive//catalogue",
        "/archive/%63atalogue",
        "/archive/catalogue/",
        "/archive/Catalogue",
        "/archive/catalogue?",
        "/archive/catalogue?a=1",
        "/archive/catalogue#x",
    ],
)
async def test_a_signature_for_one_target_opens_no_other(
    rig: Rig, peer: Client, upstream, sent: str
) -> None:
    headers = peer.sign("GET", "/archive/catalogue")
    data = request_head("GET", sent, {k: v.encode() for k, v in headers.items()})
    status, found, body = await raw_exchange(rig.base, data)
    if sent == "/archive/catalogue?":
        # An empty query is no query to WHATWG URLs (AuthFetch signs -1 for it): the same target.
        assert status == 200
        return
    assert status in (400, 401), (status, body)
    assert found["content-type"].startswith("application/problem+json")
    assert upstream.seen == []


async def test_headers_outside_the_signature_cannot_turn_into_a_payment(
    rig: Rig, peer: Client, upstream
) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/pages/1"), 25)
    # Underscored and added after signing: neither is a payment nor reaches the upstream.
    headers = peer.sign("GET", "/archive/pages/1") | {"x_bsv_payment": value}
    data = request_head("GET", "/archive/pages/1", {k: v.encode() for k, v in headers.items()})
    status, _, _ = await raw_exchange(rig.base, data)
    assert status == 402
    added = peer.sign("GET", "/archive/pages/1") | {"x-bsv-payment": value}
    answer = await peer.send("GET", "/archive/pages/1", added)
    assert answer.status == 401 and reason(answer) == "auth-bad-signature"
    assert rig.broadcaster.seen == [] and upstream.seen == []


async def test_a_body_added_or_changed_in_transit_is_refused(
    rig: Rig, peer: Client, upstream
) -> None:
    no_body = peer.sign("POST", "/archive/vote")
    answer = await peer.send(
        "POST", "/archive/vote", no_body | {"content-type": "text/plain"}, b"x"
    )
    assert answer.status == 401
    # Sent chunked, as signed: the whole body is checked, and it reaches the upstream whole.
    body = b"hello world"
    signed = peer.sign("POST", "/archive/vote", {"content-type": "text/plain"}, body)

    async def chunks():
        yield b"hello "
        await asyncio.sleep(0.05)
        yield b"world"

    async with (
        aiohttp.ClientSession() as http,
        http.post(rig.base + "/archive/vote", headers=signed, data=chunks()) as r,
    ):
        assert r.status == 200
    assert upstream.seen[-1].body_sha256 == hashlib.sha256(body).hexdigest()


async def test_a_header_repeated_in_transit_is_refused(rig: Rig, peer: Client, upstream) -> None:
    headers = peer.sign("GET", "/archive/x", {"x-bsv-note": "a"})
    raw = request_head("GET", "/archive/x", {k: v.encode() for k, v in headers.items()})
    doubled = raw.replace(b"x-bsv-note: a\r\n", b"x-bsv-note: a\r\nx-bsv-note: b\r\n")
    assert doubled != raw
    status, found, _ = await raw_exchange(rig.base, doubled)
    assert status == 401 and found["content-type"].startswith("application/problem+json")
    # A second nonce after the signed one is ignored: the request is what was signed, once.
    nonce = headers["x-bsv-auth-nonce"]
    twice = raw.replace(
        f"x-bsv-auth-nonce: {nonce}\r\n".encode(),
        f"x-bsv-auth-nonce: {nonce}\r\nx-bsv-auth-nonce: AAAA\r\n".encode(),
    )
    assert (await raw_exchange(rig.base, twice))[0] == 200
    assert (await raw_exchange(rig.base, raw))[0] == 401
    assert upstream.paths.count("/x") == 1


async def test_a_utf8_header_value_is_signed_as_its_bytes(rig: Rig, peer: Client) -> None:
    headers = peer.sign("GET", "/archive/x", {"x-bsv-note": "caf\u00e9 \u2713"})
    data = request_head("GET", "/archive/x", {k: v.encode() for k, v in headers.items()})
    assert (await raw_exchange(rig.base, data))[0] == 200


@pytest.mark.parametrize("signed, sent", [(None, b""), (b"", None)])
async def test_an_empty_body_and_no_body_are_one_thing(
    rig: Rig, peer: Client, signed: bytes | None, sent: bytes | None
) -> None:
    headers = peer.sign("POST", "/archive/vote", body=signed)
    extra = {"Content-Length": "0"} if sent is not None else {}
    data = request_head(
        "POST", "/archive/vote", {k: v.encode() for k, v in (headers | extra).items()}
    )
    assert (await raw_exchange(rig.base, data))[0] == 200


# --- BRC-105 ---------------------------------------------------------------------------


async def test_a_prefix_from_another_deployment_or_a_stale_one_buys_nothing(
    rig: Rig, peer: Client
) -> None:
    identity = PublicKey(peer.identity).serialize()
    elsewhere = Nonces(PrivateKey()).prefix(identity)
    value, _ = payment(peer, rig, elsewhere, 25)
    answer = await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": value})
    assert answer.status == 402 and reason(answer) == "unknown-prefix"
    assert answer.headers["x-bsv-payment-derivation-prefix"] != elsewhere

    stale = Nonces(PAID_SERVER).prefix(identity, now=time.time() - 3600)
    value, _ = payment(peer, rig, stale, 25)
    answer = await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": value})
    assert answer.status == 402 and reason(answer) == "stale-time"
    assert answer.headers["x-bsv-payment-derivation-prefix"] != stale  # a new one: pay anew
    assert rig.broadcaster.seen == []  # the stale transaction was never sent


async def test_a_prefix_used_for_two_payments_buys_two_things_once_each(
    rig: Rig, peer: Client
) -> None:
    prefix = await prefix_for(peer, "/archive/pages/1")
    one, _ = payment(peer, rig, prefix, 25)
    two, _ = payment(peer, rig, prefix, 25)
    assert (await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": one})).status == 200
    assert (await peer.request("GET", "/archive/pages/2", {"x-bsv-payment": two})).status == 200
    again = await peer.request("GET", "/archive/pages/3", {"x-bsv-payment": two})
    assert again.status == 402 and reason(again) == "payment-reused"
    assert len(rig.broadcaster.seen) == 2


@pytest.mark.parametrize(
    "suffix, expected",
    [("x" * 129, "bad-payment-header"), ("", "bad-payment-header"), (7, "bad-payment-header")],
)
async def test_an_odd_suffix_is_a_clear_400(rig: Rig, peer: Client, suffix, expected) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/pages/1"), 25)
    fields = json.loads(value) | {"derivationSuffix": suffix}
    answer = await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": json.dumps(fields)})
    assert assert_problem(answer, 400) == expected


async def test_a_long_odd_but_honest_suffix_is_paid_to_its_own_key(rig: Rig, peer: Client) -> None:
    suffix = "é ✓ " * 30  # 120 characters, spaces and all: the payer derived the key from it
    prefix = await prefix_for(peer, "/archive/pages/1")
    value, txid = payment(peer, rig, prefix, 25, suffix=suffix)
    assert (await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": value})).status == 200
    receipt = await rig.store.receipt(txid)
    assert receipt is not None and receipt.suffix == suffix  # what sweeping needs


async def test_two_outputs_to_the_payee_the_first_must_carry_the_price(
    rig: Rig, peer: Client
) -> None:
    prefix = await prefix_for(peer, "/archive/pages/1")
    value, _ = payment(peer, rig, prefix, 0, outputs=[10, 25])
    answer = await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": value})
    assert answer.status == 402 and reason(answer) == "underpaid"
    assert rig.broadcaster.seen == []


async def test_brc105_and_brc121_on_one_request_are_one_payment(rig: Rig, peer: Client) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/pages/1"), 25)
    now = str(int(time.time() * 1000))
    p = pay(
        PAID_SERVER.public_key(), peer.key, 25, rig.tracker, prefix="bm9uY2U=",
        suffix=base64.b64encode(now.encode()).decode(),
    )  # fmt: skip
    brc121 = {
        "x-bsv-beef": base64.b64encode(atomic_beef(p.tx)).decode(),
        "x-bsv-sender": peer.identity,
        "x-bsv-nonce": "bm9uY2U=",
        "x-bsv-time": now,
        "x-bsv-vout": "0",
    }
    answer = await peer.request("GET", "/archive/pages/1", {"x-bsv-payment": value, **brc121})
    assert answer.status == 200 and answer.headers["x-bsv-payment-satoshis-paid"] == "25"
    assert len(rig.broadcaster.seen) == 1


async def test_brc105_without_authentication_is_refused_even_beside_brc121(rig: Rig) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{rig.base}/archive/pages/1", headers={"x-bsv-payment": "{}"}) as r,
    ):
        assert r.status == 400
        assert r.content_type == "application/problem+json"
        assert (await r.json())["reason"] == "authentication-required"
    assert rig.broadcaster.seen == []


# --- tabs ------------------------------------------------------------------------------


async def test_a_brc105_top_up_opens_a_tab_only_its_identity_draws_on(
    rig: Rig, peer: Client
) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/metered/a"), 1000)
    opened = await peer.request("GET", "/archive/metered/a", {"x-bsv-payment": value})
    assert opened.status == 200 and opened.headers["x-bsv-payment-satoshis-paid"] == "1000"
    tab = opened.headers["x-farebox-tab"]
    assert await rig.store.balance(tab) == 990_000
    assert (await peer.request("GET", "/archive/metered/b")).status == 200
    assert await rig.store.balance(tab) == 980_000
    other = Client(rig.base)
    await other.handshake()
    assert (await other.request("GET", "/archive/metered/b")).status == 402
    assert await rig.store.balance(tab) == 980_000
    # Topped up again by the same identity: the same tab, credited once.
    value, _ = payment(peer, rig, await prefix_for(other, "/archive/metered/c"), 1000)
    refused = await peer.request("GET", "/archive/metered/c", {"x-bsv-payment": value})
    assert refused.status == 402 and reason(refused) == "unknown-prefix"  # other's prefix
    assert await rig.store.balance(tab) == 980_000


async def test_a_signed_answer_refused_whole_is_not_charged_to_the_tab(
    rig: Rig, peer: Client
) -> None:
    value, _ = payment(peer, rig, await prefix_for(peer, "/archive/metered/a"), 1000)
    opened = await peer.request("GET", "/archive/metered/a", {"x-bsv-payment": value})
    tab = opened.headers["x-farebox-tab"]
    before = await rig.store.balance(tab)
    big = await peer.request("GET", f"/archive/big/{LIMIT + 1}")
    assert big.status == 502 and reason(big) == "answer-too-large"
    assert await rig.store.balance(tab) == before
    small = await peer.request("GET", "/archive/big/1000")
    assert small.status == 200 and len(small.body) == 1000
    assert await rig.store.balance(tab) == before - 10_000


async def test_an_encoded_answer_is_refused_signed_and_not_charged(odd: Rig) -> None:
    c = Client(odd.base)
    await c.handshake()
    answer = await c.request("GET", "/archive/gzip")  # its signature is checked in request()
    assert answer.status == 502 and reason(answer) == "answer-encoded"
    value, _ = payment(c, odd, await prefix_for(c, "/archive/metered/a"), 1000)
    opened = await c.request("GET", "/archive/metered/a", {"x-bsv-payment": value})
    assert opened.status == 200, opened.body
    tab = opened.headers["x-farebox-tab"]
    before = await odd.store.balance(tab)
    answer = await c.request("GET", "/archive/metered/gzip")
    assert answer.status == 502 and reason(answer) == "answer-encoded"
    assert await odd.store.balance(tab) == before


# --- answers ---------------------------------------------------------------------------


async def test_an_upstream_cannot_speak_for_farebox_in_a_signed_answer(
    rig: Rig, peer: Client
) -> None:
    answer = await peer.request("GET", "/archive/anything?forge=1")
    assert answer.status == 200  # its signature verified in request()
    assert not [k for k in answer.headers if k.startswith("x-bsv-") and "auth" not in k]


# --- store outages ---------------------------------------------------------------------


@pytest.mark.parametrize("down", ["hit", "bound", "revoked"])
async def test_a_store_outage_is_a_clear_503(rig: Rig, peer: Client, down: str) -> None:
    await buy(peer, rig, "/archive/pages/1")
    rig.store.down = {down}
    answer = await peer.request("GET", "/archive/pages/1")
    assert assert_problem(answer, 503) == "store-unavailable"
    assert answer.headers.get("retry-after")
    if down != "hit":  # a free route keeps working while only the grants are out of reach
        assert (await peer.request("GET", "/archive/catalogue")).status == 200


# --- the handshake ---------------------------------------------------------------------


async def test_handshakes_in_a_crowd_each_get_their_own_session(rig: Rig) -> None:
    clients = [Client(rig.base) for _ in range(20)]
    replies = await asyncio.gather(*(c.handshake() for c in clients))
    assert len({r["initialNonce"] for r in replies}) == 20
    answers = await asyncio.gather(*(c.request("GET", "/archive/x") for c in clients))
    assert all(a.status == 200 for a in answers)


@pytest.mark.parametrize(
    "body",
    [
        b"{" + b" " * (17 * 1024) + b"}",
        b"\xff\xfe not json",
        json.dumps({"version": "0.1", "messageType": "initialRequest",
                    "identityKey": "04" + "11" * 64, "initialNonce": "AAAA"}).encode(),
        json.dumps({"version": "0.1", "messageType": "initialRequest",
                    "identityKey": PrivateKey().public_key().hex(), "initialNonce": ""}).encode(),
    ],
)  # fmt: skip
async def test_a_bad_handshake_is_a_clear_400(rig: Rig, body: bytes) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{rig.base}/.well-known/auth", data=body) as r,
    ):
        answer = Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())
    assert_problem(answer, 400)


@pytest.mark.parametrize(
    "change",
    [
        {"x-bsv-auth-nonce": ""},
        {"x-bsv-auth-your-nonce": "é"},
        {"x-bsv-auth-your-nonce": "A" * 4000},
        {"x-bsv-auth-request-id": base64.b64encode(b"x" * 65).decode()},
        {"x-bsv-auth-signature": "00" * 81},
        {"x-bsv-auth-signature": "30" * 40},
        {"x-bsv-auth-identity-key": "02" + "ff" * 32},
    ],
)
async def test_malformed_auth_headers_are_clear_refusals(peer: Client, change) -> None:
    headers = peer.sign("GET", "/archive/x")
    headers.update(change)
    headers = {k: v for k, v in headers.items() if v}
    answer = await peer.send("GET", "/archive/x", headers)
    assert_problem(answer, 400, 401)
