"""The admin API: its own listener (loopback by default), a bearer token.

    GET  /stats?since=DAY&until=DAY&service=S        counters per service, route, day
    GET  /receipts?since=&until=&service=&txid=&limit=&after=&format=json|csv
    GET  /refunds?since=&txid=&limit=&after=&format=json|csv
                                                      checkout payments to refund or honour
    POST /refunds/settle  {"txid": TXID[:VOUT], "how": "refunded"|"honoured"}
    POST /revoke   {"grant": ID} or {"tab": ID} [, "until": UNIX]; 404 for an id
                   the store does not know (a grant: revoked all the same)
    GET  /payouts?status=&campaign=&limit=&format=json|csv
                                                      payouts (rewards) by state, with whom
    GET  /treasury                                    the payout treasury's balance, what is
                                                      owed, and a low-balance flag
    GET  /policy                                      version, files, last reload error
    GET  /ready                                       readiness with the store's state or error
    POST /reload                                      reload the policy now
    GET  /metrics                                     Prometheus (gateway.metrics)

Times asked for are Unix seconds or ISO dates/datetimes (UTC); times
answered are Unix seconds in JSON, ISO 8601 (UTC) in CSV. Every answer is
JSON (or CSV), every error problem+json; without the token, 401. Receipts leave
out the derivation data kept for sweeping (the payer's key): an export
names a payer only by the hash the upstream also sees.

The refund list (store/refunds.py) holds checkout payments that bought
nothing anybody collected: paid after the checkout expired (with a receipt
and an uncollected grant), too little, twice, for what is no longer sold,
or already in a block when found, or by a transaction that had bought
something else. Each entry is one output: `txid=` lists every entry of a
transaction (one may pay several checkouts), `txid=TXID:VOUT` the one of that
output, and `next`/`after` page by "txid:vout". Settling one records that the
admin refunded or honoured it; it stays listed. It is named by "txid:vout",
or by its txid alone when that names one entry (409 `refund-ambiguous`,
listing the outpoints, when it names several). Settled `refunded`, the grant
the payment bought (an `unclaimed` entry's `grant_id`) is revoked as
POST /revoke does, and its checkout answers "refunded" instead of the grant;
`honoured` keeps the grant. A 503 after settling: send the same again (the
409 answer finishes the revocation). Txids are 64 hex digits, matched in
lower case.
"""

from __future__ import annotations

import csv
import hmac
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.edge.problems import answer, problem
from gateway.edge.protocol import SERVER
from gateway.endpoints.public import readiness
from gateway.services import Services
from gateway.store import StoreUnavailable
from gateway.store.refunds import HONOURED, REFUNDED, Refund

EXPORTED = (
    "txid",
    "vout",
    "satoshis",
    "service",
    "resource",
    "method",
    "grant_id",
    "time",
    "expires",
    "payer",
)
REVOKE_FOR = 400 * 86400  # default: longer than any grant or tab token lasts
MAX_LIMIT = 10_000
TXID = re.compile(r"[0-9a-f]{64}")
VOUT = re.compile(r"[0-9]{1,10}")

