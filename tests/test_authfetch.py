"""BRC-105 through the SDK's own AuthFetch: the official server as the control, then Farebox.

The client is @bsv/sdk 2.1.0's `AuthFetch` with a real @bsv/wallet-toolbox wallet
on the devnet as its wallet (tests/interop/toolbox.mjs, op `authfetch`): it does
the BRC-103 handshake on `POST /.well-known/auth`, signs every request, and on a
402 carrying `x-bsv-payment-version: 1.0` pays by itself with the wallet's
`createAction` and retries with an `x-bsv-payment` header. Crafted payments
(underpaid, paying another key, the payment at output 1, replayed) are built the
way AuthFetch builds one (op `brc105payment`) and sent by the same AuthFetch,
which signs the x-bsv-* headers its caller gives it.

The same client script (`client_scenario`) runs first against the official server,
express + @bsv/auth-express-middleware 2.0.5 + @bsv/payment-express-middleware
2.0.2 (tests/interop/control_server.mjs, its wallet a toolbox wallet on the same
devnet): if it fails there, the harness is wrong, not Farebox. Then against
`farebox serve` on the devnet, which must also keep what the reference server does
not: a grant bound to the client's identity key (AuthFetch pays on every 402, so a
grant saves its users money), the amount checked, the payment output searched for,
a transaction never taken twice.

AuthFetch answers its caller with the signed x-bsv-* headers only; every HTTP
exchange (handshake included) is recorded by tests/interop/wire.mjs and comes back
as `wire`. Harness: tests/toolbox_support.py; skipped only when node is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.devnet import Devnet
from tests.conftest import Upstream
from tests.farebox_process import run, serve
from tests.toolbox_support import INTEROP, Toolbox, ToolboxError, require_node, toolbox

PRICE = 100  # satoshis, on both servers
FUNDS = 30_000
CONTROL = INTEROP / "control_server.mjs"
START_TIMEOUT = 30


@pytest.fixture(scope="session")
def node() -> str:
    return require_node()


# --- the two servers ----------------------------------------------------------------------------


@dataclass
class Server:
    """A BRC-105 server under test: its base URL and BRC-103 identity key."""

    base: str
    identity_key: str
    stderr: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def control_server(node: str, devnet_url: str) -> AsyncIterator[Server]:
    """The official express middlewares on a free port (tests/interop/control_server.mjs)."""
    proc = await asyncio.create_subprocess_exec(
        node, str(CONTROL), devnet_url, str(PRICE),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=INTEROP,
        env={**os.environ, "TOOLBOX_VERBOSE": "1"},
    )  # fmt: skip
    server = Server("", "")

    async def drain() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            server.stderr.append(line.decode(errors="replace").rstrip())

    drained = asyncio.ensure_future(drain())
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        if not line:
            await asyncio.sleep(0.2)
            raise AssertionError("control_server.mjs exited:\n" + "\n".join(server.stderr[-30:]))
        ready = json.loads(line)
        assert ready["price"] == PRICE, ready
        server.base, server.identity_key = ready["url"], ready["identityKey"]
        yield server
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # it stops when its stdin closes
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(drained, 5)


def farebox_args(tmp_path: Path, upstream: Upstream, devnet: str) -> tuple[list[str], str]:
    """`farebox serve` arguments for the same routes as the control's, and the server key."""
    key = tmp_path / "server.key"
    server_pub = run("keys", "generate", "--out", str(key)).stdout.split("public key: ")[1].strip()
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        f"services:\n  shop:\n    description: BRC-105 interop\n    upstream: {upstream.url}\n"
        "    routes:\n"
        "      - path: /free\n        price: free\n        description: Free for everyone\n"
        f"      - path: /priced/{{item}}\n        price: {PRICE}\n"
        "        grant: {lasts: 1h, covers: resource}\n"
        "        description: One item, readable again for an hour\n"
    )
    args = [
        "--policies", str(folder), "--key-file", str(key), "--port", "0",
        "--devnet-url", devnet, "--token-keys", str(tmp_path / "tk"),
    ]  # fmt: skip
    return args, server_pub


@contextlib.asynccontextmanager
async def farebox(tmp_path: Path, upstream: Upstream, devnet_url: str) -> AsyncIterator[Server]:
    args, server_pub = farebox_args(tmp_path, upstream, devnet_url)
    async with serve(*args) as gw:
        yield Server(gw.base, server_pub, gw.lines)


# --- the client ---------------------------------------------------------------------------------


async def authfetch(wallet: Toolbox, url: str, **args: Any) -> dict[str, Any]:
    """One AuthFetch request: its result, or {"error", "wire", "txids", "payments"} when
    AuthFetch threw (what its user would see), so that tests can read the wire either way."""
    try:
        return await wallet.call("authfetch", url=url, **args)
    except ToolboxError as exc:
        if "wire" not in exc.details:
            raise
        return {"error": exc.answer["error"], **exc.details}


