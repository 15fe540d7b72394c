"""The reward budget race, across processes: many participants at once on two
`farebox serve` instances sharing one Redis, and on two workers sharing one
SQLite ledger. Never a satoshi beyond the budget; each participant once; the
instance holding the treasury pays every reward owed, each exactly once."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from bsv import PrivateKey

from gateway.client import Wallet, fund
from gateway.payouts.ledgerfile import open_ledger
from gateway.payouts.ledgerredis import RedisLedger
from gateway.store.redis import RedisStore
from tests.farebox_process import Running, run, serve
from tests.redis_servers import RedisServer, need_redis
from tests.survey_upstream import Survey, running_survey
from tests.test_rewards import ISSUER, REGISTER, pem

PAYS = 500
BUDGET = 15 * PAYS
PARTICIPANTS = 40


@pytest.fixture
async def survey() -> AsyncIterator[Survey]:
    async with running_survey() as record:
        yield record


@pytest.fixture
def redis(tmp_path: Path):
    need_redis()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def policy(tmp_path: Path, upstream: str) -> list[str]:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "city.yaml").write_text(
        "concessions:\n  residents:\n    discount: 100\n"
        f"    issuer: {ISSUER}\n    issuer_key: |\n{pem(REGISTER)}\n"
        f"services:\n  city:\n    upstream: {upstream}\n    mount: /consult\n    routes:\n"
        "      - path: /surveys/{survey}/responses\n        methods: [POST]\n"
        "        price: free\n        reward:\n"
        f"          pays: {PAYS}\n          campaign: park-2027\n"
        "          requires: [residents]\n"
        f"          budget: {{total: {BUDGET}, per_day: {BUDGET}}}\n"
    )
    key = tmp_path / "server.key"
    run("keys", "generate", "--out", str(key))
    return [
        "--policies", str(folder), "--key-file", str(key), "--port", "0",
        "--token-keys", str(tmp_path / "tk"),
    ]  # fmt: skip


async def participate(
    http: aiohttp.ClientSession, base: str, n: int, key: str
) -> tuple[int, str, str]:
    token = jwt.encode(
        {"iss": ISSUER, "sub": f"resident-{n}", "exp": int(time.time()) + 600},
        REGISTER,
        algorithm="EdDSA",
    )
    headers = {"X-Farebox-Eligibility": token, "X-Farebox-Payout-To": key}
    async with http.post(
        f"{base}/consult/surveys/park/responses", json={"answer": f"#{n}"}, headers=headers
    ) as r:
        await r.read()
        return (
            r.status,
            r.headers.get("X-Farebox-Reward", ""),
            r.headers.get("X-Farebox-Payout", ""),
        )


async def race(gateways: list[Running], keys: list[str]) -> list[tuple[int, str, str]]:
    spread = itertools.cycle(g.base for g in gateways)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        return await asyncio.gather(
            *(participate(http, next(spread), n, key) for n, key in enumerate(keys))
        )


def judged(results: list[tuple[int, str, str]]) -> tuple[int, int]:
    assert {status for status, _, _ in results} == {201}  # every answer recorded
    paid = [r for r in results if r[1] == str(PAYS)]
    unpaid = [r for r in results if r[1] == "0; budget-exhausted"]
    assert len(paid) + len(unpaid) == len(results)
    assert len({url for _, _, url in paid}) == len(paid)  # one payout each
    return len(paid), len(unpaid)


async def test_two_instances_on_redis_never_pass_the_budget_and_pay_each_once(
    tmp_path: Path, redis: RedisServer, survey: Survey, devnet_http
) -> None:
    url, chain = devnet_http
    treasury = Wallet.create(tmp_path / "treasury.json")
    await fund(treasury, 50_000, url)
    args = [*policy(tmp_path, survey.url), "--store", redis.url, "--devnet-url", url]
    keys = [PrivateKey().public_key().hex() for _ in range(PARTICIPANTS)]
    payer = ["--payouts-wallet", str(treasury.path), "--payouts-interval", "1s"]
    async with serve(*args, *payer) as a, serve(*args) as b:
        results = await race([a, b], keys)
        assert judged(results) == (15, PARTICIPANTS - 15)
        assert len(survey.responses) == PARTICIPANTS
        store = RedisStore.from_url(redis.url)
        try:
            ledger = await RedisLedger.open(store)
            today = time.strftime("%Y-%m-%d", time.gmtime())
            assert await ledger.spent("park-2027", today) == (BUDGET, BUDGET)
            # The instance with the treasury pays them all, in the background.
            for _ in range(100):
                tally = await ledger.tally()
                if tally.counts.get("seen") == 15:
                    break
                await asyncio.sleep(0.2)
            assert tally.counts == {"seen": 15} and tally.satoshis == {"seen": BUDGET}
            for payout in await ledger.payouts():
                outputs = chain.unspent_by_script(bytes.fromhex(payout.script))
                assert [(t, v, s) for t, v, s, _ in outputs] == [(payout.txid, payout.vout, PAYS)]
        finally:
            await store.close()
        await a.wait_for_log(r"payouts: 15 paid|payouts: \d+ paid")


async def test_two_workers_on_one_sqlite_ledger_never_pass_the_budget(
    tmp_path: Path, survey: Survey
) -> None:
    args = policy(tmp_path, survey.url)
    ledger_path = tmp_path / "payouts.db"
    keys = [PrivateKey().public_key().hex() for _ in range(PARTICIPANTS)]
    async with serve(*args, "--workers", "2", "--payouts-ledger", str(ledger_path)) as gw:
        results = await race([gw], keys)
    assert judged(results) == (15, PARTICIPANTS - 15)
    ledger = open_ledger(ledger_path, write=False)
    try:
        tally = await ledger.tally()
    finally:
        await ledger.close()
    assert tally.counts == {"owed": 15} and tally.satoshis == {"owed": BUDGET}
