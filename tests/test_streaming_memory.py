"""A 1 GiB response passes through the gateway with bounded memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import psutil

from tests.conftest import Upstream
from tests.farebox_process import run, serve

GIB = 1 << 30


async def test_one_gib_streams_with_bounded_rss(tmp_path: Path, upstream: Upstream) -> None:
    key = tmp_path / "k"
    assert run("keys", "generate", "--out", str(key)).returncode == 0
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        f"services:\n  s:\n    upstream: {upstream.url}\n    routes: [{{path: /**, price: free}}]\n"
    )
    async with serve("--policies", str(folder), "--key-file", str(key), "--port", "0") as gw:
        proc = psutil.Process(gw.proc.pid)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.base}/big/{1 << 20}") as r:  # warm up the pools
                await r.read()
            baseline = proc.memory_info().rss
            peak = baseline
            received = 0

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, proc.memory_info().rss)
                    await asyncio.sleep(0.02)

            sampler = asyncio.ensure_future(sample())
            try:
                async with http.get(f"{gw.base}/big/{GIB}") as r:
                    assert r.status == 200
                    assert int(r.headers["Content-Length"]) == GIB
                    async for chunk in r.content.iter_chunked(1 << 20):
                        received += len(chunk)
            finally:
                sampler.cancel()
    assert received == GIB
    growth = peak - baseline
    print(f"gateway RSS: baseline {baseline >> 20} MiB, peak {peak >> 20} MiB over 1 GiB")
    assert growth < 64 << 20, f"RSS grew by {growth >> 20} MiB while streaming 1 GiB"