def explain(answer: dict[str, Any]) -> str:
    """An AuthFetch answer for an assertion message: the error and the wire, shortened."""
    lines = [f"error: {answer['error']}"] if "error" in answer else [f"status {answer['status']}"]
    for exchange in answer.get("wire", []):
        headers = {
            k: v
            for k, v in (exchange.get("headers") or {}).items()
            if k.startswith("x-bsv-payment") or k == "content-type"
        }
        lines.append(
            f"  {exchange['method']} {exchange['path']} -> {exchange.get('status', exchange.get('error'))}"
            f" {headers} {str(exchange.get('body'))[:300]}"
        )
    return "\n".join(lines)


def ok(answer: dict[str, Any], status: int = 200) -> dict[str, Any]:
    assert "error" not in answer, explain(answer)
    assert answer["status"] == status, explain(answer)
    return answer


def body_json(answer: dict[str, Any]) -> Any:
    return json.loads(answer["body"])


async def client_scenario(wallet: Toolbox, server: Server) -> dict[str, dict[str, Any]]:
    """The same client script for every server: a free page, then a priced one, by AuthFetch."""
    free = await authfetch(wallet, f"{server.base}/free")
    priced = await authfetch(wallet, f"{server.base}/priced/1")
    return {"free": free, "priced": priced}


def check_scenario(happened: dict[str, dict[str, Any]], server: Server, chain: Devnet) -> str:
    """What both servers must give the scenario's client; the txid of its payment."""
    free = ok(happened["free"])
    assert not free["paid"] and free["txids"] == [], explain(free)
    assert body_json(free)["path"] == "/free"
    assert free["headers"]["x-bsv-auth-identity-key"] == server.identity_key
    # The handshake came first, on the well-known endpoint, and worked.
    handshake = free["wire"][0]
    assert handshake["method"] == "POST" and handshake["path"] == "/.well-known/auth"
    assert handshake["status"] == 200, explain(happened["free"])
    assert json.loads(handshake["body"])["messageType"] == "initialResponse"

    priced = ok(happened["priced"])
    assert priced["paid"], explain(priced)
    [txid] = priced["txids"]
    assert body_json(priced)["path"] == "/priced/1"
    assert priced["headers"]["x-bsv-payment-satoshis-paid"] == str(PRICE)
    # On the wire: a signed 402 with the BRC-105 terms, then the paid retry (no new handshake).
    asked, paid = priced["wire"]
    assert asked["status"] == 402 and "x-bsv-payment" not in asked["requestHeaders"]
    terms = asked["headers"]
    assert terms["x-bsv-payment-version"] == "1.0"
    assert terms["x-bsv-payment-satoshis-required"] == str(PRICE)
    assert terms["x-bsv-payment-derivation-prefix"]
    assert terms["x-bsv-auth-identity-key"] == server.identity_key and terms["x-bsv-auth-signature"]
    [payment] = priced["payments"]
    assert payment["txid"] == txid
    assert payment["derivationPrefix"] == terms["x-bsv-payment-derivation-prefix"]
    assert paid["requestHeaders"]["x-bsv-payment"] == payment["header"]
    assert paid["status"] == 200
    # The wallet posted its payment before sending it (acceptDelayedBroadcast: false).
    status = chain.status(txid)
    assert status is not None and str(status.status) == "SEEN_ON_NETWORK"
    return txid


async def send(wallet: Toolbox, url: str, payment: dict[str, Any]) -> dict[str, Any]:
    """AuthFetch with a crafted payment's header (AuthFetch signs it with the request)."""
    return await authfetch(wallet, url, headers={"x-bsv-payment": payment["header"]})


async def terms_for(wallet: Toolbox, url: str) -> dict[str, str]:
    """A priced page's 402 terms, AuthFetch told not to pay (`pay: false`)."""
    asked = ok(await authfetch(wallet, url, pay=False), 402)
    assert not asked["paid"], explain(asked)
    return asked["headers"]


async def crafted(wallet: Toolbox, url: str, **args: Any) -> dict[str, Any]:
    """An x-bsv-payment for `url` on that page's own terms, built by the wallet (brc105payment)."""
    terms = await terms_for(wallet, url)
    return await wallet.call(
        "brc105payment",
        serverIdentityKey=terms["x-bsv-auth-identity-key"],
        derivationPrefix=terms["x-bsv-payment-derivation-prefix"],
        **{"satoshis": PRICE, **args},
    )


# --- the control: the official express middlewares ----------------------------------------------


