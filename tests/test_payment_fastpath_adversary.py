"""Adversarial checks of the paid fast paths (435b1be, a43e87b, b9a4a74).

- A token minted for a payment is remembered as verified
  (`Tokens.upstream_header_minted`): it must never open more than `verify`
  would open, whatever happens between the mint and the remembering (a key
  pruned and the ring reloaded), and it must end as any token ends
  (expiry, revocation); the grant remembered is the grant the token says.
- The token cookie written straight for a JWT is what `http.cookies` writes,
  for the scopes a request can really have.
- Grant ids from os.urandom: nothing depends on them being UUIDs.
- The shared default grant model of a route without `grant:` is frozen.
- The payments bench's raw HTTP/1.1 reader counts each answer once, whatever
  the reads it arrives in, and never hangs on a connection the server cuts.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import jwt
import pydantic
import pytest
from aiohttp import web

import gateway.tokens as tokens_module
from gateway.payments.cashier import Accepted, Cashier
from gateway.pipeline.credentials import COOKIE, Revocations, token_headers
from gateway.policy.schema import Grant as GrantTerms
from gateway.policy.schema import Route
from gateway.store.memory import MemoryStore
from gateway.tokens import LEEWAY, UPSTREAM, Grant, KeyRing, Tokens, new_grant_id
from tests.chainkit import Tracker
from tests.conftest import PAID_POLICY, PAID_SERVER, GatewayFactory, Upstream
from tests.test_paid_access import FakeBroadcaster, Setup, brc121, fetch, send
from tests.test_tabs import POLICY as TAB_POLICY
from tests.test_tabs import metered_app
from tests.test_token_cookie import expected_cookie

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import payments as pay_bench

HEX32 = re.compile(r"[0-9a-f]{32}")


class Paid(Setup):
    """A paying gateway whose key ring folder and revocation list are known."""

    ring: Path

    def __init__(self, base: str, tokens: Tokens, store: MemoryStore, ring: Path) -> None:
        super().__init__(base, Tracker(), FakeBroadcaster(), tokens, store)
        self.ring = ring


Start = Callable[..., Awaitable[Paid]]


@pytest.fixture
async def paying(gateway: GatewayFactory, upstream: Upstream, tmp_path: Path) -> Start:
    """Start PAID_POLICY (or `policy`) with payments, a known key ring and revocations."""

    async def start(policy: str = PAID_POLICY, upstream_url: str | None = None) -> Paid:
        store = MemoryStore()
        ring = tmp_path / "ring"
        tokens = Tokens(KeyRing.load(ring))
        setup = Paid("", tokens, store, ring)
        cashier = Cashier(
            PAID_SERVER,
            tracker=setup.tracker,  # type: ignore[arg-type]
            broadcaster=setup.broadcaster,  # type: ignore[arg-type]
            store=store,
            tokens=tokens,
        )
        setup.base = await gateway(
            policy.format(upstream=upstream_url or upstream.url),
            server_key=PAID_SERVER.public_key().hex(),
            tokens=tokens,
            cashier=cashier,
            cookie_secure=False,
            store=store,
            revocations=Revocations(store, ttl=0.05),
        )
        return setup

    return start


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def buy(paid: Paid, path: str = "/archive/pages/1", sats: int = 25) -> tuple[str, dict]:
    status, headers, body, _ = await fetch(f"{paid.base}{path}", send(brc121(paid, sats)))
    assert status == 200, body
    return headers["X-Farebox-Token"], headers


def decoded_elsewhere(paid: Paid, token: str) -> Grant | None:
    """What a fresh instance on the same key ring (nothing remembered) makes of `token`."""
    verified = Tokens(KeyRing.load(paid.ring, create=False)).verify(token)
    return None if verified is None else verified[0]


# --- a minted token remembered as verified --------------------------------------------


async def test_a_token_bought_while_its_key_is_pruned_stops_with_the_key(
    paying: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Tokens.reload`: "a pruned key stops verifying at once". The payment's
    token is minted before the receipt is stored (an await on the store);
    an operator who prunes that key and sends SIGHUP meanwhile must not
    leave this one token working on a key the gateway no longer holds."""
    paid = await paying()
    old = next(paid.ring.glob("*.pem"))
    complete = paid.store.complete

    async def rotated_meanwhile(txid, receipt, token) -> None:  # type: ignore[no-untyped-def]
        await complete(txid, receipt, token)
        # `farebox keys rotate` + prune, then SIGHUP (worker.py's reread).
        KeyRing.add_key(paid.ring)
        old.unlink()
        paid.tokens.reload(paid.ring)

    monkeypatch.setattr(paid.store, "complete", rotated_meanwhile)
    token, _ = await buy(paid)
    monkeypatch.setattr(paid.store, "complete", complete)
    assert decoded_elsewhere(paid, token) is None  # its key is gone from the ring
    assert not paid.tokens.issued_here(token)
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", bearer(token))
    assert status == 402, body  # as any token of a pruned key: refused, not served


