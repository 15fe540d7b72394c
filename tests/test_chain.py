"""Chain services against local servers that answer as ARC, Block Headers Service
and our devnet document; real signed transactions from bsv-sdk."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey, Transaction

from gateway.chain import (
    ACCEPTED_STATUSES,
    Broadcaster,
    BroadcastResult,
    ChainError,
    ChainTracker,
    classify_status,
)
from gateway.chain.arc import ArcBroadcaster
from gateway.chain.headers import BlockHeadersTracker, CachingTracker, DevnetTracker
from tests.chainkit import Tracker, atomic_beef, beef_of, funding, spend

OWNER = PrivateKey(0xC4A1)
PAYEE = PrivateKey(0x9A1EE)


def payment() -> tuple[Transaction, Transaction]:
    """A mined funding transaction and a signed P2PKH spend of it."""
    parent = funding(OWNER, 10_000, Tracker())
    return parent, spend(parent, 0, OWNER, [(PAYEE.public_key(), 600), (OWNER.public_key(), 9_000)])


# --- a little HTTP server harness -----------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass
class Fake:
    """A server whose answer each test sets; it records every request."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    answer: Handler | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def reply(self, status: int, body: Any) -> None:
        async def fixed(_: web.Request, __: bytes) -> web.StreamResponse:
            if isinstance(body, str | bytes):
                return web.Response(status=status, body=body, content_type="text/html")
            return web.json_response(body, status=status)

        self.answer = fixed


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    record = Fake()

    async def any_request(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        assert record.answer is not None, "the test did not say how to answer"
        return await record.answer(request, body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_request)
    runner, record.url = await start(app)
    yield record
    record.release.set()  # let a deliberately slow handler finish
    await runner.cleanup()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def arc_status(txid: str, status: str, **more: Any) -> dict[str, Any]:
    """A 200 answer as doc/arc.json shows it."""
    body = {
        "blockHash": "",
        "blockHeight": 0,
        "extraInfo": "",
        "status": 200,
        "timestamp": "2024-03-26T16:02:29.655390092Z",
        "title": "OK",
        "txStatus": status,
        "txid": txid,
        "merklePath": "",
        "competingTxs": None,
    }
    body.update(more)
    return body


def arc_error(code: int, title: str, txid: str | None, extra: str = "") -> dict[str, Any]:
    """A 4xx answer as ARC's pkg/api/status.go builds it."""
    return {
        "type": f"https://bitcoin-sv.github.io/arc/#/errors?id=_{code}",
        "title": title,
        "status": code,
        "detail": f"{title} detail",
        "instance": None,
        "txid": txid,
        "extraInfo": extra,
    }


# --- ARC: what goes on the wire ------------------------------------------------------


async def test_beef_broadcast_sends_binary_and_every_configured_header(fake: Fake) -> None:
    _, tx = payment()
    beef = tx.to_beef()
    fake.reply(200, arc_status(tx.txid(), "SEEN_ON_NETWORK"))
    async with ArcBroadcaster(
        fake.url + "/",
        api_key="secret-key",
        max_timeout=5,
        callback_url="https://farebox.example/arc/callback",
        callback_token="cb-token",
        full_status_updates=True,
        timeout=6,
    ) as arc:
        result = await arc.broadcast(beef)

    assert result == BroadcastResult(
        txid=tx.txid(), status="SEEN_ON_NETWORK", accepted=True, rejected=False
    )
    [req] = fake.seen
    assert (req.method, req.path, req.body) == ("POST", "/v1/tx", beef)
    assert req.headers["Content-Type"] == "application/octet-stream"
    assert req.headers["Authorization"] == "Bearer secret-key"
    assert req.headers["X-WaitFor"] == "SEEN_ON_NETWORK"
    assert req.headers["X-MaxTimeout"] == "5"
    assert req.headers["X-CallbackUrl"] == "https://farebox.example/arc/callback"
    assert req.headers["X-CallbackToken"] == "cb-token"
    assert req.headers["X-FullStatusUpdates"] == "true"


async def test_defaults_send_only_what_was_asked_for(fake: Fake) -> None:
    _, tx = payment()
    fake.reply(200, arc_status(tx.txid(), "SEEN_ON_NETWORK"))
    async with ArcBroadcaster(fake.url) as arc:
        await arc.broadcast(tx.to_beef())
    async with ArcBroadcaster(
        fake.url, wait_for=None, extra_headers={"X-WaitForStatus": "7", "Api-Key": "k"}
    ) as arc:
        await arc.broadcast(tx.to_beef())

    plain, custom = (s.headers for s in fake.seen)
    assert plain["X-WaitFor"] == "SEEN_ON_NETWORK"
    for name in ("Authorization", "X-MaxTimeout", "X-CallbackUrl", "X-CallbackToken"):
        assert name not in plain
    assert "X-FullStatusUpdates" not in plain
    assert "X-WaitFor" not in custom
    assert (custom["X-WaitForStatus"], custom["Api-Key"]) == ("7", "k")


async def test_hex_goes_as_text_plain(fake: Fake) -> None:
    _, tx = payment()
    fake.reply(200, arc_status(tx.txid(), "SEEN_ON_NETWORK"))
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.broadcast(tx.hex().upper())
    assert result.accepted
    [req] = fake.seen
    assert req.headers["Content-Type"].startswith("text/plain")
    assert req.body == tx.hex().encode()


async def test_atomic_beef_is_sent_as_plain_beef(fake: Fake) -> None:
    # ARC only recognises BEEF by 0xBEEF at bytes 2-3; BRC-95's prefix would
    # make it read the envelope as a raw transaction.
    _, tx = payment()
    fake.reply(200, arc_status(tx.txid(), "SEEN_ON_NETWORK"))
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.broadcast(atomic_beef(tx))
    assert result.accepted and result.txid == tx.txid()
    assert fake.seen[0].body == tx.to_beef()


async def test_answer_about_an_unconfirmed_ancestor_is_followed_up(fake: Fake) -> None:
    # ARC answers POST /v1/tx about the first unmined transaction in a BEEF.
    _, parent = payment()
    child = spend(parent, 0, PAYEE, [(OWNER.public_key(), 500)])
    statuses = {parent.txid(): "SEEN_ON_NETWORK", child.txid(): "STORED"}

    async def by_txid(request: web.Request, _: bytes) -> web.Response:
        if request.method == "POST":
            return web.json_response(arc_status(parent.txid(), "SEEN_ON_NETWORK"))
        txid = request.path.rsplit("/", 1)[1]
        return web.json_response(arc_status(txid, statuses[txid]))

    fake.answer = by_txid
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.broadcast(beef_of(parent, child), txid=child.txid())
    assert (result.txid, result.status, result.pending) == (child.txid(), "STORED", True)
    assert [s.method + " " + s.path for s in fake.seen] == [
        "POST /v1/tx",
        f"GET /v1/tx/{child.txid()}",
    ]


async def test_refused_ancestor_sinks_the_payment(fake: Fake) -> None:
    _, parent = payment()
    child = spend(parent, 0, PAYEE, [(OWNER.public_key(), 500)])
    fake.reply(200, arc_status(parent.txid(), "REJECTED", extraInfo="missing inputs"))
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.broadcast(beef_of(parent, child), txid=child.txid())
    assert (result.txid, result.rejected, result.reason) == (child.txid(), True, "rejected")
    assert parent.txid() in result.detail
    assert len(fake.seen) == 1


# --- ARC: what comes back ------------------------------------------------------------


async def test_double_spend_is_a_definite_failure_with_competitors(fake: Fake) -> None:
    _, tx = payment()
    rival = "505097ba93702491a8a8e5c195a3d2706baf9d43af5e8898aeace0e251f240d2"
    fake.reply(200, arc_status(tx.txid(), "DOUBLE_SPEND_ATTEMPTED", competingTxs=[rival]))
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.broadcast(tx.to_beef())
    assert (result.accepted, result.rejected, result.reason) == (False, True, "double-spend")
    assert result.competing_txs == (rival,)
    assert "DOUBLE_SPEND_ATTEMPTED" in result.detail


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("arc error 461: script failed", "rejected"),
        ("previously double spend attempted", "double-spend"),
    ],
)
async def test_rejected_status(fake: Fake, extra: str, reason: str) -> None:
    _, tx = payment()
    fake.reply(200, arc_status(tx.txid(), "REJECTED", extraInfo=extra))
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.broadcast(tx.to_beef())
    assert (result.status, result.rejected, result.reason) == ("REJECTED", True, reason)
    assert result.extra_info == extra


