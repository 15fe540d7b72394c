"""Driving a real BRC-100 wallet (@bsv/wallet-toolbox under node) from the tests.

tests/interop/toolbox.mjs runs the toolbox's own `Wallet` on in-memory SQLite over
a devnet; a test talks to one node process for all its steps, JSON lines on its
stdin and stdout (`Toolbox.call`). Shared by tests/test_wallet_toolbox.py
(BRC-121, BRC-29, the paywall's button) and tests/test_authfetch.py (BRC-105
through the SDK's AuthFetch, against the official express middlewares and Farebox).

`require_node()` skips when node is missing, installs tests/interop's packages
(`npm ci`) once when they are missing, and fails when that install fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

INTEROP = Path(__file__).parent / "interop"
SCRIPT = INTEROP / "toolbox.mjs"
NPM_CI_TIMEOUT = 900  # seconds; better-sqlite3 compiles in about a minute
STEP_TIMEOUT = 60
LINE_LIMIT = 16 << 20  # an answer is one JSON line (a page's body, BEEF in headers)
REQUIRED = (
    INTEROP / "node_modules" / "@bsv" / "wallet-toolbox" / "package.json",
    INTEROP / "node_modules" / "better-sqlite3" / "build" / "Release" / "better_sqlite3.node",
    INTEROP / "node_modules" / "dotenv" / "package.json",
    INTEROP / "node_modules" / "@bsv" / "auth-express-middleware" / "package.json",
    INTEROP / "node_modules" / "@bsv" / "payment-express-middleware" / "package.json",
    INTEROP / "node_modules" / "express" / "package.json",
)


def _npm_env(node: str) -> dict[str, str]:
    """What ./dev's interop_install sets: better-sqlite3 compiled from its (hash-pinned)
    npm tarball, with node's own headers, by Debian's python3 when there is one."""
    env = {**os.environ, "npm_config_build_from_source": "better-sqlite3"}
    prefix = Path(node).resolve().parent.parent
    if (prefix / "include" / "node" / "node.h").is_file():
        env["npm_config_nodedir"] = str(prefix)
    if Path("/usr/bin/python3").exists():
        env["npm_config_python"] = "/usr/bin/python3"
    return env


@cache
def _toolbox_problem() -> tuple[str, str] | None:
    """(skip|fail, why) when the toolbox cannot run here, None when it can."""
    node = shutil.which("node")
    if node is None:
        return "skip", "node is not installed: the wallet-toolbox tests need Node.js"
    if all(p.exists() for p in REQUIRED):
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "fail", "tests/interop/node_modules is incomplete and npm is not installed"
    try:
        done = subprocess.run(
            [npm, "ci", "--prefix", str(INTEROP), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
            check=False,
            env=_npm_env(node),
        )
    except subprocess.TimeoutExpired:
        return "fail", f"`npm ci --prefix tests/interop` took longer than {NPM_CI_TIMEOUT} s"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return "fail", "`npm ci --prefix tests/interop` failed: " + " | ".join(tail)
    missing = [str(p.relative_to(INTEROP)) for p in REQUIRED if not p.exists()]
    if missing:
        return "fail", f"`npm ci --prefix tests/interop` did not install {', '.join(missing)}"
    return None


def require_node() -> str:
    """node's path, once tests/interop's packages are there (the body of a `node` fixture)."""
    problem = _toolbox_problem()
    if problem is not None:
        kind, why = problem
        if kind == "skip":
            pytest.skip(why)
        pytest.fail(why)
    found = shutil.which("node")
    assert found is not None
    return found


class ToolboxError(Exception):
    """An op that failed: `answer` is toolbox.mjs's whole answer ({error, code, details})."""

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.answer = answer or {}

    @property
    def details(self) -> dict[str, Any]:
        return self.answer.get("details") or {}


class Toolbox:
    """One toolbox wallet in one node process; `await call(op, **args)` per step."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []
        self.identity_key = ""
        self._next = 1
        self._lock = asyncio.Lock()
        self._drain = asyncio.ensure_future(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), STEP_TIMEOUT)
        if not line:
            await asyncio.sleep(0.2)  # let stderr arrive
            raise ToolboxError("toolbox.mjs exited:\n" + "\n".join(self.stderr[-30:]))
        return json.loads(line)

    async def call(self, op: str, **args: Any) -> Any:
        async with self._lock:
            request_id = self._next
            self._next += 1
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n")
            await self.proc.stdin.drain()
            answer = await self._answer()
        assert answer["id"] == request_id, answer
        if not answer["ok"]:
            raise ToolboxError(f"{op}: {answer['error']}\n" + "\n".join(self.stderr[-30:]), answer)
        return answer["result"]

    async def balance(self) -> int:
        return (await self.call("balance"))["satoshis"]


@contextlib.asynccontextmanager
async def toolbox(node: str, devnet_url: str) -> AsyncIterator[Toolbox]:
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), devnet_url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=INTEROP, limit=LINE_LIMIT,
        env={**os.environ, "TOOLBOX_VERBOSE": "1"},
    )  # fmt: skip
    wallet = Toolbox(proc)
    try:
        ready = await wallet._answer()
        assert ready["ok"] and ready["result"]["ready"], ready
        wallet.identity_key = ready["result"]["identityKey"]
        yield wallet
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(wallet._drain, 5)
