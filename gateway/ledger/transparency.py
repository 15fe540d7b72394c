"""The public transparency report: what each service earned, day by day.

Anyone may ask `/.well-known/farebox/transparency` (JSON, or a page for a
browser): per service and UTC day, the number of payments, the satoshis,
and the txids behind them, so anyone can check every figure on chain. It
never names a payer. A service leaves the report with `transparency: false`
in its policy.
"""

from __future__ import annotations

import calendar
import time
from collections import defaultdict
from typing import Any, Protocol

from gateway.policy import Policy
from gateway.store.receipts import Receipt


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


async def report(policy: Policy, store: Receipts, days: int) -> dict[str, Any]:
    """Revenue per service per day over the last `days` days (today included).

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
    return {
        "since": start_day,
        "until": time.strftime("%Y-%m-%d", time.gmtime(now)),
        "services": sorted(shown),
        "days": [{"day": day, "service": service, **row} for (day, service), row in ordered],
        "totals_satoshis": dict(sorted(totals.items())),
        "truncated": truncated,
        "note": "Every figure is backed by the txids listed: look them up on any BSV "
        "block explorer. Payers are never named.",
    }