@pytest.mark.parametrize(
    ("code", "title", "reason"),
    [
        (400, "Bad request", "bad-request"),
        (460, "Not extended format", "not-extended-format"),
        (461, "Malformed transaction", "invalid-script"),
        (462, "Invalid inputs", "invalid-inputs"),
        (463, "Malformed transaction", "malformed"),
        (465, "Fee too low", "fee-too-low"),
        (466, "Conflicting tx found", "double-spend"),
        (468, "Invalid BUMPs", "invalid-beef"),
        (469, "Merkle Roots validation failed", "invalid-merkle-roots"),
        (473, "Cumulative fee validation failed", "cumulative-fee-too-low"),
        (475, "Mined ancestors not found in BUMPs", "missing-ancestors"),
        (470, "Some future refusal", "rejected"),
    ],
)
async def test_arc_error_objects_are_definite_refusals(
    fake: Fake, code: int, title: str, reason: str
) -> None:
    _, tx = payment()
    fake.reply(code, arc_error(code, title, tx.txid(), f"arc error {code}: details"))
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.broadcast(tx.to_beef())
    assert (result.accepted, result.rejected, result.reason, result.code) == (
        False,
        True,
        reason,
        code,
    )
    assert result.txid == tx.txid() and result.status == ""
    assert title in result.detail and f"arc error {code}: details" in result.detail