async def test_a_token_bought_while_the_ring_rotates_keeps_working(
    paying: Start, monkeypatch: pytest.MonkeyPatch, upstream: Upstream
) -> None:
    """Rotation without pruning: the old key still verifies, so the token
    minted with it just before the reload opens what it bought."""
    paid = await paying()
    complete = paid.store.complete

    async def rotated_meanwhile(txid, receipt, token) -> None:  # type: ignore[no-untyped-def]
        await complete(txid, receipt, token)
        time.sleep(0.01)  # the new key's file is the newer one: it signs
        KeyRing.add_key(paid.ring)
        paid.tokens.reload(paid.ring)

    monkeypatch.setattr(paid.store, "complete", rotated_meanwhile)
    token, _ = await buy(paid)
    monkeypatch.setattr(paid.store, "complete", complete)
    assert decoded_elsewhere(paid, token) is not None
    for _ in range(2):
        status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", bearer(token))
        assert status == 200, body
    status, _, _, _ = await fetch(f"{paid.base}/archive/pages/2", bearer(token))
    assert status == 402


async def test_a_bought_token_is_the_grant_it_says_for_every_kind_of_purchase(
    paying: Start, upstream: Upstream
) -> None:
    """The grant remembered at the mint is the one the token carries: a fresh
    instance decoding the token admits exactly what this one does."""
    paid = await paying()
    for path, sats in (("/archive/pages/7", 25), ("/archive/datasets/air/2024", 100)):
        token, _ = await buy(paid, path, sats)
        remembered = paid.tokens.verify(token)
        assert remembered is not None
        assert remembered[0] == decoded_elsewhere(paid, token)
        claims = jwt.decode(
            upstream.seen[-1].headers["X-Farebox-Grant"],
            options={"verify_signature": False},
            audience=UPSTREAM,
        )
        assert claims["jti"] == remembered[0].id and HEX32.fullmatch(claims["jti"])


