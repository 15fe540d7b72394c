"""The metered express path's per-route constants follow a policy reload.

pipeline/metering.py `express` works out a route's unit price, hold and
charge once per route (`_known`): a reloaded policy's route is a new one, so
a new price is charged at once, as the pipeline charges it. Reuses
tests/test_express.py's `lanes` fixture.
"""

# ruff: noqa: F811  (the `lanes` fixture is imported, and requested by name)

from __future__ import annotations

import asyncio
import textwrap
import uuid

from tests.test_express import (  # noqa: F401  (lanes: a fixture used by name)
    POLICY,
    Lanes,
    Raw,
    exchange,
    lanes,
    masked,
    raw,
    request,
)


async def drawn(lanes: Lanes, port: int) -> tuple[bytes, int]:
    """A GET on the /m/ route drawn on a new tab: the answer, and the msat it cost."""
    tab = uuid.uuid4().hex
    await lanes.store.credit(tab, 10_000_000, once=tab)
    data = request("1.1-close", "plain", lanes.tab_token(tab)).replace(b"/r/", b"/m/")
    answer = await exchange(port, data)
    await asyncio.sleep(0.05)  # the settle
    return answer.replace(tab.encode(), b"TAB"), 10_000_000 - (await lanes.store.balance(tab) or 0)


async def test_a_reloaded_price_is_charged_on_the_express_path_at_once(
    lanes: Lanes, raw: Raw
) -> None:
    for price in (10, 25, 10):  # the fixture's price, a reload, and back
        if price != 10 or lanes.taken:
            policy = POLICY.format(upstream=raw.url).replace("price: 10\n", f"price: {price}\n")
            (lanes.folder / "p.yaml").write_text(textwrap.dedent(policy))
            assert lanes.gateway.services.policy.reload()
        (fast, fast_cost), (slow, slow_cost) = [
            await drawn(lanes, port) for port in (lanes.express, lanes.slow)
        ]
        assert fast.startswith(b"HTTP/1.1 200 "), fast[:300]
        assert masked(fast) == masked(slow)
        assert f"\r\nX-Farebox-Charge: {price}\r\n".encode() in fast
        assert fast_cost == slow_cost == price * 1000
    assert lanes.taken and all(lanes.taken)