async def test_error_object_under_http_200_counts_by_its_own_code(fake: Fake) -> None:
    # doc/arc.json's POST /v1/tx 200 examples include an error object.
    _, tx = payment()
    fake.reply(200, arc_error(463, "Invalid outputs", tx.txid()))
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.broadcast(tx.to_beef())
    assert (result.rejected, result.reason, result.code) == (True, "malformed", 463)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (500, "<html>oops</html>", "server-error"),
        (503, arc_error(409, "Generic error", None), "server-error"),
        (401, "", "unauthorized"),
        (429, "", "rate-limited"),
        (409, arc_error(409, "Generic error", None, "metamorph unavailable"), "generic"),
        (404, {"message": "Not Found"}, "bad-response"),  # wrong ARC URL
        (200, "<html>captive portal</html>", "bad-response"),
        (200, {"unexpected": True}, "bad-response"),
        (302, "", "bad-response"),
    ],
)
async def test_unknown_outcomes_raise_chain_error(
    fake: Fake, status: int, body: Any, kind: str
) -> None:
    _, tx = payment()
    fake.reply(status, body)
    async with ArcBroadcaster(fake.url) as arc:
        with pytest.raises(ChainError) as info:
            await arc.broadcast(tx.to_beef())
    assert info.value.kind == kind


async def test_slow_arc_times_out(fake: Fake) -> None:
    async def slow(_: web.Request, __: bytes) -> web.Response:
        await fake.release.wait()
        return web.json_response({})

    fake.answer = slow
    _, tx = payment()
    async with ArcBroadcaster(fake.url, timeout=0.2) as arc:
        with pytest.raises(ChainError) as info:
            await arc.broadcast(tx.to_beef())
    assert info.value.kind == "timeout"


async def test_unreachable_arc() -> None:
    _, tx = payment()
    async with ArcBroadcaster(closed_port_url(), timeout=2) as arc:
        with pytest.raises(ChainError) as info:
            await arc.broadcast(tx.to_beef())
        with pytest.raises(ChainError):
            await arc.status(tx.txid())
    assert info.value.kind == "unreachable"


