"""The admin API and the public transparency report, checked against real payments.

A real gateway with real signed payments (test tracker, recording
broadcaster); the figures the admin API and the report give must match the
receipts the test created.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from gateway.challenge.paywall import render_report
from gateway.endpoints import admin
from gateway.ledger.tally import Tally, today
from gateway.payments.cashier import Cashier
from gateway.pipeline.credentials import Revocations
from gateway.policy import Match
from gateway.policy.reload import PolicyHolder
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway
from gateway.services import Services
from gateway.store import StoreUnavailable
from gateway.store.memory import MemoryStore
from gateway.store.receipts import Receipt
from gateway.tokens import KeyRing, Tokens
from tests.chainkit import Tracker
from tests.conftest import PAID_SERVER
from tests.test_paid_access import FakeBroadcaster, brc121

TOKEN = "admin-token-for-tests-0123456789"
POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    description: County records archive
    routes:
      - {{path: "/pages/{{n}}", price: 25, grant: {{lasts: 1h}}}}
      - {{path: "/**", price: free}}
  internal:
    upstream: {upstream}
    mount: /internal
    transparency: false
    routes:
      - {{path: "/reports/{{n}}", price: 40}}
"""


@pytest.fixture
async def setup(upstream, tmp_path: Path):
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(POLICY.format(upstream=upstream.url))
    store = MemoryStore()
    tally = Tally(store, every=3600)
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    tracker, broadcaster = Tracker(), FakeBroadcaster()

    def paid(match: Match, receipt: Receipt) -> None:
        tally.add(match.service.name, match.route.scope, payments=1, satoshis=receipt.satoshis)

    cashier = Cashier(
        PAID_SERVER,
        tracker=tracker,
        broadcaster=broadcaster,
        store=store,
        tokens=tokens,
        on_accepted=paid,
    )
    proxy = Proxy(connect_timeout=2, read_timeout=5)
    await proxy.start()
    services = Services(
        PolicyHolder.load(folder),
        PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        store=store,
        revocations=Revocations(store),
        tally=tally,
    )
    gw = assemble_gateway(services, proxy)
    main = web.ServerRunner(web.Server(gw.handle, access_log=None))
    await main.setup()
    await web.TCPSite(main, "127.0.0.1", 0).start()
    side = web.AppRunner(admin.app(services, TOKEN), access_log=None)
    await side.setup()
    await web.TCPSite(side, "127.0.0.1", 0).start()
    yield SimpleNamespace(
        base=f"http://127.0.0.1:{main.addresses[0][1]}",
        admin=f"http://127.0.0.1:{side.addresses[0][1]}",
        tracker=tracker,
        store=store,
        folder=folder,
    )
    await side.cleanup()
    await main.cleanup()
    await proxy.close()


async def call(url: str, *, method: str = "GET", token: str | None = TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, **kw) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


async def pay_pages(setup, *pages: int) -> list[str]:
    txids = []
    for n in pages:
        payment = brc121(setup, 25)
        sent = {k: v for k, v in payment.items() if not k.startswith("_")}
        status, _, _ = await call(f"{setup.base}/archive/pages/{n}", token=None, headers=sent)
        assert status == 200
        txids.append(payment["_txid"])
    return txids


async def test_no_token_no_answer(setup) -> None:
    for token in (None, "wrong-token-wrong-token"):
        status, headers, body = await call(f"{setup.admin}/stats", token=token)
        assert status == 401 and json.loads(body)["reason"] == "admin-token-required"
        assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_admin_errors_are_problems_too(setup) -> None:
    status, headers, body = await call(f"{setup.admin}/nowhere")
    assert status == 404 and headers["Content-Type"].startswith("application/problem+json")
    assert json.loads(body)["reason"] == "no-route"
    status, headers, body = await call(f"{setup.admin}/stats", method="POST")
    assert status == 405 and "GET" in headers["Allow"]
    assert json.loads(body)["reason"] == "method-not-allowed"
    status, _, body = await call(f"{setup.admin}/revoke", method="POST", data=b"[")
    assert status == 400 and json.loads(body)["reason"] == "bad-query"