async def test_a_tab_top_up_token_is_the_grant_it_says(paying: Start) -> None:
    calls: list[str] = []
    runner = web.AppRunner(metered_app(calls), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        paid = await paying(TAB_POLICY, f"http://127.0.0.1:{runner.addresses[0][1]}")
        opened, headers = await buy(paid, "/util/calls/1", 1000)
        tab = headers["X-Farebox-Tab"]
        # A top-up of the open tab: a new token for the same tab.
        status, top, body, _ = await fetch(
            f"{paid.base}/util/calls/2", {**send(brc121(paid, 1000)), **bearer(opened)}
        )
        assert status == 200, body
        topped = top["X-Farebox-Token"]
        assert topped != opened and top["X-Farebox-Tab"] == tab
        for token in (opened, topped):
            remembered = paid.tokens.verify(token)
            assert remembered is not None
            assert remembered[0] == decoded_elsewhere(paid, token)
            assert remembered[0].covers == "tab" and remembered[0].tab == tab
            status, answer, _, _ = await fetch(f"{paid.base}/util/calls/3", bearer(token))
            assert status == 200 and answer["X-Farebox-Tab"] == tab
        assert await paid.store.balance(tab) == (2000 - 4 * 10) * 1000
    finally:
        await runner.cleanup()


async def test_a_bought_token_ends_at_its_expiry_like_any_other(
    paying: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    paid = await paying()
    token, _ = await buy(paid)
    grant = paid.tokens.verify(token)
    assert grant is not None
    ends = grant[0].expires + LEEWAY
    clock = SimpleNamespace(time=lambda: ends - 1)
    monkeypatch.setattr(tokens_module, "time", clock)
    status, _, _, _ = await fetch(f"{paid.base}/archive/pages/1", bearer(token))
    assert status == 200  # within LEEWAY past exp: still open, as a decoded token
    clock.time = lambda: ends + 1
    for _ in range(2):  # the express path (a known token) and the long way alike
        status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", bearer(token))
        assert status == 402, body


async def test_a_bought_token_revoked_is_refused_at_once(paying: Start) -> None:
    paid = await paying()
    token, _ = await buy(paid)
    verified = paid.tokens.verify(token)
    assert verified is not None
    grant_id = verified[0].id
    assert HEX32.fullmatch(grant_id) and await paid.store.sold(grant_id)
    await paid.store.revoke(grant_id, int(time.time()) + 600)
    for _ in range(2):
        status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", bearer(token))
        assert status == 402 and b"grant-revoked" in body


async def test_a_payment_sent_again_answers_its_first_token_and_mints_nothing(
    paying: Start, upstream: Upstream
) -> None:
    paid = await paying()
    payment = send(brc121(paid, 25))
    status, first, _, _ = await fetch(f"{paid.base}/archive/pages/1", payment)
    assert status == 200
    status, again, _, _ = await fetch(f"{paid.base}/archive/pages/1", payment)
    assert status == 200 and again["X-Farebox-Token"] == first["X-Farebox-Token"]
    assert len(paid.broadcaster.seen) == 1
    token = first["X-Farebox-Token"]
    remembered = paid.tokens.verify(token)
    assert remembered is not None and remembered[0] == decoded_elsewhere(paid, token)
    # Revoked, the same payment sent again buys nothing more.
    await paid.store.revoke(remembered[0].id, int(time.time()) + 600)
    await asyncio.sleep(0.1)  # the revocation list's ttl (0.05 s here)
    status, _, body, _ = await fetch(f"{paid.base}/archive/pages/1", payment)
    assert status == 402 and b"grant-revoked" in body


async def test_grant_ids_are_distinct_hex_without_uuid_structure_relied_on() -> None:
    ids = {new_grant_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(HEX32.fullmatch(i) for i in ids)
    store = MemoryStore()
    odd = "0" * 12 + "f" * 20  # not a version-4 UUID: revocable all the same
    await store.revoke(odd, int(time.time()) + 60)
    assert await Revocations(store).revoked(odd)


# --- the token cookie ------------------------------------------------------------------

simple_cookie = expected_cookie  # what http.cookies writes (tests/test_token_cookie.py)


ODD_SCOPES = [
    "/",
    "/svc/caf\u00e9/\u65e5\u672c",
    "/svc/a b/c",
    '/svc/"quoted"/x',
    "/svc/a,b=c/'d'",
    "/svc/semi;colon",
    "/svc/" + "long" * 2000,
    "/svc/emoji\U0001f600",
    "/svc/{id}/b",
    "/svc/**",
]


@pytest.mark.parametrize("scope", ODD_SCOPES)
@pytest.mark.parametrize("covers", ["resource", "route"])
@pytest.mark.parametrize("lifetime", [-10_000, 0, 1, 3600])
@pytest.mark.parametrize("secure", [True, False])
def test_the_cookie_is_what_http_cookies_writes_for_odd_scopes(
    scope: str, covers: str, lifetime: int, secure: bool
) -> None:
    now = 1_800_000_000
    tokens = Tokens(KeyRing({"k": _key()}, "k"))
    grant = Grant(
        new_grant_id(), "svc", scope, covers, ("GET",), now + lifetime, "ab" * 32, 1, "cd" * 16
    )
    token = tokens.mint(grant)
    headers = token_headers(Accepted(grant, token, None, False), secure=secure, now=now)  # type: ignore[arg-type]
    assert headers["Set-Cookie"] == simple_cookie(token, grant, secure, now)
    assert "Max-Age=-" not in headers["Set-Cookie"]


@pytest.mark.parametrize(
    "token", ["a.b.c=", "a.b.c==", "tok en", 'a"b', "a;b", "a,b", "caf\u00e9", "a\\b", "x"]
)
def test_a_token_that_is_no_jwt_is_quoted_as_http_cookies_quotes_it(token: str) -> None:
    now = 1_800_000_000
    grant = Grant("g" * 32, "svc", "/svc/a", "resource", ("GET",), now + 60, "ab" * 32, 1, "c")
    headers = token_headers(Accepted(grant, token, None, False), secure=True, now=now)  # type: ignore[arg-type]
    assert headers["Set-Cookie"] == simple_cookie(token, grant, True, now)


async def test_a_paid_answer_for_an_odd_path_carries_http_cookies_own_cookie(
    paying: Start,
) -> None:
    paid = await paying()
    # Spaces, quotes, commas, '=' and non-ASCII: all a canonical path may hold.
    path = "/archive/pages/caf%C3%A9%20%22x%22,y=z'%F0%9F%98%80"
    token, headers = await buy(paid, path)
    verified = paid.tokens.verify(token)
    assert verified is not None
    grant = verified[0]
    assert grant.scope == '/archive/pages/caf\u00e9 "x",y=z\'\U0001f600'
    sent = headers["Set-Cookie"]
    now = int(time.time())
    # The answer was written within a second or two of `now`.
    assert sent in {simple_cookie(token, grant, False, now - d) for d in range(3)}
    status, _, _, _ = await fetch(f"{paid.base}{path}", {"Cookie": f"{COOKIE}={token}"})
    assert status == 200


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


# --- the shared default grant model ----------------------------------------------------


def test_the_default_grant_is_one_frozen_model_shared_by_routes_without_grant() -> None:
    a = Route(path="/a", price=5)  # type: ignore[arg-type]
    b = Route(path="/b", price=5)  # type: ignore[arg-type]
    shared = a.effective_grant
    assert shared is b.effective_grant and shared == GrantTerms()
    with pytest.raises(pydantic.ValidationError):
        shared.lasts = 1  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        shared.covers = "route"  # type: ignore[misc]
    own = Route(path="/c", price=5, grant={"lasts": "1m", "covers": "route"})  # type: ignore[arg-type]
    assert own.effective_grant is not shared and own.effective_grant.covers == "route"
    changed = shared.model_copy(update={"covers": "route"})
    assert changed.covers == "route" and shared.covers == "resource"
    assert a.effective_grant == GrantTerms()


# --- the payments bench's raw HTTP/1.1 reader ------------------------------------------


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class _RawServer:
    """A server that reads each request head and lets `answer` write raw bytes
    (`answer` returns False to end the connection); `close` ends it all."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.handlers: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.append(writer)
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                    if not await self.answer(reader, writer):
                        return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client went away
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*self.handlers, return_exceptions=True)


def _prepared(n: int) -> list[pay_bench.Prepared]:
    return [pay_bench.Prepared(f"/p/{i}", {"x-bsv-beef": "AQID"}, b"", f"{i:064x}", "0") for i in range(n)]  # fmt: skip


async def _fire(answer: Answer, n: int, concurrency: int = 1) -> dict[int, int]:
    server = _RawServer(answer)
    base = await server.start()
    try:
        _, latencies, statuses = await asyncio.wait_for(
            pay_bench.fire(base, _prepared(n), concurrency), 10
        )
    finally:
        await server.close()
    assert len(latencies) == sum(statuses.values())
    return statuses


async def _dribble(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Bytes in tiny writes, each its own read on the other side."""
    for i in range(0, len(data), 3):
        writer.write(data[i : i + 3])
        await writer.drain()
        await asyncio.sleep(0.002)


CHUNKED = (
    b"HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n"
    b"a\r\n\r\n\r\n\r\n\r\n\r\n\r\n"  # a chunk made of CRLFs
    b"0\r\n\r\n"
)


async def test_a_chunked_answer_dribbled_across_reads_is_counted_once() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await _dribble(writer, CHUNKED)
        return True

    assert await _fire(answer, 6, 2) == {402: 6}


async def test_a_content_length_answer_split_anywhere_is_counted_once() -> None:
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello\r\n\r\nx"
    cuts = iter(range(1, len(whole)))  # one request per place to cut its answer

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        cut = next(cuts)
        writer.write(whole[:cut])
        await writer.drain()
        await asyncio.sleep(0.003)
        writer.write(whole[cut:])
        await writer.drain()
        return True

    assert await _fire(answer, len(whole) - 1) == {200: len(whole) - 1}


async def test_a_server_closing_mid_body_fails_the_run_instead_of_hanging() -> None:
    for cut in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ):

        async def answer(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: bytes = cut
        ) -> bool:
            writer.write(cut)
            await writer.drain()
            return False  # closed before the answer ends

        with pytest.raises(ConnectionError):
            await _fire(answer, 3)


async def test_an_interim_1xx_answer_is_not_counted_as_the_answer() -> None:
    """RFC 9110 15.2: a 1xx comes before the final answer of the same request."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.005)
        writer.write(b"HTTP/1.1 402 Payment Required\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()
        return True

    assert await _fire(answer, 4) == {402: 4}


async def test_a_chunked_answer_with_trailers_is_counted_and_the_next_one_read() -> None:
    """RFC 9112 7.1.2: a trailer section may follow the last chunk."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Checksum: 1\r\n\r\n"
        )
        await writer.drain()
        return True

    assert await _fire(answer, 4) == {200: 4}