async def test_pending_status_and_a_configurable_bar(fake: Fake) -> None:
    _, tx = payment()
    fake.reply(200, arc_status(tx.txid(), "STORED"))
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.broadcast(tx.to_beef())
    assert (result.accepted, result.rejected, result.pending, result.reason) == (
        False,
        False,
        True,
        "pending",
    )
    async with ArcBroadcaster(fake.url, accepted_statuses=ACCEPTED_STATUSES | {"STORED"}) as arc:
        assert (await arc.broadcast(tx.to_beef())).accepted


async def test_status_of_a_mined_transaction(fake: Fake) -> None:
    _, tx = payment()
    block = "0000000000000aac89fbed163ed60061ba33bc0ab9de8e7fd8b34ad94c2414cd"
    fake.reply(
        200,
        arc_status(
            tx.txid(), "MINED", blockHash=block, blockHeight=736228, merklePath="fe54251800"
        ),
    )
    async with ArcBroadcaster(fake.url, api_key="k", callback_url="https://cb.example") as arc:
        result = await arc.status(tx.txid().upper())
    assert result.accepted and result.status == "MINED"
    assert (result.block_height, result.block_hash, result.merkle_path) == (
        736228,
        block,
        "fe54251800",
    )
    [req] = fake.seen
    assert (req.method, req.path) == ("GET", f"/v1/tx/{tx.txid()}")
    assert req.headers["Authorization"] == "Bearer k"
    assert "X-WaitFor" not in req.headers and "X-CallbackUrl" not in req.headers


async def test_status_of_an_unknown_transaction(fake: Fake) -> None:
    fake.reply(404, arc_error(404, "Not found", None, "transaction not found"))
    async with ArcBroadcaster(fake.url) as arc:
        result = await arc.status("ab" * 32)
    assert (result.pending, result.reason, result.code, result.txid) == (
        True,
        "not-found",
        404,
        "ab" * 32,
    )


async def test_session_ownership(fake: Fake) -> None:
    _, tx = payment()
    fake.reply(200, arc_status(tx.txid(), "SEEN_ON_NETWORK"))
    async with aiohttp.ClientSession() as shared:
        arc = ArcBroadcaster(fake.url, session=shared)
        await arc.broadcast(tx.to_beef())
        await arc.close()
        assert not shared.closed  # borrowed, so not ours to close
        await arc.status(tx.txid())  # and still the one used after close()
        assert arc._http._session is shared

    arc = ArcBroadcaster(fake.url)
    await arc.status(tx.txid())
    await arc.status(tx.txid())
    own = arc._http._session
    assert own is not None and not own.closed
    await arc.close()
    assert own.closed


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        ArcBroadcaster("http://127.0.0.1:1", max_timeout=10, timeout=10)
    with pytest.raises(ValueError):
        ArcBroadcaster("http://127.0.0.1:1", wait_for="seen on network\r\nX-Evil: 1")


async def test_bad_arguments_never_reach_the_network() -> None:
    arc = ArcBroadcaster(closed_port_url())
    for bad in (b"", "", " ", "not hex", b"\x01\x01\x01\x01" + b"\x00" * 32):
        with pytest.raises(ValueError):
            await arc.broadcast(bad)
    with pytest.raises(ValueError):
        await arc.status("../policy")
    await arc.close()


def test_status_mapping() -> None:
    table = {
        "MINED": (True, False, ""),
        "SEEN_ON_NETWORK": (True, False, ""),
        "ACCEPTED_BY_NETWORK": (True, False, ""),
        "DOUBLE_SPEND_ATTEMPTED": (False, True, "double-spend"),
        "REJECTED": (False, True, "rejected"),
        "SEEN_IN_ORPHAN_MEMPOOL": (False, False, "orphan"),
        "MINED_IN_STALE_BLOCK": (False, False, "stale-block"),
        "STORED": (False, False, "pending"),
        "QUEUED": (False, False, "pending"),
        "SENT_TO_NETWORK": (False, False, "pending"),
        "SOMETHING_NEW": (False, False, "unknown-status"),
    }
    for status, outcome in table.items():
        assert classify_status(status) == outcome, status
    assert classify_status("SEEN_ON_NETWORK", accepted=frozenset({"MINED"})) == (
        False,
        False,
        "pending",
    )


