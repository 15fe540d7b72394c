"""The sample upstream of the reward tests: a city survey recording responses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Survey:
    """The upstream: records each response; answers 201, or 422 for an empty
    answer, or `fail` (a 503) while set."""

    url: str = ""
    responses: list[dict] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail: int | None = None


@contextlib.asynccontextmanager
async def running_survey() -> AsyncIterator[Survey]:
    record = Survey()

    async def respond(request: web.Request) -> web.Response:
        record.headers.append(dict(request.headers))
        if record.fail is not None:
            return web.Response(status=record.fail)
        body = await request.json()
        if not body.get("answer"):
            return web.json_response({"error": "answer is required"}, status=422)
        record.responses.append(body)
        return web.json_response({"recorded": len(record.responses)}, status=201)

    app = web.Application()
    app.router.add_post("/surveys/{survey}/responses", respond)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    record.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield record
    finally:
        await runner.cleanup()
