"""Running `farebox` as a real subprocess, the way admins run it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

FAREBOX = [sys.executable, "-m", "gateway"]


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_log(
        self, pattern: str, timeout: float = 10, count: int = 1
    ) -> re.Match[str]:
        """The `count`-th log line matching `pattern` (each worker logs its own
        "listening on", so waiting for two workers is count=2, not two calls)."""
        deadline = asyncio.get_running_loop().time() + timeout
        seen = 0
        found = 0
        while asyncio.get_running_loop().time() < deadline:
            for line in self.lines[seen:]:
                if m := re.search(pattern, line):
                    found += 1
                    if found == count:
                        return m
            seen = len(self.lines)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{found} of {count} log lines matching {pattern!r} in:\n{self.log}")


def run(*args: str, env: dict[str, str] | None = None, cwd: str | None = None):
    import subprocess

    return subprocess.run(
        [*FAREBOX, *args], capture_output=True, text=True, timeout=60, env=_env(env), cwd=cwd
    )


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAREBOX_")}
    env.update(extra or {})
    # Not ./receipts.jsonl in the checkout (the default, where pytest runs):
    # a test that cares passes --receipts-file or this variable itself.
    env.setdefault("FAREBOX_RECEIPTS_FILE", str(_receipts()))
    return env


def _receipts() -> Path:
    folder = Path(tempfile.gettempdir()) / f"farebox-tests-{os.getpid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / "receipts.jsonl"


@contextlib.asynccontextmanager
async def serve(
    *args: str,
    env: dict[str, str] | None = None,
    ready: str | None = r"listening on http://[^:]+:(\d+)",
    cwd: str | None = None,
) -> AsyncIterator[Running]:
    proc = await asyncio.create_subprocess_exec(
        *FAREBOX, "serve", *args, env=_env(env), cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    running = Running(proc)

    async def collect() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            running.lines.append(raw.decode(errors="replace").rstrip())

    reader = asyncio.ensure_future(collect())
    try:
        if ready:
            running.port = int((await running.wait_for_log(ready, timeout=20)).group(1))
        yield running
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.wait_for(reader, 5)