async def test_stats_and_receipts_match_the_payments(setup) -> None:
    txids = await pay_pages(setup, 1, 2)
    await call(f"{setup.base}/archive/pages/3", token=None)  # a 402
    await call(f"{setup.base}/archive/about", token=None)  # free
    status, _, body = await call(f"{setup.admin}/stats?service=archive")
    assert status == 200
    rows = {r["route"]: r for r in json.loads(body)["rows"]}
    priced = rows["/archive/pages/{n}"]
    assert priced["day"] == today()
    assert (priced["requests"], priced["challenges"], priced["payments"], priced["satoshis"]) == (
        3,
        1,
        2,
        50,
    )
    assert rows["/archive/**"]["requests"] == 1

    status, _, body = await call(f"{setup.admin}/receipts?service=archive")
    found = json.loads(body)["receipts"]
    assert sorted(r["txid"] for r in found) == sorted(txids)
    assert {r["satoshis"] for r in found} == {25}
    assert all(set(r) == set(admin.EXPORTED) for r in found)  # no derivation data, no keys
    status, _, body = await call(f"{setup.admin}/receipts?txid={txids[0]}")
    assert [r["txid"] for r in json.loads(body)["receipts"]] == [txids[0]]
    status, headers, body = await call(f"{setup.admin}/receipts?format=csv&since=2020-01-01")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(body.decode())))
    assert sorted(row["txid"] for row in table) == sorted(txids)
    # Times in ISO 8601 (UTC) for spreadsheets and people; JSON keeps Unix seconds.
    by_txid = {r["txid"]: r for r in found}
    for row in table:
        for column in ("time", "expires"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[column]), row
            when = datetime.fromisoformat(row[column].replace("Z", "+00:00"))
            assert when.timestamp() == by_txid[row["txid"]][column]
    status, _, body = await call(f"{setup.admin}/receipts?until={int(time.time()) - 3600}")
    assert json.loads(body)["receipts"] == []
    status, _, body = await call(f"{setup.admin}/receipts?since=yesterday")
    assert status == 400 and json.loads(body)["reason"] == "bad-query"