log = logging.getLogger("farebox.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICES: web.AppKey[Services] = web.AppKey("services")


class BadQuery(ValueError):
    pass


def load_token(value: str | None, file: Path | None) -> str | None:
    """The admin token from the setting or its file; None: the admin API stays off."""
    if value:
        token = value.strip()
    elif file is not None:
        try:
            token = file.read_text().strip()
        except OSError as exc:
            raise SystemExit(
                f"farebox: cannot read admin token file {file}: {exc.strerror}"
            ) from None
    else:
        return None
    if len(token) < 16:
        raise SystemExit("farebox: the admin token must be at least 16 characters")
    return token


def app(services: Services, token: str, metrics: Handler | None = None) -> web.Application:
    """The admin application: every route behind the bearer token; errors as problem+json."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        if not (
            given[:7].lower() == "bearer "
            and hmac.compare_digest(given[7:].strip().encode(), token.encode())
        ):
            return problem(
                401,
                "admin-token-required",
                "Unauthorized",
                "send the admin token as Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="farebox-admin"'},
            )
        return await handler(request)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """The admin listener's one error mapping: every failure as problem+json."""
        try:
            return await handler(request)
        except ValueError as exc:  # BadQuery, and the store's refusals (bad cursor, span)
            return problem(400, "bad-query", "Bad request", str(exc))
        except StoreUnavailable:
            return problem(
                503,
                "store-unavailable",
                "Store unavailable",
                "try again shortly",
                headers={"Retry-After": "5"},
            )
        except web.HTTPException as exc:  # the router's 404 and 405
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            reason = {404: "no-route", 405: "method-not-allowed"}.get(exc.status, "bad-request")
            return problem(
                exc.status, reason, exc.reason, f"{request.method} {request.path}", headers=headers
            )
        except Exception:
            log.exception("admin request failed")
            return problem(500, "internal-error", "Internal error", "see the gateway's log")

    application = web.Application(middlewares=[errors, guard])
    application.on_response_prepare.append(_server_header)
    application[SERVICES] = services
    application.router.add_get("/stats", stats)
    application.router.add_get("/receipts", receipts)
    application.router.add_get("/refunds", refunds)
    application.router.add_post("/refunds/settle", settle_refund)
    application.router.add_post("/revoke", revoke)
    application.router.add_get("/payouts", payouts)
    application.router.add_get("/treasury", treasury)
    application.router.add_get("/policy", policy)
    application.router.add_post("/reload", reload)
    application.router.add_get("/ready", ready)
    if metrics is not None:
        application.router.add_get("/metrics", metrics)
    return application


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER  # no versions (aiohttp would name its own)


def _gw(request: web.Request) -> Services:
    return request.app[SERVICES]


def parse_time(value: str | None, name: str) -> int | None:
    """Unix seconds, or an ISO date / datetime (UTC when no zone is given)."""
    if value is None or value == "":
        return None
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadQuery(f"{name}: {value!r} is not Unix seconds or an ISO date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def parse_day(value: str | None, name: str, default: str) -> str:
    if not value:
        return default
    try:
        return datetime.strptime(value, "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError:
        raise BadQuery(f"{name}: {value!r} is not a day (YYYY-MM-DD)") from None


def _days_ago(n: int) -> str:
    return (datetime.now(UTC) - timedelta(days=n)).strftime("%Y-%m-%d")


def parse_txid(value: str, name: str) -> str:
    """A txid in lower case; BadQuery for anything but 64 hex digits."""
    txid = value.strip().lower()
    if not TXID.fullmatch(txid):
        raise BadQuery(f"{name}: a txid is 64 hex digits")
    return txid


def parse_outpoint(value: str, name: str) -> tuple[str, int | None]:
    """(txid, vout) of "TXID:VOUT", or (txid, None) of a bare "TXID"; BadQuery otherwise."""
    txid, colon, vout = value.strip().partition(":")
    if colon and not VOUT.fullmatch(vout):
        raise BadQuery(f"{name}: an output is named TXID:VOUT, VOUT a whole number")
    return parse_txid(txid, name), int(vout) if colon else None


async def stats(request: web.Request) -> web.Response:
    gw = _gw(request)
    assert gw.store is not None
    since = parse_day(request.query.get("since"), "since", _days_ago(30))
    until = parse_day(request.query.get("until"), "until", _days_ago(0))
    if gw.tally is not None:
        await gw.tally.flush()  # this worker's latest counts too
    rows = await gw.store.stats(
        since_day=since, until_day=until, service=request.query.get("service") or None
    )
    return answer(
        {
            "since": since,
            "until": until,
            "rows": [
                {"day": r.day, "service": r.service, "route": r.route, **r.counters} for r in rows
            ],
        }
    )


async def receipts(request: web.Request) -> web.StreamResponse:
    gw = _gw(request)
    assert gw.store is not None
    q = request.query
    try:
        limit = min(int(q.get("limit", "1000")), MAX_LIMIT)
    except ValueError:
        raise BadQuery("limit must be a number") from None
    if limit < 1:
        raise BadQuery("limit must be at least 1")
    txid = q.get("txid") or None
    found = await gw.store.receipts(
        since=parse_time(q.get("since"), "since"),
        until=parse_time(q.get("until"), "until"),
        service=q.get("service") or None,
        txid=None if txid is None else parse_txid(txid, "txid"),
        limit=limit,
        after=q.get("after") or None,
    )
    rows = [{name: getattr(r, name) for name in EXPORTED} for r in found]
    if q.get("format", "json") == "csv":
        return csv_answer(rows, EXPORTED, "farebox-receipts.csv")
    if q.get("format", "json") != "json":
        raise BadQuery("format is json or csv")
    body: dict[str, Any] = {"receipts": rows}
    if len(rows) == limit and rows:
        body["next"] = rows[-1]["txid"]  # pass as `after` for the next page
    return answer(body)


REFUND_FIELDS = tuple(
    name for name in Refund.__dataclass_fields__ if name not in ("sender", "prefix", "suffix")
)


async def refunds(request: web.Request) -> web.StreamResponse:
    """The refund list, oldest first, paged like /receipts (no derivation data).

    `txid=TXID` lists every entry of a transaction, `txid=TXID:VOUT` the one
    of that output; `next` (and `after`) is the "txid:vout" of a page's last.
    """
    gw = _gw(request)
    assert gw.store is not None
    q = request.query
    limit = _limit(q.get("limit"))
    txid, vout = parse_outpoint(q["txid"], "txid") if q.get("txid") else (None, None)
    after = await _after(gw, q["after"]) if q.get("after") else None
    found = await gw.store.refunds(
        since=parse_time(q.get("since"), "since"), txid=txid, limit=limit, after=after
    )
    rows = [r.exported() for r in found if vout in (None, r.vout)]
    if q.get("format", "json") == "csv":
        return csv_answer(rows, REFUND_FIELDS, "farebox-refunds.csv")
    if q.get("format", "json") != "json":
        raise BadQuery("format is json or csv")
    body: dict[str, Any] = {"refunds": rows}
    if len(found) == limit and found:
        body["next"] = found[-1].outpoint  # pass as `after` for the next page
    return answer(body)


async def _after(gw: Services, value: str) -> str:
    """The outpoint to page after: as given, or the one entry a bare txid names."""
    assert gw.store is not None
    txid, vout = parse_outpoint(value, "after")
    if vout is not None:
        return f"{txid}:{vout}"
    named = await gw.store.refunds(txid=txid)
    if len(named) != 1:
        raise BadQuery(f"after: name one entry as TXID:VOUT ({len(named)} of {txid} listed)")
    return named[0].outpoint


async def settle_refund(request: web.Request) -> web.Response:
    """Record that a listed payment was refunded or honoured (once; it stays listed).

    Refunded, the grant it bought (if any) is revoked, as POST /revoke does.
    """
    gw = _gw(request)
    assert gw.store is not None
    try:
        body = await request.json()
    except ValueError:
        raise BadQuery('send JSON: {"txid": TXID, "how": "refunded" or "honoured"}') from None
    if not isinstance(body, dict):
        raise BadQuery("send a JSON object")
    named, how = body.get("txid"), body.get("how")
    if not isinstance(named, str) or not named or len(named) > 200:
        raise BadQuery("name the payment by its txid (or TXID:VOUT)")
    txid, vout = parse_outpoint(named, "txid")
    if how not in (REFUNDED, HONOURED):
        raise BadQuery(f"how is {REFUNDED!r} or {HONOURED!r}")
    listed = [r for r in await gw.store.refunds(txid=txid) if vout in (None, r.vout)]
    if not listed:
        return problem(404, "no-refund", "Not listed", f"no payment {named} on the refund list")
    if len(listed) > 1:
        outpoints = [r.outpoint for r in listed]
        return problem(
            409,
            "refund-ambiguous",
            "Several outputs listed",
            f"{txid} paid {len(listed)} listed outputs: name one as TXID:VOUT",
            outpoints=outpoints,
        )
    (entry,) = listed
    now = int(time.time())
    if not entry.settled and await gw.store.settle_refund(entry.outpoint, how, now):
        settled = {"txid": txid, "vout": entry.vout, "settled": how, "settled_time": now}
        return answer({**settled, **await _revoke_refunded(gw, entry, how, now)})
    (first,) = [r for r in await gw.store.refunds(txid=txid) if r.vout == entry.vout]
    # The first settlement stands. Refunded: make sure its grant is revoked
    # (the request that settled it may have failed just before revoking).
    await _revoke_refunded(gw, first, first.settled, now)
    return problem(
        409,
        "refund-settled",
        "Settled already",
        f"{first.settled} at {first.settled_time}",
        settled=first.settled,
        settled_time=first.settled_time,
    )


async def _revoke_refunded(gw: Services, entry: Refund, how: str, now: int) -> dict[str, Any]:
    """Revoke the grant a refunded payment bought, if it bought one (never both go back)."""
    assert gw.store is not None
    if how != REFUNDED or not entry.grant_id:
        return {}
    until = now + REVOKE_FOR
    await gw.store.revoke(entry.grant_id, until)
    return {"revoked": entry.grant_id, "until": until}


PAYOUT_FIELDS = (
    "id", "campaign", "recipient", "satoshis", "status", "txid", "vout", "reason", "attempts",
    "created", "updated",
)  # fmt: skip
PAYOUT_STATUSES = ("reserved", "owed", "signed", "sent", "seen", "mined", "failed")


async def payouts(request: web.Request) -> web.StreamResponse:
    """The payouts the ledger holds, oldest first: filtered by status and campaign."""
    gw = _gw(request)
    q = request.query
    status = q.get("status") or None
    if status is not None and status not in PAYOUT_STATUSES:
        raise BadQuery(f"status is one of {', '.join(PAYOUT_STATUSES)}")
    limit = _limit(q.get("limit"))
    found = (
        []
        if gw.payouts is None
        else await gw.payouts.payouts(status=status, campaign=q.get("campaign") or None)
    )
    rows = [{name: getattr(p, name) for name in PAYOUT_FIELDS} for p in found[:limit]]
    form = q.get("format", "json")
    if form == "csv":
        return csv_answer(rows, PAYOUT_FIELDS, "farebox-payouts.csv")
    if form != "json":
        raise BadQuery("format is json or csv")
    return answer({"payouts": rows, "total": len(found), "truncated": len(found) > limit})


async def treasury(request: web.Request) -> web.Response:
    """The treasury's spendable balance, what is owed, and whether it is low."""
    from gateway.client.errors import ClientError
    from gateway.client.wallet import Wallet

    gw = _gw(request)
    if gw.treasury is None:
        return problem(
            404,
            "no-treasury",
            "No treasury here",
            "this gateway pays no payouts (farebox serve --payouts-wallet FILE)",
        )
    try:
        balance = Wallet.open(gw.treasury).balance()
    except ClientError as exc:
        return problem(503, "treasury-unreadable", "Treasury unreadable", str(exc))
    tally = await gw.payouts.tally() if gw.payouts is not None else None
    owed = 0 if tally is None else sum(tally.satoshis.get(s, 0) for s in ("reserved", "owed"))
    low = gw.treasury_low_balance
    return answer(
        {
            "wallet": str(gw.treasury),
            "satoshis": balance.satoshis,
            "coins": balance.coins,
            "reserved_satoshis": balance.pending_satoshis,
            "owed_satoshis": owed,
            "low_balance": low,
            "low": (low is not None and balance.satoshis < low) or balance.satoshis < owed,
        }
    )


# Columns of the CSV exports that hold a Unix time: written as ISO 8601 (UTC,
# whole seconds, `2026-12-01T14:31:06Z`) for spreadsheets and people; empty
# where the time is 0 (not yet: a refund not settled). JSON keeps Unix seconds.
CSV_TIMES = frozenset({"time", "expires", "expired", "settled_time", "created", "updated"})


def iso_time(value: float) -> str:
    """Unix seconds as ISO 8601 in UTC (RFC 3339), or "" for 0."""
    if not value:
        return ""
    return datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def csv_answer(rows: list[dict[str, Any]], fields: tuple[str, ...], name: str) -> web.Response:
    """`rows` as a CSV download named `name`, columns `fields` with a header;
    the CSV_TIMES columns in ISO 8601."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    times = CSV_TIMES.intersection(fields)
    writer.writerows(
        [{k: iso_time(v) if k in times else v for k, v in row.items()} for row in rows]
    )
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _limit(value: str | None) -> int:
    try:
        limit = min(int(value or "1000"), MAX_LIMIT)
    except ValueError:
        raise BadQuery("limit must be a number") from None
    if limit < 1:
        raise BadQuery("limit must be at least 1")
    return limit


async def revoke(request: web.Request) -> web.Response:
    gw = _gw(request)
    assert gw.store is not None
    try:
        body = await request.json()
    except ValueError:
        raise BadQuery('send JSON: {"grant": ID} or {"tab": ID}') from None
    if not isinstance(body, dict):
        raise BadQuery("send a JSON object")
    target = body.get("grant") or body.get("tab")
    if not isinstance(target, str) or not target or len(target) > 200:
        raise BadQuery("name a grant id (a token's jti) or a tab id")
    until = body.get("until", int(time.time()) + REVOKE_FOR)
    if not isinstance(until, int) or until <= time.time():
        raise BadQuery("until must be a future Unix time")
    if "grant" not in body and await gw.store.balance(target) is None:
        # A tab the store does not know: nothing to revoke (a typo, most likely).
        return problem(404, "unknown-tab", "No such tab", f"no tab {target!r} is open")
    await gw.store.revoke(target, until)
    if "grant" in body and not await gw.store.sold(target):
        # Revoked all the same (harmless for an id nobody holds): a grant sold
        # before the store kept its grants index is not known to it.
        return problem(
            404,
            "unknown-grant",
            "No such grant",
            f"no receipt names grant {target!r} (a typo?); revoked all the same, in case "
            "it was sold before this version kept an index of grants",
        )
    return answer({"revoked": target, "until": until, "in_force_within_seconds": 1})


async def policy(request: web.Request) -> web.Response:
    holder = _gw(request).policy
    current = holder.current
    return answer(
        {
            "version": current.version,
            "sources": list(current.sources),
            "services": [s.name for s in current.services],
            "last_reload_error": holder.last_error,
        }
    )


async def ready(request: web.Request) -> web.Response:
    """Readiness with the details the public /readyz leaves out (the store's error)."""
    body = await readiness(_gw(request))
    return answer(body, status=200 if body["status"] == "ready" else 503)


async def reload(request: web.Request) -> web.Response:
    holder = _gw(request).policy
    ok = holder.reload()
    body = {"reloaded": ok, "version": holder.current.version, "error": holder.last_error}
    return answer(body, status=200 if ok else 422)