async def test_authfetch_pays_the_official_server(node: str, devnet_http) -> None:
    url, chain = devnet_http
    async with toolbox(node, url) as wallet, control_server(node, url) as server:
        await wallet.call("fund", satoshis=FUNDS)
        happened = await client_scenario(wallet, server)
        txid = check_scenario(happened, server, chain)
        # The reference server took the payment into its wallet (internalizeAction).
        priced = body_json(happened["priced"])
        assert priced["accepted"] is True and priced["satoshisPaid"] == PRICE
        assert priced["serverBalance"] == PRICE
        assert priced["identityKey"] == wallet.identity_key
        fee = FUNDS - PRICE - await wallet.balance()
        assert 0 < fee < 100
        # The reference server has no grants: the same page again is paid again.
        again = ok(await authfetch(wallet, f"{server.base}/priced/1"))
        [repaid] = again["txids"]
        assert repaid != txid


async def test_the_official_server_takes_what_farebox_must_refuse(node: str, devnet_http) -> None:
    # What the reference implementation does with crafted payments (PROTOCOLS.md:
    # "never checks the amount, assumes output 0, accepts the same x-bsv-payment
    # again"), and proof that brc105payment builds what it accepts.
    url, _ = devnet_http
    async with toolbox(node, url) as wallet, control_server(node, url) as server:
        await wallet.call("fund", satoshis=FUNDS)

        good = await crafted(wallet, f"{server.base}/priced/2")
        taken = ok(await send(wallet, f"{server.base}/priced/2", good))
        assert not taken["paid"] and body_json(taken)["accepted"] is True
        assert body_json(taken)["serverBalance"] == PRICE

        # Half the price: taken, and the answer claims the full price was paid.
        half = await crafted(wallet, f"{server.base}/priced/3", satoshis=PRICE // 2)
        cheap = ok(await send(wallet, f"{server.base}/priced/3", half))
        assert cheap["headers"]["x-bsv-payment-satoshis-paid"] == str(PRICE)
        assert body_json(cheap)["serverBalance"] == PRICE + PRICE // 2

        # The same payment for another page: taken again, nothing new in its wallet.
        again = ok(await send(wallet, f"{server.base}/priced/6", good))
        assert not again["paid"] and body_json(again)["serverBalance"] == PRICE + PRICE // 2

        # The payment at output 1, and a payment to another key: a 400 (not a 402, so
        # AuthFetch hands it to its caller as it is, and pays nothing more).
        for args, path in (({"outputIndex": 1}, "/priced/4"), ({"wrongOutput": True}, "/priced/5")):
            payment = await crafted(wallet, f"{server.base}{path}", **args)
            refused = ok(await send(wallet, f"{server.base}{path}", payment), 400)
            assert not refused["paid"] and len(refused["wire"]) == 1
            assert body_json(refused)["code"] == "WERR_INVALID_PARAMETER"


# --- Farebox ------------------------------------------------------------------------------------
# These need the BRC-103/104 server and BRC-105 payments in gateway/; until they land
# they fail at the handshake (Farebox has no POST /.well-known/auth).


async def test_authfetch_pays_farebox_once_for_a_grant(
    node: str, tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, chain = devnet_http
    async with toolbox(node, url) as wallet, farebox(tmp_path, upstream, url) as server:
        await wallet.call("fund", satoshis=FUNDS)
        happened = await client_scenario(wallet, server)
        txid = check_scenario(happened, server, chain)
        assert upstream.paths.count("/priced/1") == 1
        balance = await wallet.balance()
        assert 0 < FUNDS - PRICE - balance < 100

        # The grant is bound to the client's identity key: the same page again, no payment.
        again = ok(await authfetch(wallet, f"{server.base}/priced/1"))
        assert not again["paid"] and again["txids"] == [], explain(again)
        assert [e["status"] for e in again["wire"]] == [200]
        assert body_json(again)["path"] == "/priced/1"
        assert await wallet.balance() == balance
        assert upstream.paths.count("/priced/1") == 2
        assert str(chain.status(txid).status) == "SEEN_ON_NETWORK"

        # Another page is another purchase; AuthFetch's wallet left this one unbroadcast
        # (its default, delayed broadcast): Farebox broadcasts it itself.
        other = ok(await authfetch(wallet, f"{server.base}/priced/2", delayedBroadcast=True))
        [delayed] = other["txids"]
        assert delayed not in await wallet.call("posted")
        status = chain.status(delayed)
        assert status is not None and str(status.status) == "SEEN_ON_NETWORK"


async def test_farebox_grant_is_not_anyone_elses(
    node: str, tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, _ = devnet_http
    async with (
        toolbox(node, url) as buyer,
        toolbox(node, url) as stranger,
        farebox(tmp_path, upstream, url) as server,
    ):
        await buyer.call("fund", satoshis=FUNDS)
        bought = ok(await authfetch(buyer, f"{server.base}/priced/1"))
        assert bought["paid"], explain(bought)
        # Another AuthFetch client, another identity key: a 402 for it, not the buyer's grant.
        terms = await terms_for(stranger, f"{server.base}/priced/1")
        assert terms["x-bsv-payment-satoshis-required"] == str(PRICE)
        assert upstream.paths.count("/priced/1") == 1


async def refused(
    wallet: Toolbox, url: str, payment: dict[str, Any], reason: str
) -> dict[str, Any]:
    """Send a crafted x-bsv-payment through AuthFetch (which pays by itself on a 402):
    Farebox's answer to it must be a signed 402 whose problem+json names `reason` and
    carries fresh BRC-105 terms; AuthFetch then pays those, and its user gets the page.
    The crafted payment alone buys nothing."""
    answer = await send(wallet, url, payment)
    assert answer["wire"], explain(answer)
    first = answer["wire"][0]
    assert first["requestHeaders"].get("x-bsv-payment") == payment["header"], explain(answer)
    assert first["status"] == 402, explain(answer)
    problem = json.loads(first["body"])
    assert problem["reason"] == reason, explain(answer)
    assert first["headers"].get("x-bsv-auth-signature"), "the refusal must be signed"
    # Without fresh terms AuthFetch throws "Unsupported x-bsv-payment-version" and its
    # user never learns why: the refusal is a 402 AuthFetch can pay.
    assert first["headers"].get("x-bsv-payment-version") == "1.0", explain(answer)
    assert first["headers"].get("x-bsv-payment-derivation-prefix"), explain(answer)
    # What the user sees: AuthFetch paid once more, with a payment of its own.
    ok(answer)
    assert answer["paid"], explain(answer)
    [repaid] = answer["txids"]
    assert repaid != payment["txid"]
    assert answer["payments"][-1]["txid"] == repaid
    return answer


async def test_farebox_refuses_a_replayed_payment(
    node: str, tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, _ = devnet_http
    async with toolbox(node, url) as wallet, farebox(tmp_path, upstream, url) as server:
        await wallet.call("fund", satoshis=FUNDS)
        # The x-bsv-payment AuthFetch itself paid /priced/1 with, shown for /priced/2.
        bought = ok(await authfetch(wallet, f"{server.base}/priced/1"))
        [payment] = bought["payments"]
        await refused(wallet, f"{server.base}/priced/2", payment, "payment-reused")

        # A crafted payment, taken for /priced/3, then shown for /priced/4.
        crafted3 = await crafted(wallet, f"{server.base}/priced/3")
        taken = ok(await send(wallet, f"{server.base}/priced/3", crafted3))
        assert not taken["paid"], explain(taken)
        await refused(wallet, f"{server.base}/priced/4", crafted3, "payment-reused")
        assert upstream.paths.count("/priced/3") == 1


async def test_farebox_refuses_an_underpaid_payment(
    node: str, tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, _ = devnet_http
    async with toolbox(node, url) as wallet, farebox(tmp_path, upstream, url) as server:
        await wallet.call("fund", satoshis=FUNDS)
        page = f"{server.base}/priced/7"
        payment = await crafted(wallet, page, satoshis=PRICE - 1)
        await refused(wallet, page, payment, "underpaid")


async def test_farebox_refuses_a_payment_to_another_key(
    node: str, tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, _ = devnet_http
    async with toolbox(node, url) as wallet, farebox(tmp_path, upstream, url) as server:
        await wallet.call("fund", satoshis=FUNDS)
        page = f"{server.base}/priced/8"
        payment = await crafted(wallet, page, wrongOutput=True)
        await refused(wallet, page, payment, "wrong-payee")


async def test_farebox_finds_the_payment_at_output_1(
    node: str, tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, chain = devnet_http
    async with toolbox(node, url) as wallet, farebox(tmp_path, upstream, url) as server:
        await wallet.call("fund", satoshis=FUNDS)
        page = f"{server.base}/priced/9"
        payment = await crafted(wallet, page, outputIndex=1)
        assert payment["vout"] == 1
        tx = chain.get_transaction(payment["txid"])
        assert tx is not None and tx.outputs[0].satoshis == PRICE  # another output comes first
        taken = ok(await send(wallet, page, payment))
        assert not taken["paid"], explain(taken)
        assert [e["status"] for e in taken["wire"]] == [200]
        assert taken["headers"]["x-bsv-payment-satoshis-paid"] == str(PRICE)
        assert body_json(taken)["path"] == "/priced/9"
        # And the grant it bought is this client's: read again without paying.
        again = ok(await authfetch(wallet, page))
        assert not again["paid"], explain(again)