async def test_revoke_a_grant(setup) -> None:
    payment = brc121(setup, 25)
    sent = {k: v for k, v in payment.items() if not k.startswith("_")}
    status, headers, _ = await call(f"{setup.base}/archive/pages/5", token=None, headers=sent)
    token = headers["X-Farebox-Token"]
    import jwt

    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    status, _, body = await call(f"{setup.admin}/revoke", method="POST", json={"grant": jti})
    assert status == 200 and json.loads(body)["revoked"] == jti
    await asyncio.sleep(1.1)
    status, _, body = await call(
        f"{setup.base}/archive/pages/5", token=None, headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 402 and json.loads(body)["reason"] == "grant-revoked"
    status, _, body = await call(f"{setup.admin}/revoke", method="POST", json={"nothing": 1})
    assert status == 400


async def test_revoking_a_grant_nobody_was_sold_is_a_404(setup) -> None:
    """A grant id no receipt names is answered 404 (a typo would otherwise look
    done), and revoked all the same: a grant sold before the index existed
    must never stay open because the admin's revoke was refused."""
    status, _, body = await call(f"{setup.admin}/revoke", method="POST", json={"grant": "no-such"})
    assert status == 404 and json.loads(body)["reason"] == "unknown-grant"
    assert await setup.store.revoked("no-such")


async def test_revoking_a_tab_nobody_opened_is_a_404(setup) -> None:
    """A tab id the store does not know is refused, not 'revoked' (a typo would
    otherwise look done); an open tab is revoked."""
    status, _, body = await call(f"{setup.admin}/revoke", method="POST", json={"tab": "no-such"})
    assert status == 404 and json.loads(body)["reason"] == "unknown-tab"
    await setup.store.credit("tab-1", 5_000, "opening")
    status, _, body = await call(f"{setup.admin}/revoke", method="POST", json={"tab": "tab-1"})
    assert status == 200 and json.loads(body)["revoked"] == "tab-1"
    assert await setup.store.revoked("tab-1")


async def test_policy_status_and_reload(setup) -> None:
    status, _, body = await call(f"{setup.admin}/policy")
    first = json.loads(body)
    assert status == 200 and first["last_reload_error"] is None
    assert set(first["services"]) == {"archive", "internal"}
    (setup.folder / "p.yaml").write_text("services: [not a mapping")
    status, _, body = await call(f"{setup.admin}/reload", method="POST")
    answer = json.loads(body)
    assert status == 422 and answer["reloaded"] is False and "p.yaml" in answer["error"]
    assert answer["version"] == first["version"]  # still serving the old one


async def test_transparency_report_shows_revenue_and_txids_never_payers(setup) -> None:
    txids = await pay_pages(setup, 7, 8, 9)
    payment = brc121(setup, 40)
    sent = {k: v for k, v in payment.items() if not k.startswith("_")}
    status, _, _ = await call(f"{setup.base}/internal/reports/1", token=None, headers=sent)
    assert status == 200  # paid, but this service is not in the report
    status, headers, body = await call(f"{setup.base}/.well-known/farebox/transparency", token=None)
    report = json.loads(body)
    assert status == 200 and report["services"] == ["archive"]
    [row] = report["days"]
    assert (row["day"], row["service"], row["payments"], row["satoshis"]) == (
        today(),
        "archive",
        3,
        75,
    )
    assert sorted(row["txids"]) == sorted(txids)
    assert report["totals_satoshis"] == {"archive": 75}
    assert "payer" not in body.decode() and payment["x-bsv-sender"] not in body.decode()
    # A browser gets a page with the same figures.
    status, headers, page = await call(
        f"{setup.base}/.well-known/farebox/transparency",
        token=None,
        headers={"Accept": "text/html"},
    )
    assert headers["Content-Type"].startswith("text/html") and txids[0] in page.decode()
    # In people's words: the service's name, "3 transactions" (and "1 transaction"),
    # tables that scroll inside a phone's width rather than widening the page (and
    # the days' rows become cards there: tests/test_accessibility.py looks).
    text = page.decode()
    assert "<td>County records archive</td>" in text and "<td>archive</td>" not in text
    assert "3 transactions</summary>" in text and "txids</summary>" not in text
    assert text.count('<div class="scroll"><table') == text.count("<table")
    one = {"since": "d", "until": "d", "note": "", "truncated": False, "payouts": [],
           "totals_satoshis": {"s": 5},
           "days": [{"day": "d", "service": "s", "payments": 1, "satoshis": 5, "txids": ["ab"]}]}  # fmt: skip
    assert "1 transaction</summary>" in render_report(one)
    status, _, _ = await call(f"{setup.base}/.well-known/farebox/transparency?days=0", token=None)
    assert status == 400


async def test_metrics_count_requests_payments_and_refusals(setup) -> None:
    from gateway.edge import metrics

    side = web.AppRunner(
        admin.app(SimpleNamespace(), TOKEN, metrics.handler),  # type: ignore[arg-type]
        access_log=None,
    )
    await side.setup()
    await web.TCPSite(side, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{side.addresses[0][1]}/metrics"
    try:

        def value(text: str, line_start: str) -> float:
            for line in text.splitlines():
                if line.startswith(line_start):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        _, _, before = await call(url)
        await pay_pages(setup, 11)
        bad = brc121(setup, 5)  # underpaid
        sent = {k: v for k, v in bad.items() if not k.startswith("_")}
        await call(f"{setup.base}/archive/pages/12", token=None, headers=sent)
        status, headers, after = await call(url)
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        b, a = before.decode(), after.decode()
        key = 'farebox_payments_total{reason="",result="accepted",service="archive"}'
        assert value(a, key) == value(b, key) + 1
        refused = 'farebox_payments_total{reason="underpaid",result="refused",service="archive"}'
        assert value(a, refused) == value(b, refused) + 1
        sats = 'farebox_satoshis_total{service="archive"}'
        assert value(a, sats) == value(b, sats) + 25
        ok = 'farebox_requests_total{route="/archive/pages/{n}",service="archive",status="200"}'
        assert value(a, ok) >= value(b, ok) + 1
        assert "farebox_request_duration_seconds_bucket" in a
        assert (await call(url, token=None))[0] == 401
    finally:
        await side.cleanup()


async def test_readiness_details_stay_on_the_admin_listener(setup) -> None:
    setup.store.ping = _failing_ping  # the store's outage, with its address in the error
    async with aiohttp.ClientSession() as http, http.get(f"{setup.base}/readyz") as r:
        assert r.status == 503
        assert await r.json() == {"status": "not-ready"}
    status, _, body = await call(f"{setup.admin}/ready")
    assert status == 503
    assert "redis://10.0.0.7:6379" in json.loads(body)["store"]


async def _failing_ping() -> None:
    raise StoreUnavailable("redis://10.0.0.7:6379: connection refused")