def test_protocols() -> None:
    assert isinstance(ArcBroadcaster("http://127.0.0.1:1"), Broadcaster)
    for tracker in (
        BlockHeadersTracker("http://127.0.0.1:1"),
        DevnetTracker("http://127.0.0.1:1"),
        CachingTracker(Tracker()),
    ):
        assert isinstance(tracker, ChainTracker)


# --- Block Headers Service -----------------------------------------------------------

TOKEN = "mQZQ6WmxURxWz5ch"


@dataclass
class Headers:
    url: str = ""
    roots: dict[int, str] = field(default_factory=dict)
    tip: int = 0
    requests: list[tuple[str, Any]] = field(default_factory=list)
    list_answer: bool = False  # answer verify as swagger.json says (an array)


@pytest.fixture
async def bhs() -> AsyncIterator[Headers]:
    """Answers as block-headers-service's handlers and bhserrors do."""
    state = Headers()

    def authorised(request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    def unauthorised() -> web.Response:
        return web.json_response(
            {"code": "ErrInvalidAccessToken", "message": "invalid access token"}, status=401
        )

    async def verify(request: web.Request) -> web.Response:
        if not authorised(request):
            return unauthorised()
        items = json.loads(await request.read())
        state.requests.append((request.path, items))
        confirmations = []
        for item in items:
            height, root = item["blockHeight"], item["merkleRoot"]
            if height > state.tip:
                verdict = "UNABLE_TO_VERIFY"
            else:
                verdict = "CONFIRMED" if state.roots.get(height) == root else "INVALID"
            confirmations.append(
                {
                    "blockHash": "00" * 32,
                    "blockHeight": height,
                    "merkleRoot": root,
                    "confirmation": verdict,
                }
            )
        order = ["CONFIRMED", "UNABLE_TO_VERIFY", "INVALID"]
        worst = max((c["confirmation"] for c in confirmations), key=order.index)
        answer = {"confirmationState": worst, "confirmations": confirmations}
        return web.json_response([answer] if state.list_answer else answer)

    async def tip(request: web.Request) -> web.Response:
        if not authorised(request):
            return unauthorised()
        state.requests.append((request.path, None))
        return web.json_response(
            {
                "header": {"hash": "00" * 32, "version": 536870912, "merkleRoot": "11" * 32},
                "state": "LONGEST_CHAIN",
                "chainWork": 2**200,
                "height": state.tip,
            }
        )

    app = web.Application()
    app.router.add_post("/api/v1/chain/merkleroot/verify", verify)
    app.router.add_get("/api/v1/chain/tip/longest", tip)
    runner, state.url = await start(app)
    yield state
    await runner.cleanup()


def mined_payment(bhs: Headers) -> tuple[Transaction, Tracker]:
    """A payment whose parent is mined at height 100 in a block the fake BHS knows."""
    known = Tracker()
    parent = funding(OWNER, 10_000, known, height=100)
    bhs.roots.update(known.roots)
    bhs.tip = 120
    return parent, known


async def test_block_headers_service_verifies_roots(bhs: Headers) -> None:
    parent, known = mined_payment(bhs)
    root = known.roots[100]
    tracker = BlockHeadersTracker(bhs.url, api_key=TOKEN)
    assert await tracker.is_valid_root_for_height(root.upper(), 100)
    assert not await tracker.is_valid_root_for_height("22" * 32, 100)  # INVALID
    assert not await tracker.is_valid_root_for_height(root, 101)  # INVALID
    assert not await tracker.is_valid_root_for_height(root, 500)  # UNABLE_TO_VERIFY
    assert await tracker.current_height() == 120
    # bsv-sdk code accepts our tracker as its ChainTracker.
    assert parent.merkle_path is not None
    assert await parent.merkle_path.verify(parent.txid(), tracker)
    await tracker.close()
    assert bhs.requests[0] == (
        "/api/v1/chain/merkleroot/verify",
        [{"merkleRoot": root, "blockHeight": 100}],
    )


async def test_block_headers_service_array_answer(bhs: Headers) -> None:
    _, known = mined_payment(bhs)
    bhs.list_answer = True
    async with aiohttp.ClientSession() as session:
        tracker = BlockHeadersTracker(bhs.url, api_key=TOKEN, session=session)
        assert await tracker.is_valid_root_for_height(known.roots[100], 100)
        assert not await tracker.is_valid_root_for_height("22" * 32, 100)


async def test_block_headers_service_failures(bhs: Headers) -> None:
    _, known = mined_payment(bhs)
    wrong_key = BlockHeadersTracker(bhs.url, api_key="nope")
    with pytest.raises(ChainError) as info:
        await wrong_key.is_valid_root_for_height(known.roots[100], 100)
    assert info.value.kind == "unauthorized"
    with pytest.raises(ChainError):
        await wrong_key.current_height()
    await wrong_key.close()

    down = BlockHeadersTracker(closed_port_url(), api_key=TOKEN, timeout=2)
    with pytest.raises(ChainError) as info:
        await down.current_height()
    assert info.value.kind == "unreachable"
    await down.close()


async def test_junk_roots_are_refused_without_a_request(bhs: Headers) -> None:
    tracker = BlockHeadersTracker(bhs.url, api_key=TOKEN)
    for root, height in [("zz" * 32, 1), ("ab" * 31, 1), ("ab" * 32, -1), ("ab" * 32, True)]:
        assert not await tracker.is_valid_root_for_height(root, height)
    assert bhs.requests == []
    await tracker.close()


async def test_unexpected_headers_answer(fake: Fake) -> None:
    fake.reply(200, {"confirmationState": "MAYBE", "confirmations": []})
    tracker = BlockHeadersTracker(fake.url)
    with pytest.raises(ChainError) as info:
        await tracker.is_valid_root_for_height("ab" * 32, 5)
    assert info.value.kind == "bad-response"
    # CONFIRMED must be about what we asked.
    other = {"merkleRoot": "cd" * 32, "blockHeight": 5, "confirmation": "CONFIRMED"}
    fake.reply(200, {"confirmationState": "CONFIRMED", "confirmations": [other]})
    with pytest.raises(ChainError):
        await tracker.is_valid_root_for_height("ab" * 32, 5)
    fake.reply(500, {"code": "error-unknown", "message": "Internal server error"})
    with pytest.raises(ChainError) as info:
        await tracker.current_height()
    assert info.value.kind == "server-error"
    await tracker.close()


# --- devnet --------------------------------------------------------------------------


async def test_devnet_tracker(fake: Fake) -> None:
    _, known = mined_payment(Headers())
    root = known.roots[100]

    async def devnet(request: web.Request, _: bytes) -> web.Response:
        if request.path == "/headers/tip":
            return web.json_response({"height": 101, "hash": "00" * 32})
        query = request.query
        valid = query["root"] == root and query["height"] == "100"
        return web.json_response({"valid": valid})

    fake.answer = devnet
    tracker = DevnetTracker(fake.url)
    assert await tracker.is_valid_root_for_height(root, 100)
    assert not await tracker.is_valid_root_for_height(root, 99)
    assert await tracker.current_height() == 101
    assert fake.seen[0].path == f"/merkle-root/verify?root={root}&height=100"

    fake.reply(200, {"valid": "yes"})
    with pytest.raises(ChainError):
        await tracker.is_valid_root_for_height(root, 100)
    await tracker.close()


# --- the cache -----------------------------------------------------------------------


@dataclass
class Upstream:
    """An in-process tracker that counts calls and can be slow or broken."""

    roots: dict[int, str] = field(default_factory=dict)
    height: int = 7
    calls: int = 0
    height_calls: int = 0
    delay: float = 0.01
    error: Exception | None = None

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.roots.get(height) == root

    async def current_height(self) -> int:
        self.height_calls += 1
        await asyncio.sleep(self.delay)
        return self.height


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ROOT = "ab" * 32


async def test_cache_coalesces_concurrent_lookups() -> None:
    upstream = Upstream(roots={5: ROOT})
    cache = CachingTracker(upstream)
    answers = await asyncio.gather(*(cache.is_valid_root_for_height(ROOT, 5) for _ in range(100)))
    assert answers == [True] * 100 and upstream.calls == 1
    assert await cache.is_valid_root_for_height(ROOT.upper(), 5)  # cached, any case
    assert upstream.calls == 1 and cache.upstream_calls == 1


async def test_cache_over_the_block_headers_service(bhs: Headers) -> None:
    _, known = mined_payment(bhs)
    cache = CachingTracker(BlockHeadersTracker(bhs.url, api_key=TOKEN))
    lookups = [cache.is_valid_root_for_height(known.roots[100], 100) for _ in range(100)]
    assert all(await asyncio.gather(*lookups))
    await cache.close()
    assert len(bhs.requests) == 1


async def test_negative_answers_expire() -> None:
    clock = Clock()
    upstream = Upstream()
    cache = CachingTracker(upstream, negative_ttl=30, clock=clock)
    assert not await cache.is_valid_root_for_height(ROOT, 5)
    upstream.roots[5] = ROOT  # the block arrives upstream
    clock.now += 29
    assert not await cache.is_valid_root_for_height(ROOT, 5)  # still remembered
    assert upstream.calls == 1
    clock.now += 2
    assert await cache.is_valid_root_for_height(ROOT, 5)
    assert upstream.calls == 2
    clock.now += 10_000
    assert await cache.is_valid_root_for_height(ROOT, 5)  # positives never expire
    assert upstream.calls == 2


async def test_cache_is_lru_bounded() -> None:
    roots = {h: f"{h:064x}" for h in range(4)}
    upstream = Upstream(roots=roots, delay=0)
    cache = CachingTracker(upstream, max_entries=3)
    for h in range(3):
        assert await cache.is_valid_root_for_height(roots[h], h)
    assert await cache.is_valid_root_for_height(roots[0], 0)  # 0 is now most recent
    assert await cache.is_valid_root_for_height(roots[3], 3)  # evicts 1
    assert cache.size == 3 and upstream.calls == 4
    assert await cache.is_valid_root_for_height(roots[0], 0)
    assert upstream.calls == 4
    assert await cache.is_valid_root_for_height(roots[1], 1)  # evicted: asked again
    assert upstream.calls == 5

    for h in range(10, 20):  # negatives are bounded too
        assert not await cache.is_valid_root_for_height(ROOT, h)
    assert cache.size <= 6


async def test_errors_reach_every_waiter_and_are_not_cached() -> None:
    upstream = Upstream(roots={5: ROOT}, error=ChainError("timeout", "slow"))
    cache = CachingTracker(upstream)
    results = await asyncio.gather(
        *(cache.is_valid_root_for_height(ROOT, 5) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, ChainError) for r in results) and upstream.calls == 1
    upstream.error = None
    assert await cache.is_valid_root_for_height(ROOT, 5)
    assert upstream.calls == 2


async def test_one_cancelled_waiter_does_not_cancel_the_others() -> None:
    upstream = Upstream(roots={5: ROOT}, delay=0.05)
    cache = CachingTracker(upstream)
    first = asyncio.ensure_future(cache.is_valid_root_for_height(ROOT, 5))
    second = asyncio.ensure_future(cache.is_valid_root_for_height(ROOT, 5))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second
    assert first.cancelled() and upstream.calls == 1


async def test_current_height_is_cached_briefly() -> None:
    clock = Clock()
    upstream = Upstream(height=7)
    cache = CachingTracker(upstream, height_ttl=1.5, clock=clock)
    assert await asyncio.gather(*(cache.current_height() for _ in range(20))) == [7] * 20
    assert upstream.height_calls == 1
    upstream.height = 8
    clock.now += 1
    assert await cache.current_height() == 7
    clock.now += 1
    assert await cache.current_height() == 8
    assert upstream.height_calls == 2
