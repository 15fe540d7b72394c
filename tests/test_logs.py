"""Logs: JSON lines with a request id, and never a secret.

A real `farebox serve` with every log turned up (debug, access log, JSON)
goes through paying, tokens, cookies, bad tokens, the admin API and an
upstream failure; then no token, key, cookie, BEEF, payer key or admin
token may appear in any line, and every line must be JSON.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from bsv import PrivateKey

from gateway.edge import logs, urls
from gateway.serve.worker import access_logger
from tests.chainkit import brc121_headers, faucet
from tests.conftest import Upstream
from tests.farebox_process import run, serve
from tests.redis_servers import free_port

ADMIN_TOKEN = "log-test-admin-token-0123456789abcdef"


async def test_no_secret_reaches_a_log_line(
    tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, _ = devnet_http
    key_file = tmp_path / "server.key"
    server_pub = run("keys", "generate", "--out", str(key_file)).stdout.split("public key: ")[1]
    server_pub = server_pub.strip()
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        f"services:\n  s:\n    upstream: {upstream.url}\n    tabs: {{top_up: 500}}\n"
        "    routes:\n"
        "      - {path: /page/*, price: 30, grant: {lasts: 1h}}\n"
        "      - {path: /calls/*, price: 5, meter: {per: request}}\n"
        "      - {path: /hangup, price: free}\n"
        "  dead:\n    upstream: http://127.0.0.1:9\n    mount: /dead\n"
        "    routes: [{path: /x, price: free}]\n"
    )
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    admin_port = free_port()
    args = [
        "--policies", str(folder), "--key-file", str(key_file), "--port", "0",
        "--devnet-url", url, "--token-keys", str(tmp_path / "tk"),
        "--log-level", "debug", "--access-log", "--log-format", "json",
        "--admin-port", str(admin_port), "--admin-token-file", str(tmp_path / "admin.token"),
    ]  # fmt: skip
    client = PrivateKey()
    secrets: list[str] = [ADMIN_TOKEN, client.public_key().hex()]
    async with serve(*args) as gw, aiohttp.ClientSession() as http:
        parent = await faucet(url, client, 100_000)
        headers, _ = brc121_headers(server_pub, client, parent, 30)
        secrets.append(headers["x-bsv-beef"][:60])
        async with http.get(f"{gw.base}/page/1", headers=headers) as r:
            assert r.status == 200
            token = r.headers["X-Farebox-Token"]
            rid = r.headers["X-Request-Id"]
        secrets.append(token)
        bearer = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{gw.base}/page/1", headers=bearer) as r:
            assert r.status == 200
        async with http.get(f"{gw.base}/page/1", headers={"Cookie": f"farebox_token={token}"}) as r:
            assert r.status == 200
        async with http.get(
            f"{gw.base}/page/2", headers={"Authorization": "Bearer forged.x.y"}
        ) as r:
            assert r.status == 402
        # A tab, through the pay endpoint.
        parent2 = await faucet(url, client, 100_000)
        tab_pay, _ = brc121_headers(server_pub, client, parent2, 500)
        body = {
            "beef": tab_pay["x-bsv-beef"],
            "sender": tab_pay["x-bsv-sender"],
            "nonce": tab_pay["x-bsv-nonce"],
            "time": tab_pay["x-bsv-time"],
            "vout": 0,
            "url": "/calls/1",
        }
        async with http.post(f"{gw.base}/.well-known/farebox/pay", json=body) as r:
            assert r.status == 200
            tab_token = (await r.json())["token"]
        secrets += [tab_token, tab_pay["x-bsv-beef"][:60]]
        async with http.get(
            f"{gw.base}/calls/2", headers={"Authorization": f"Bearer {tab_token}"}
        ) as r:
            assert r.status == 200
        # Broken payments and a broken upstream are logged, without their contents.
        bad = dict(headers, **{"x-bsv-beef": base64.b64encode(b"\x01\x00\xbe\xef junk").decode()})
        async with http.get(f"{gw.base}/page/3", headers=bad) as r:
            assert r.status in (400, 402)
        async with http.get(f"{gw.base}/dead/x") as r:
            assert r.status == 502
        admin = f"http://127.0.0.1:{admin_port}"
        async with http.get(
            f"{admin}/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as r:
            assert r.status == 200
        async with http.get(f"{admin}/stats", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
    lines = [line for line in gw.lines if line.strip()]
    key_text = key_file.read_text().strip()
    secrets.append(key_text)
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(entry), line
        for secret in secrets:
            assert secret not in line, f"a secret reached the log: {line[:200]}"
    # Requests are logged with their id, which the client got back.
    access = [json.loads(line) for line in lines if '"logger": "farebox.access"' in line]
    assert any(entry.get("request_id") == rid and entry["path"] == "/page/1" for entry in access)
    assert any(entry["status"] == 502 for entry in access)
    # Each names the service and route pattern that answered it ("" for none).
    paid = next(e for e in access if e.get("request_id") == rid)
    assert (paid["service"], paid["route"]) == ("s", "/page/*")
    failed = next(e for e in access if e["status"] == 502)
    assert (failed["service"], failed["route"]) == ("dead", "/dead/x")
    assert all(isinstance(e["duration_ms"], float) for e in access)
    # Each payment taken or refused leaves one line: service, route, satoshis,
    # txid or reason; never the payer (the secrets check above covers that).
    payments = [json.loads(line) for line in lines if '"logger": "farebox.payments"' in line]
    taken = [e for e in payments if e["message"].startswith("payment accepted")]
    assert {(e["service"], e["route"], e["satoshis"]) for e in taken} == {
        ("s", "/page/*", 30),
        ("s", "/calls/*", 500),
    }
    assert all(len(e["txid"]) == 64 for e in taken)
    refused = [e for e in payments if e["message"].startswith("payment refused")]
    assert [(e["service"], e["route"]) for e in refused] == [("s", "/page/*")]
    assert refused[0]["reason"] and "payer" not in refused[0]
    own = [e for e in access if e["path"].startswith(urls.PAY)]
    assert own and all(e["service"] == "" for e in own)  # never the previous request's


def test_the_access_log_is_written_whatever_the_log_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--access-log --log-level warning`: warnings and the access log, nothing
    else (the level alone used to silence the access log it asked for)."""
    root = logging.getLogger()
    access = logging.getLogger("farebox.access")
    saved = (root.handlers[:], root.level, access.level)
    try:
        logs.configure("warning")
        logger = access_logger()
        assert logs.AccessLog(logger, "").enabled
        logger.info("GET /a 200 1.00ms")
        logging.getLogger("farebox.payments").info("not at warning")
        logging.getLogger("farebox.payments").warning("a warning")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        access.setLevel(saved[2])
    err = capsys.readouterr().err
    assert "GET /a 200 1.00ms" in err and "a warning" in err
    assert "not at warning" not in err


def test_a_text_line_ends_with_its_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    """The id sent back in X-Request-Id finds a request's lines in text logs too."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("info")
        logs.REQUEST_ID.set("req-7")
        logging.getLogger("farebox.payments").info("payment accepted")
        logs.REQUEST_ID.set("")
        logging.getLogger("farebox.edge").info("listening")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("farebox.payments: payment accepted (request req-7)")
    assert lines[1].endswith("farebox.edge: listening")
