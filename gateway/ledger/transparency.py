"""The public transparency report: what each service earned, and what was paid out.

Anyone may ask `/.well-known/farebox/transparency` (JSON, or a page for a
browser): per service and UTC day, the number of payments, the satoshis,
and the txids behind them, so anyone can check every figure on chain; and
per reward campaign and day, the payouts broadcast, their satoshis and
txids. It never names a payer nor anyone paid. A service leaves the report with `transparency: false`
in its policy.
"""

from __future__ import annotations

import calendar
import time
from collections import defaultdict
from typing import Any, Protocol

from gateway.policy import Policy
from gateway.store.receipts import Receipt


class Payouts(Protocol):
    """What the report needs of the payout ledger (gateway.payouts)."""

    async def payouts(self, *, status: str | None = None) -> list[Any]: ...
    async def batch(self, txid: str) -> Any: ...


PAID = ("sent", "seen", "mined")


async def payouts_paid(ledger: Payouts, since: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Payouts broadcast since `since` (Unix seconds), per UTC day and campaign:
    the count, satoshis and txids, never who was paid; and the satoshis per
    campaign. A payout counts on the day its transaction was signed."""
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"payouts": 0, "satoshis": 0, "txids": []}
    )
    signed: dict[str, float] = {}
    for status in PAID:
        for payout in await ledger.payouts(status=status):
            txid = payout.txid
            if txid not in signed:
                batch = await ledger.batch(txid)
                signed[txid] = batch.created if batch is not None else payout.updated
            if signed[txid] < since:
                continue
            day = time.strftime("%Y-%m-%d", time.gmtime(signed[txid]))
            row = rows[(day, payout.campaign)]
            row["payouts"] += 1
            row["satoshis"] += payout.satoshis
            if txid not in row["txids"]:
                row["txids"].append(txid)
    ordered = sorted(rows.items(), reverse=True)
    totals: dict[str, int] = defaultdict(int)
    for (_, campaign), row in ordered:
        totals[campaign] += row["satoshis"]
    days = [{"day": day, "campaign": campaign, **row} for (day, campaign), row in ordered]
    return days, dict(sorted(totals.items()))


class Receipts(Protocol):
    """What the report needs of the store."""

    async def receipts(
        self, *, since: int | None = None, limit: int = 1000, after: str | None = None
    ) -> list[Receipt]: ...


DEFAULT_DAYS = 30
MAX_DAYS = 366
MAX_RECEIPTS = 100_000  # per report; beyond it the report says it is truncated
PAGE = 10_000


def published(policy: Policy) -> set[str]:
    """The services the report shows (all but those with `transparency: false`)."""
    return {s.name for s in policy.services if s.service.transparency}


async def report(
    policy: Policy, store: Receipts, days: int, payouts: Payouts | None = None
) -> dict[str, Any]:
    """Revenue per service per day over the last `days` days (today included),
    and with a payout ledger what was paid out per campaign and day.

    Raises StoreUnavailable when the store cannot be read.
    """
    now = int(time.time())
    start_day = time.strftime("%Y-%m-%d", time.gmtime(now - (days - 1) * 86400))
    since = calendar.timegm(time.strptime(start_day, "%Y-%m-%d"))
    shown = published(policy)
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"payments": 0, "satoshis": 0, "txids": []}
    )
    seen = 0
    truncated = False
    after: str | None = None
    while True:
        page: list[Receipt] = await store.receipts(since=since, limit=PAGE, after=after)
        for receipt in page:
            if receipt.service not in shown:
                continue
            day = time.strftime("%Y-%m-%d", time.gmtime(receipt.time))
            row = rows[(day, receipt.service)]
            row["payments"] += 1
            row["satoshis"] += receipt.satoshis
            row["txids"].append(receipt.txid)
        seen += len(page)
        if len(page) < PAGE:
            break
        if seen >= MAX_RECEIPTS:
            truncated = True
            break
        after = page[-1].txid
    ordered = sorted(rows.items(), key=lambda item: (item[0][0], item[0][1]), reverse=True)
    totals: dict[str, int] = defaultdict(int)
    for (_, service), row in ordered:
        totals[service] += row["satoshis"]
    paid_out, paid_totals = ([], {}) if payouts is None else await payouts_paid(payouts, since)
    return {
        "since": start_day,
        "until": time.strftime("%Y-%m-%d", time.gmtime(now)),
        "services": sorted(shown),
        "days": [{"day": day, "service": service, **row} for (day, service), row in ordered],
        "totals_satoshis": dict(sorted(totals.items())),
        "truncated": truncated,
        "payouts": paid_out,
        "payout_totals_satoshis": paid_totals,
        "note": "Every figure is backed by the txids listed: look them up on any BSV "
        "block explorer. Payers and people paid are never named.",
    }
