"""The `farebox` command as admins use it: real processes, real files, signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.conftest import Upstream
from tests.farebox_process import run, serve

REPO = Path(__file__).resolve().parent.parent


def policy_text(upstream: str, price: str = "free") -> str:
    return (
        "services:\n"
        "  svc:\n"
        f"    upstream: {upstream}\n"
        "    routes:\n"
        "      - path: /doc\n"
        f"        price: {price}\n"
        "      - path: /**\n"
        "        methods: '*'\n"
        "        price: free\n"
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "server.key"
    result = run("keys", "generate", "--out", str(path))
    assert result.returncode == 0, result.stderr
    return path


def write_policy(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "main.yaml").write_text(text)
    return folder


# --- policy check ------------------------------------------------------------------


def test_policy_check_accepts_the_examples() -> None:
    result = run("policy", "check", str(REPO / "policies"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 5 file(s), 6 service(s)")


def test_policy_check_points_at_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "services:\n  svc:\n    upstream: http://127.0.0.1:1\n    routes:\n"
        "      - path: /a\n        price: 10\n      - path: /b\n        price: ten\n"
    )
    result = run("policy", "check", str(path))
    assert result.returncode == 1
    assert f"{path}:8:9: services.svc.routes[1].price: price must be 'free'" in result.stderr
    assert "1 problem found" in result.stderr


def test_policy_check_default_path_is_policies_dir(tmp_path: Path) -> None:
    result = run("policy", "check", cwd=str(REPO))
    assert result.returncode == 0
    result = run("policy", "check", cwd=str(tmp_path))
    assert result.returncode == 1
    assert "policies: no such file or directory" in result.stderr


# --- keys ------------------------------------------------------------------------


def test_keys_generate_is_private_and_never_clobbers(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first = run("keys", "generate", "--out", str(path))
    assert first.returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    assert len(secret) == 64 and int(secret, 16)
    assert secret not in first.stdout + first.stderr
    public = first.stdout.split("public key: ")[1].strip()

    again = run("keys", "generate", "--out", str(path))
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert path.read_text().strip() == secret

    shown = run("keys", "show-public", "--key-file", str(path))
    assert shown.stdout.strip() == public
    assert run("keys", "show-public", env={"FAREBOX_KEY": secret}).stdout.strip() == public

    path.chmod(0o644)
    forced = run("keys", "generate", "--out", str(path), "--force")
    assert forced.returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() != secret


# --- start-up refusals: one clear line, non-zero exit --------------------------------


def test_serve_refuses_without_key(tmp_path: Path) -> None:
    folder = write_policy(tmp_path, policy_text("http://127.0.0.1:1"))
    result = run("serve", "--policies", str(folder), "--port", "0", cwd=str(tmp_path))
    assert result.returncode != 0
    assert "no server key" in result.stderr and "farebox keys generate" in result.stderr


async def test_keys_generate_and_serve_agree_on_the_default_key_file(
    tmp_path: Path, upstream: Upstream
) -> None:
    """`farebox keys generate` then `farebox serve` in one folder, neither
    told where the key is: serve uses the key just written."""
    folder = write_policy(tmp_path, policy_text(upstream.url, price="5"))
    made = run("keys", "generate", cwd=str(tmp_path))
    assert made.returncode == 0 and (tmp_path / "farebox.key").exists(), made.stderr
    public = made.stdout.split("public key: ")[1].strip()
    shown = run("keys", "show-public", cwd=str(tmp_path))
    assert shown.stdout.strip() == public
    args = ["--policies", str(folder), "--port", "0", "--token-keys", str(tmp_path / "tk")]
    async with serve(*args, cwd=str(tmp_path)) as gw, aiohttp.ClientSession() as http:
        r = await http.get(f"{gw.base}/doc")
        assert r.status == 402 and r.headers["x-bsv-server"] == public
        r.release()


def test_serve_refuses_unreadable_or_open_key(tmp_path: Path, key_file: Path) -> None:
    folder = write_policy(tmp_path, policy_text("http://127.0.0.1:1"))
    result = run("serve", "--policies", str(folder), "--key-file", str(tmp_path / "nope"))
    assert result.returncode != 0
    assert "cannot read key file" in result.stderr
    key_file.chmod(0o644)
    result = run("serve", "--policies", str(folder), "--key-file", str(key_file))
    assert result.returncode != 0
    assert "readable by others" in result.stderr
    assert key_file.read_text().strip() not in result.stderr


def test_serve_refuses_garbage_key_without_echoing_it(tmp_path: Path) -> None:
    folder = write_policy(tmp_path, policy_text("http://127.0.0.1:1"))
    garbage = "ab" * 31 + "zz"
    result = run("serve", "--policies", str(folder), env={"FAREBOX_KEY": garbage})
    assert result.returncode != 0
    assert "$FAREBOX_KEY does not hold a valid key" in result.stderr
    assert garbage not in result.stderr


def test_serve_refuses_invalid_policy(tmp_path: Path, key_file: Path) -> None:
    folder = write_policy(tmp_path, policy_text("http://127.0.0.1:1", price="-1"))
    result = run("serve", "--policies", str(folder), "--key-file", str(key_file))
    assert result.returncode != 0
    assert "invalid policy" in result.stderr
    assert "main.yaml:6:9: services.svc.routes[0].price" in result.stderr


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    config = tmp_path / "farebox.yaml"
    config.write_text("port: 8402\nwokers: 2\n")
    result = run("serve", "--config", str(config))
    assert result.returncode != 0
    assert f"{config}:2: wokers: unknown setting (did you mean 'workers'?)" in result.stderr
    result = run("serve", env={"FAREBOX_READ_TIMEOUT": "soon"})
    assert "read_timeout" in result.stderr and "not a duration" in result.stderr


def test_help_reads_well() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "demo", "policy", "keys"):
        assert command in result.stdout
    serve_help = run("serve", "--help").stdout
    assert "FAREBOX_" in serve_help and "--workers" in serve_help and "SIGHUP" in serve_help


# --- running servers -----------------------------------------------------------------


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.text()


async def wait_status(url: str, status: int, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got, _ = await get(url)
        if got == status:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{url} still answers {got}"
        await asyncio.sleep(0.1)


async def test_hot_reload_swaps_valid_and_refuses_invalid(
    tmp_path: Path, key_file: Path, upstream: Upstream
) -> None:
    folder = write_policy(tmp_path, policy_text(upstream.url))
    async with serve("--policies", str(folder), "--key-file", str(key_file), "--port", "0") as gw:
        assert (await get(f"{gw.base}/doc"))[0] == 200

        (folder / "main.yaml").write_text(policy_text(upstream.url, price="50"))
        await wait_status(f"{gw.base}/doc", 402)
        await gw.wait_for_log(r"policy version \w+ loaded")

        # An invalid edit is refused; the last good policy keeps serving.
        (folder / "main.yaml").write_text(policy_text(upstream.url, price="lots"))
        await gw.wait_for_log(r"policy reload refused, still serving version")
        assert "main.yaml:6:9: services.svc.routes[0].price" in gw.log
        for _ in range(5):
            status, body = await get(f"{gw.base}/doc")
            assert status == 402 and '"satoshis": 50' in body
        # A new file with a YAML error is refused as well.
        (folder / "zz.yaml").write_text("services: [\n")
        await gw.wait_for_log(r"zz.yaml:\d+:\d+: YAML syntax")
        assert (await get(f"{gw.base}/doc"))[0] == 402


async def test_sighup_reloads(tmp_path: Path, key_file: Path, upstream: Upstream) -> None:
    folder = write_policy(tmp_path, policy_text(upstream.url))
    args = ("--policies", str(folder), "--key-file", str(key_file), "--port", "0", "--no-watch")
    async with serve(*args) as gw:
        (folder / "main.yaml").write_text(policy_text(upstream.url, price="7"))
        await asyncio.sleep(0.5)
        assert (await get(f"{gw.base}/doc"))[0] == 200  # not watching: nothing changed yet
        gw.proc.send_signal(signal.SIGHUP)
        await wait_status(f"{gw.base}/doc", 402)


async def test_settings_from_environment_and_file(
    tmp_path: Path, key_file: Path, upstream: Upstream
) -> None:
    folder = write_policy(tmp_path, policy_text(upstream.url, price="9"))
    config = tmp_path / "farebox.yaml"
    config.write_text(f"policies: {folder}\nport: 1\nlog_level: info\n")
    env = {
        "FAREBOX_KEY": key_file.read_text().strip(),
        "FAREBOX_CONFIG": str(config),
        "FAREBOX_PORT": "5",
    }
    # Flag beats environment beats file: the port comes from --port.
    async with serve("--port", "0", env=env) as gw:
        status, body = await get(f"{gw.base}/doc")
        assert status == 402 and '"satoshis": 9' in body
        # The key came from the environment and must appear in no log line.
        assert key_file.read_text().strip() not in gw.log


async def test_sigterm_drains_in_flight_requests(
    tmp_path: Path, key_file: Path, upstream: Upstream
) -> None:
    folder = write_policy(tmp_path, policy_text(upstream.url))
    async with serve("--policies", str(folder), "--key-file", str(key_file), "--port", "0") as gw:
        in_flight = asyncio.ensure_future(get(f"{gw.base}/slow?s=1"))
        await asyncio.sleep(0.3)
        gw.proc.send_signal(signal.SIGTERM)
        status, body = await in_flight
        assert (status, body) == (200, "late")
        assert await asyncio.wait_for(gw.proc.wait(), 10) == 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_workers_share_one_port(tmp_path: Path, key_file: Path, upstream: Upstream) -> None:
    folder = write_policy(tmp_path, policy_text(upstream.url))
    port = free_port()
    args = (
        "--policies",
        str(folder),
        "--key-file",
        str(key_file),
        "--port",
        str(port),
        "--workers",
        "2",
    )
    async with serve(*args, ready=None) as gw:
        gw.port = port
        await gw.wait_for_log(r"listening on", timeout=20, count=2)
        await asyncio.sleep(0.5)
        children = psutil.Process(gw.proc.pid).children()
        assert len(children) >= 2
        pids = {c.pid for c in children}
        listening = {
            c.pid
            for c in children
            for conn in c.net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
        }
        assert len(listening) == 2, (pids, listening)
        results = await asyncio.gather(*(get(f"{gw.base}/n/{i}") for i in range(100)))
        assert all(status == 200 for status, _ in results)

        # A worker that dies is replaced.
        victim = next(iter(listening))
        os.kill(victim, signal.SIGKILL)
        await gw.wait_for_log(rf"worker {victim} exited .* starting another")
        await asyncio.sleep(2)
        assert (await get(f"{gw.base}/doc"))[0] == 200
        assert len(psutil.Process(gw.proc.pid).children()) >= 2
    assert gw.proc.returncode == 0


@pytest.mark.parametrize(
    "message",
    [
        b"FOO /doc HTTP/1.1\r\nHost: x\r\n\r\n",  # a method no parser knows
        b"GET /doc HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",  # over 64 kB
        b"GET /doc HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ],
)
async def test_unparseable_requests_get_problem_json_too(
    tmp_path: Path, key_file: Path, upstream: Upstream, message: bytes
) -> None:
    # aiohttp answers these before any handler runs; the served gateway
    # answers them as every other error: problem+json with a reason.
    folder = write_policy(tmp_path, policy_text(upstream.url))
    async with serve("--policies", str(folder), "--key-file", str(key_file), "--port", "0") as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(message)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1][:1] == b"4", head
    assert b"content-type: application/problem+json" in head.lower(), head
    assert json.loads(body)["reason"] == "bad-http-message"


@pytest.mark.parametrize("which", ["gateway", "admin"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_refused_in_one_line(
    tmp_path: Path, key_file: Path, upstream: Upstream, workers: str, which: str
) -> None:
    """The gateway's port or the admin API's: one line naming it, no
    traceback, nothing left unclosed (payments on: the chain's clients)."""
    folder = write_policy(tmp_path, policy_text(upstream.url))
    (tmp_path / "admin.token").write_text("a-test-admin-token-0123456789abcdef")
    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        busy, other = str(taken.getsockname()[1]), str(free.getsockname()[1])
        free.close()
        port, admin_port = (busy, other) if which == "gateway" else (other, busy)
        extra = ["--workers", workers] + (
            ["--store", "redis://127.0.0.1:1/0"] if workers != "1" else []
        )
        done = run(
            "serve", "--policies", str(folder), "--key-file", str(key_file), "--port", port,
            "--admin-port", admin_port, "--admin-token-file", str(tmp_path / "admin.token"),
            "--devnet-url", "http://127.0.0.1:9", *extra,
        )  # fmt: skip
    assert done.returncode == 1
    named = f"127.0.0.1:{busy}" + ("" if which == "gateway" else " (admin API)")
    assert f"farebox: cannot listen on {named}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "Unclosed" not in done.stderr + done.stdout


async def test_no_versions_in_the_server_header(
    tmp_path: Path, key_file: Path, upstream: Upstream
) -> None:
    folder = write_policy(tmp_path, policy_text(upstream.url))
    args = ("--policies", str(folder), "--key-file", str(key_file), "--port", "0")
    async with serve(*args) as gw, aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/doc", "/a%2Fb", "/.well-known/farebox/nothing"):
            async with http.get(gw.base + path) as r:
                server = r.headers.get("Server", "")
                assert "aiohttp" not in server and "Python" not in server, (path, server)


async def test_a_store_that_does_not_answer_is_warned_of_at_start(
    tmp_path: Path, key_file: Path, upstream: Upstream
) -> None:
    """Farebox starts (the store may come up later) but says, before it
    listens, that priced requests get 503 until the store answers."""
    folder = write_policy(tmp_path, policy_text(upstream.url, price="5"))
    args = ["--policies", str(folder), "--key-file", str(key_file), "--port", "0",
            "--store", "redis://127.0.0.1:1/0", "--token-keys", str(tmp_path / "tk")]  # fmt: skip
    async with serve(*args) as gw, aiohttp.ClientSession() as http:
        await gw.wait_for_log(r"WARNING .*the store does not answer")
        async with http.get(f"{gw.base}/doc") as r:
            assert r.status == 503
        async with http.get(f"{gw.base}/other") as r:
            assert r.status == 200  # free routes are served


def test_a_bad_value_from_the_environment_is_not_blamed_on_the_config_file(
    tmp_path: Path,
) -> None:
    """The file sets port well; FAREBOX_PORT overrides it badly: the error names
    the setting, not the file's line that was never used."""
    config = tmp_path / "farebox.yaml"
    config.write_text("port: 8402\n")
    result = run("serve", "--config", str(config), env={"FAREBOX_PORT": "abc"})
    assert result.returncode != 0 and "port: " in result.stderr
    assert f"{config}:1" not in result.stderr
