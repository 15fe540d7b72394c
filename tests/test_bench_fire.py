"""bench/payments.py's load generator: each payment sent once, every answer read.

The payments benchmark reads Farebox's answers with its own small HTTP/1.1
reader (so the load generator costs the shared cores little); a misread
answer would count a refused payment as accepted or hang the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import payments as pay_bench


def _prepared(n: int) -> list[pay_bench.Prepared]:
    return [
        pay_bench.Prepared(f"/p/{i}", {"x-bsv-beef": "AQID" * 300}, b"", f"{i:064x}", "0")
        for i in range(n)
    ]


async def _serve(handler: web.RequestHandler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/p/{n}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_every_answer_form_is_read_and_counted(concurrency: int) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        seen.append(request.headers["x-bsv-beef"][:4])
        if n % 4 == 0:  # chunked, in several writes
            response = web.StreamResponse(status=200)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"a" * 10, b"b" * 3000, b"c"):
                await response.write(part)
            await response.write_eof()
            return response
        if n % 4 == 1:  # a refusal with a body
            return web.json_response({"reason": "payment-reused"}, status=402)
        if n % 4 == 2:  # the server closes after answering
            return web.Response(body=b"x" * 5000, headers={"Connection": "close"})
        return web.Response(status=204)

    runner, base = await _serve(handler)
    try:
        elapsed, latencies, statuses = await pay_bench.fire(base, _prepared(40), concurrency)
    finally:
        await runner.cleanup()
    assert statuses == {200: 20, 402: 10, 204: 10}
    assert len(latencies) == 40 and elapsed > 0
    assert seen == ["AQID"] * 40  # each sent once, headers intact


async def test_a_server_that_drops_the_connection_fails_the_run() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()  # no answer at all
        return web.Response()

    runner, base = await _serve(handler)
    try:
        with pytest.raises(ConnectionError):
            await pay_bench.fire(base, _prepared(3), 1)
    finally:
        await runner.cleanup()
