"""nginx in front of Farebox, with the templates in nginx/ as shipped.

A real nginx (Debian's) runs each template, its ports, certificate and
upstream addresses put in; a real `farebox serve` takes payments on a devnet
over HTTP; clients speak TLS to nginx from loopback addresses of their own
(127.0.2.9, 127.0.3.9), so nginx (127.0.0.1, the only trusted proxy) and each
client are different networks to the free quotas.

- farebox-tls.conf: nginx terminates TLS, Farebox does everything else.
- farebox-auth-request.conf: nginx proxies to the service itself and asks
  Farebox (auth_request) whether each request is paid.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import jwt
import pytest
from aiohttp import web
from bsv import PrivateKey, PublicKey
from yarl import URL

from gateway import keys
from gateway.devnet import Devnet
from tests.chainkit import atomic, faucet, pay, spend
from tests.conftest import FORGED, Upstream, recording_app
from tests.farebox_process import Running, serve
from tests.nginx_process import (
    client_tls,
    free_port,
    need_nginx,
    render,
    running_nginx,
    self_signed,
)

CLIENT = "127.0.2.9"  # a client's address: another /24 than nginx's 127.0.0.1
OTHER_CLIENT = "127.0.3.9"
PRIVATE = ("x-bsv-beef", "x-bsv-sender", "x-bsv-nonce", "x-bsv-time", "x-bsv-vout")

POLICY = """\
services:
  s:
    upstream: {upstream}
    routes:
      - path: /page/*
        price: 40
        grant: {{lasts: 1h}}
      - path: /counted/*
        price: free
        free_quota: {{requests: 2, per: 1h}}
      - path: /quota/*
        price: 40
        grant: {{lasts: 1h}}
        free_quota: {{requests: 2, per: 1h}}
      - path: /big/{{size}}
        price: free
      - path: /ws
        price: free
      - path: /free/**
        methods: "*"
        price: free
  drip:
    upstream: {drip}
    mount: /drip
    routes:
      - path: /**
        price: free
"""


@dataclass
class Front:
    """nginx in front of a Farebox, and what the test needs to talk to them."""

    base: str  # https://127.0.0.1:PORT, nginx
    http_port: int  # nginx's plain-HTTP redirect
    farebox: Running
    server_pub: str
    devnet: str
    chain: Devnet
    upstream: Upstream  # the service requests must reach
    cert: Path  # the self-signed certificate nginx serves
    released: asyncio.Event  # lets the drip upstream finish its answer

    def client(self, address: str = CLIENT) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=client_tls(self.cert), local_addr=(address, 0))
        return aiohttp.ClientSession(connector=connector)


async def start_app(app: web.Application, stack: AsyncExitStack) -> str:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


def drip_app(released: asyncio.Event) -> web.Application:
    """Sends a first chunk, then the rest only once the client has the first:
    any proxy that holds answers back until they are complete hangs it."""

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no length: chunked
        await response.prepare(request)
        await response.write(b"first;")
        try:
            await asyncio.wait_for(released.wait(), 10)
        except TimeoutError:
            await response.write(b"too-late;")
        await response.write(b"rest")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", drip)
    return app


@pytest.fixture
async def front(tmp_path: Path, upstream: Upstream, devnet_http) -> AsyncIterator:
    """Start Farebox and nginx for one template: `await front("farebox-tls.conf")`."""
    need_nginx()
    url, chain = devnet_http
    cert, cert_key = self_signed(tmp_path)
    released = asyncio.Event()
    async with AsyncExitStack() as stack:

        async def start(template: str, farebox_upstream: str | None = None) -> Front:
            # Farebox's policy upstream: the service itself, or (auth_request
            # tests) a decoy that shows whether Farebox proxied anything.
            drip = await start_app(drip_app(released), stack)
            folder = tmp_path / "policies"
            folder.mkdir()
            (folder / "p.yaml").write_text(
                POLICY.format(upstream=farebox_upstream or upstream.url, drip=drip)
            )
            key_file = tmp_path / "server.key"
            server_pub = keys.generate(key_file).public_key().hex()
            farebox = await stack.enter_async_context(
                serve(
                    "--policies", str(folder), "--key-file", str(key_file), "--port", "0",
                    "--devnet-url", url, "--token-keys", str(tmp_path / "tk"),
                    "--trusted-proxies", "127.0.0.1", "--no-watch",
                )
            )  # fmt: skip
            https, http = free_port(), free_port()
            site = render(
                template,
                {
                    "listen 443 ssl http2;": f"listen 127.0.0.1:{https} ssl http2;",
                    "listen [::]:443 ssl http2;": "",
                    "listen 80;": f"listen 127.0.0.1:{http};",
                    "listen [::]:80;": "",
                    "/etc/ssl/farebox/fullchain.pem": str(cert),
                    "/etc/ssl/farebox/privkey.pem": str(cert_key),
                    "server 127.0.0.1:8402;": f"server 127.0.0.1:{farebox.port};",
                    **(
                        {
                            "server 10.0.0.5:8080;": f"server {upstream.url[7:]};",
                            "/var/cache/farebox-nginx": decision_cache(stack),
                        }
                        if "auth-request" in template
                        else {}
                    ),
                },
            )
            await stack.enter_async_context(running_nginx(site, (https, http)))
            return Front(
                f"https://127.0.0.1:{https}",
                http,
                farebox,
                server_pub,
                url,
                chain,
                upstream,
                cert,
                released,
            )

        yield start


def decision_cache(stack: AsyncExitStack) -> str:
    """A directory for nginx's cache of Farebox's decisions, removed with `stack`.

    Writable by nginx's workers (nobody under root): pytest's tmp_path is
    for its owner only.
    """
    cache = Path(tempfile.mkdtemp(prefix="farebox-nginx-cache-"))
    cache.chmod(0o777)
    stack.callback(shutil.rmtree, cache, ignore_errors=True)
    return str(cache)


async def fat_payment(front: Front, satoshis: int) -> tuple[dict[str, str], str]:
    """BRC-121 headers paying `satoshis`, whose x-bsv-beef is over 16 KB (twice
    nginx's default header buffer: its parent is an unconfirmed transaction
    with 501 outputs); and the payment's txid."""
    client = PrivateKey()
    funding = await faucet(front.devnet, client, 1_000_000)
    fat = spend(
        funding, 0, client, [(client.public_key(), 1000)] * 500 + [(client.public_key(), 400_000)]
    )
    assert front.chain.submit(fat).accepted
    now = str(int(time.time() * 1000))
    nonce = "ZmF0"
    payment = pay(
        PublicKey(front.server_pub),
        client,
        satoshis,
        None,
        parent=fat,
        prefix=nonce,
        suffix=base64.b64encode(now.encode()).decode(),
    )
    beef = base64.b64encode(atomic(payment.tx, funding, fat, payment.tx)).decode()
    assert len(beef) > 16_000
    headers = {
        "x-bsv-beef": beef,
        "x-bsv-sender": client.public_key().hex(),
        "x-bsv-nonce": nonce,
        "x-bsv-time": now,
        "x-bsv-vout": "0",
    }
    return headers, payment.tx.txid()


def http2_curl() -> str | None:
    """curl with HTTP/2 (aiohttp speaks HTTP/1.1 only), if installed."""
    curl = shutil.which("curl")
    if curl is None:
        return None
    features = subprocess.run([curl, "-V"], capture_output=True, text=True, check=False).stdout
    return curl if "HTTP2" in features else None


async def get_http2(
    front: Front, path: str, headers: dict[str, str]
) -> tuple[str, int, dict[str, str]] | None:
    """GET over HTTP/2 with curl: the HTTP version, status and headers (lower-case
    names); None, with a warning, where curl with HTTP/2 is missing."""
    curl = http2_curl()
    if curl is None:
        warnings.warn("curl with HTTP/2 is missing: HTTP/2 through nginx not tested", stacklevel=2)
        return None
    args = [curl, "-sS", "--http2", "--cacert", str(front.cert), "--interface", CLIENT]
    args += ["-o", "/dev/null", "-D", "-", "-w", "version=%{http_version}"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    proc = await asyncio.create_subprocess_exec(
        *args, front.base + path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    head, _, version = out.decode().rpartition("version=")
    lines = head.strip().splitlines()
    status = int(lines[0].split()[1])
    found = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return version, status, lower(found)


async def problem_of(r: aiohttp.ClientResponse) -> dict:
    assert r.content_type == "application/problem+json", r.content_type
    return json.loads(await r.read())


async def websocket_echo(http: aiohttp.ClientSession, front: Front) -> None:
    async with http.ws_connect(front.base.replace("https", "wss") + "/ws") as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=5)) == "echo:hello"


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# --- TLS-terminating front: nginx/farebox-tls.conf -----------------------------------------


async def test_tls_front_passes_free_requests_with_the_client_address(front) -> None:
    gw = await front("farebox-tls.conf")
    async with gw.client() as http:
        async with http.get(f"{gw.base}/free/a?q=1") as r:
            assert r.status == 200 and (await r.json())["path"] == "/free/a?q=1"
        seen = lower(gw.upstream.seen[-1].headers)
        # nginx says who the client is; Farebox, trusting nginx, extends the chain.
        assert seen["x-forwarded-for"] == f"{CLIENT}, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-forwarded-host"] == "127.0.0.1"

        # What the client claims stays a claim at the left of the chain; its
        # own X-Farebox-* and payment headers never reach the upstream.
        spoof = {"X-Forwarded-For": "203.0.113.7", "X-Farebox-Grant": "forged", "x-bsv-nonce": "n"}
        async with http.get(f"{gw.base}/free/b", headers=spoof) as r:
            assert r.status == 200
        seen = lower(gw.upstream.seen[-1].headers)
        assert seen["x-forwarded-for"] == f"203.0.113.7, {CLIENT}, 127.0.0.1"
        assert "x-farebox-grant" not in seen and "x-bsv-nonce" not in seen

        # Farebox's auth endpoint is not public.
        async with http.get(f"{gw.base}/.well-known/farebox/auth") as r:
            assert r.status == 404

        # WebSocket upgrades pass nginx and Farebox.
        await websocket_echo(http, gw)

        # Plain HTTP is sent to HTTPS.
        async with http.get(
            f"http://127.0.0.1:{gw.http_port}/free/c?x=1", allow_redirects=False
        ) as r:
            assert r.status == 301 and r.headers["Location"] == "https://127.0.0.1/free/c?x=1"


async def test_tls_front_challenge_payment_and_replay(front) -> None:
    gw = await front("farebox-tls.conf")
    async with gw.client() as http:
        async with http.get(f"{gw.base}/page/1") as r:
            assert r.status == 402
            assert r.headers["x-bsv-sats"] == "40" and r.headers["x-bsv-server"] == gw.server_pub
            assert (await problem_of(r))["reason"] == "payment-required"
        assert gw.upstream.seen == []

        # A payment whose BEEF header is over 16 KB passes nginx.
        payment, txid = await fat_payment(gw, 40)
        async with http.get(f"{gw.base}/page/1", headers=payment) as r:
            assert r.status == 200, await r.text()
            token = r.headers["X-Farebox-Token"]
            assert "farebox_token=" in r.headers["Set-Cookie"]
            assert "Secure" in r.headers["Set-Cookie"]
        seen = lower(gw.upstream.seen[-1].headers)
        grant = jwt.decode(seen["x-farebox-grant"], options={"verify_signature": False})
        assert grant["txid"] == txid and not set(PRIVATE) & set(seen)

        async with http.get(f"{gw.base}/page/1", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
        # Nor does a service's own word on tokens, balances or prices reach
        # the client (proxy_hide_header in the template).
        async with http.get(
            f"{gw.base}/page/1?forge=1", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 200
            assert not {k.lower() for k in FORGED} & {k.lower() for k in r.headers}
        # Over HTTP/2 the same payment passes too, and gets the same token back.
        if (h2 := await get_http2(gw, "/page/1", payment)) is not None:
            version, status, answer = h2
            assert (version, status) == ("2", 200) and answer["x-farebox-token"] == token
        # The same payment for another page: refused.
        async with http.get(f"{gw.base}/page/2", headers=payment) as r:
            assert r.status == 402
            assert (await problem_of(r))["reason"] == "payment-reused"
        assert {p.split("?")[0] for p in gw.upstream.paths} == {"/page/1"}  # never /page/2


async def test_tls_front_streams_both_ways(front) -> None:
    gw = await front("farebox-tls.conf")
    async with gw.client() as http:
        # 5 MB down, intact.
        size = 5_000_000
        async with http.get(f"{gw.base}/big/{size}") as r:
            assert r.status == 200
            body = await r.read()
        assert len(body) == size and body == b"x" * size

        # 3 MB up, intact.
        upload = os.urandom(3_000_000)
        async with http.post(f"{gw.base}/free/upload", data=upload) as r:
            answer = await r.json()
        assert r.status == 200 and answer["size"] == len(upload)
        assert answer["sha256"] == hashlib.sha256(upload).hexdigest()

        # Unbuffered: the first chunk arrives while the upstream holds the rest.
        async with http.get(f"{gw.base}/drip/x") as r:
            assert r.status == 200
            first = await asyncio.wait_for(r.content.readexactly(len(b"first;")), 5)
            assert first == b"first;"
            gw.released.set()
            assert await r.read() == b"rest"


async def test_tls_front_quota_counts_the_client_not_nginx(front) -> None:
    gw = await front("farebox-tls.conf")
    statuses = []
    async with gw.client() as http:
        # Another made-up address each time: still one client.
        for i in range(3):
            spoof = {"X-Forwarded-For": f"198.51.{100 + i}.7"}
            async with http.get(f"{gw.base}/counted/x", headers=spoof) as r:
                statuses.append((r.status, r.headers.get("RateLimit-Remaining")))
                if r.status == 429:
                    assert (await problem_of(r))["reason"] == "quota-exhausted"
    assert statuses == [(200, "1"), (200, "0"), (429, "0")]
    # Another client behind the same nginx has its own quota.
    async with gw.client(OTHER_CLIENT) as http, http.get(f"{gw.base}/counted/x") as r:
        assert r.status == 200 and r.headers["RateLimit-Remaining"] == "1"


async def test_tls_front_paywall_checkout_url_is_https(front) -> None:
    gw = await front("farebox-tls.conf")
    async with (
        gw.client() as http,
        http.get(f"{gw.base}/page/1", headers={"Accept": "text/html"}) as r,
    ):
        assert r.status == 402 and r.content_type == "text/html"
        page = await r.text()
    # The payment URI's `r=`: where a wallet posts the transaction.
    found = re.search(r"[?&;]r=([^&\"'<> ]+)", page)
    assert found is not None
    assert unquote(found.group(1)).startswith("https://127.0.0.1/.well-known/farebox/checkout/")


# --- auth_request: nginx/farebox-auth-request.conf ------------------------------------------


@pytest.fixture
async def decoy() -> AsyncIterator[Upstream]:
    """Farebox's own policy upstream in the auth_request tests: it must see
    nothing, since nginx, not Farebox, proxies what Farebox allows."""
    record = Upstream("")
    async with AsyncExitStack() as stack:
        record.url = await start_app(recording_app(record), stack)
        yield record


async def test_auth_request_free_requests_go_straight_to_the_service(front, decoy) -> None:
    gw = await front("farebox-auth-request.conf", decoy.url)
    sent = {
        "Cookie": "a=1; farebox_token=eyJ.x.y; b=2; farebox_token=eyJ.z.w",
        "Authorization": "Bearer eyJ.x.y",
        "X-Farebox-Grant": "forged",
        "X-Farebox-Eligibility": "eyJ.e.f",
        "X-Farebox-Token": "eyJ.x.y",
        **dict.fromkeys(PRIVATE, "0"),
    }
    async with gw.client() as http:
        async with http.get(f"{gw.base}/free/a?q=1", headers=sent) as r:
            assert r.status == 200 and r.headers["X-Upstream"] == "yes"
            assert "X-Farebox-Token" not in r.headers and "Set-Cookie" not in r.headers
        seen = lower(gw.upstream.seen[-1].headers)
        assert gw.upstream.seen[-1].raw_path == "/free/a?q=1"
        assert seen["x-forwarded-for"] == CLIENT  # one hop: nginx's own
        assert seen["x-forwarded-proto"] == "https"
        assert seen["cookie"] == "a=1; b=2"
        assert "authorization" not in seen
        assert not {k for k in seen if k.startswith(("x-farebox-", "x-bsv-"))}

        # Other spellings of the credential cookie: never to the service.
        for spelling in (
            "FAREBOX_TOKEN=t",
            "farebox_token =t",
            '"farebox_token"=t',
            "farebox.token=t",
        ):
            async with http.get(f"{gw.base}/free/d", headers={"Cookie": f"a=1; {spelling}"}) as r:
                assert r.status == 200
            assert "token" not in lower(gw.upstream.seen[-1].headers).get("cookie", "").lower()
        # A priced route answered free by its quota is private all the same.
        async with http.get(f"{gw.base}/quota/1") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "private"
        # Method and URL overrides never reach the service.
        overrides = {"X-HTTP-Method-Override": "GET", "X-Original-URL": "/page/1"}
        async with http.post(f"{gw.base}/free/o", headers=overrides, data=b"") as r:
            assert r.status == 200
        assert not {"x-http-method-override", "x-original-url"} & set(
            lower(gw.upstream.seen[-1].headers)
        )
        # Free answers keep the service's own caching: no private added.
        async with http.get(f"{gw.base}/free/e") as r:
            assert "private" not in r.headers.get("Cache-Control", "")

        # More grant cookies than the maps take out: no Cookie at all.
        many = "; ".join(f"farebox_token=t{i}" for i in range(3))
        async with http.get(f"{gw.base}/free/c", headers={"Cookie": f"a=1; {many}"}) as r:
            assert r.status == 200
        assert "cookie" not in lower(gw.upstream.seen[-1].headers)

        # Other credentials are the service's: they pass.
        async with http.get(f"{gw.base}/free/b", headers={"Authorization": "Basic dTpw"}) as r:
            assert r.status == 200
        assert lower(gw.upstream.seen[-1].headers)["authorization"] == "Basic dTpw"

        # A body goes along after the question (which is asked without it).
        upload = os.urandom(1_000_000)
        async with http.post(f"{gw.base}/free/upload", data=upload) as r:
            assert r.status == 200
            assert (await r.json())["sha256"] == hashlib.sha256(upload).hexdigest()

        # Free quotas: counted per client, their headers passed on; past the
        # quota Farebox answers (nginx hands it the request on a 401).
        answers = []
        for i in range(3):
            spoof = {"X-Forwarded-For": f"198.51.{100 + i}.7"}
            async with http.get(f"{gw.base}/counted/x", headers=spoof) as r:
                answers.append((r.status, r.headers.get("RateLimit-Remaining")))
        assert answers == [(200, "1"), (200, "0"), (429, "0")]

        await websocket_echo(http, gw)

        # Unknown paths: Farebox's answer.
        async with http.get(f"{gw.base}/elsewhere") as r:
            assert r.status == 404 and (await problem_of(r))["reason"] == "no-route"
        # Farebox's own paths, straight to Farebox.
        async with http.get(f"{gw.base}/.well-known/jwks.json") as r:
            assert r.status == 200 and (await r.json())["keys"]
        async with http.get(f"{gw.base}/healthz") as r:
            assert r.status == 200
        async with http.get(
            f"{gw.base}/.well-known/farebox/auth", headers={"X-Original-URI": "/page/1"}
        ) as r:
            assert r.status == 404  # nginx's alone
    assert decoy.seen == []

    # The auth endpoint answers nginx only.
    connector = aiohttp.TCPConnector(local_addr=(CLIENT, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as direct,
        direct.get(
            f"{gw.farebox.base}/.well-known/farebox/auth", headers={"X-Original-URI": "/free/a"}
        ) as r,
    ):
        assert r.status == 403 and (await problem_of(r))["reason"] == "not-a-trusted-proxy"


async def test_auth_request_payment_grant_token_and_replay(front, decoy) -> None:
    gw = await front("farebox-auth-request.conf", decoy.url)
    async with gw.client() as http:
        # Unpaid: Farebox's 402, as problem+json or as the paywall page.
        async with http.get(f"{gw.base}/page/1") as r:
            assert r.status == 402
            assert r.headers["x-bsv-sats"] == "40" and r.headers["x-bsv-server"] == gw.server_pub
            assert (await problem_of(r))["reason"] == "payment-required"
        async with http.get(f"{gw.base}/page/1", headers={"Accept": "text/html"}) as r:
            assert r.status == 402 and r.content_type == "text/html"
            assert r.headers["x-bsv-sats"] == "40"
        assert gw.upstream.seen == []

        # Paid (a BEEF header over 16 KB): the service answers, and learns
        # what was paid from a grant it can verify with Farebox's JWKS.
        payment, txid = await fat_payment(gw, 40)
        async with http.get(f"{gw.base}/page/1", headers=payment) as r:
            assert r.status == 200, await r.text()
            assert r.headers["X-Upstream"] == "yes"
            token = r.headers["X-Farebox-Token"]
            assert r.headers["Set-Cookie"].startswith("farebox_token=")
            # A paid answer is private: no shared cache in front may keep it.
            assert r.headers["Cache-Control"] == "private"
            assert "Authorization" in ",".join(r.headers.getall("Vary"))
        async with http.get(f"{gw.base}/.well-known/jwks.json") as r:
            jwks = await r.json()
        seen = lower(gw.upstream.seen[-1].headers)
        header = jwt.get_unverified_header(seen["x-farebox-grant"])
        key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
        grant = jwt.decode(
            seen["x-farebox-grant"],
            jwt.PyJWK(key).key,
            algorithms=["EdDSA"],
            audience="farebox:upstream",
        )
        assert grant["txid"] == txid and grant["sats"] == 40
        assert not set(PRIVATE) & set(seen)
        assert "x-farebox-token" not in seen and "authorization" not in seen

        # The token opens the page again, as a bearer or as the cookie; the
        # service sees the grant, never the token.
        for presented in (
            {"Authorization": f"Bearer {token}"},
            {"Cookie": f"lang=en; farebox_token={token}"},
        ):
            async with http.get(f"{gw.base}/page/1", headers=presented) as r:
                assert r.status == 200 and "X-Farebox-Token" not in r.headers
            seen = lower(gw.upstream.seen[-1].headers)
            assert (
                jwt.decode(seen["x-farebox-grant"], options={"verify_signature": False})["txid"]
                == txid
            )
            assert "authorization" not in seen and token not in seen.get("cookie", "")
        # Nor does a service's own word on tokens, balances or prices reach
        # the client (proxy_hide_header in the template).
        async with http.get(
            f"{gw.base}/page/1?forge=1", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 200
            assert not {k.lower() for k in FORGED} & {k.lower() for k in r.headers}
        # Over HTTP/2 the same payment passes too, and gets the same token back.
        if (h2 := await get_http2(gw, "/page/1", payment)) is not None:
            version, status, answer = h2
            assert (version, status) == ("2", 200) and answer["x-farebox-token"] == token
            assert not set(PRIVATE) & set(lower(gw.upstream.seen[-1].headers))

        # The same payment for another page: Farebox refuses it.
        async with http.get(f"{gw.base}/page/2", headers=payment) as r:
            assert r.status == 402
            assert (await problem_of(r))["reason"] == "payment-reused"
    assert {p.split("?")[0] for p in gw.upstream.paths} == {"/page/1"}
    assert decoy.seen == []


def test_templates_say_what_to_change() -> None:
    for name in ("farebox-tls.conf", "farebox-auth-request.conf"):
        text = render(name, {})
        for needed in ("server_name", "ssl_certificate ", "upstream farebox", "CHANGE"):
            assert needed in text, (name, needed)
        assert "large_client_header_buffers 4 64k;" in text


async def test_auth_request_refuses_a_path_resolvers_read_two_ways(
    front, decoy, monkeypatch
) -> None:
    # `/page//../1` is /1 to a resolver that folds '//' first and /page/1 to
    # RFC 3986 and WHATWG resolvers. With a free catch-all, reading it the
    # first way let nginx hand the priced page's raw path to the service unpaid.
    catch_all = POLICY.replace(
        '      - path: /free/**\n        methods: "*"\n        price: free\n',
        '      - path: /free/**\n        methods: "*"\n        price: free\n'
        "      - path: /**\n        price: free\n",
    )
    assert catch_all != POLICY
    monkeypatch.setattr(sys.modules[__name__], "POLICY", catch_all)
    gw = await front("farebox-auth-request.conf", decoy.url)
    async with gw.client() as http:
        async with http.get(gw.base + "/page/1") as r:
            assert r.status == 402
        async with http.get(URL(gw.base + "/page//../1", encoded=True)) as r:
            assert r.status == 400, await r.text()
            assert (await r.json(content_type=None))["reason"] == "ambiguous-dot-segment"
    assert not any("/page" in seen.raw_path for seen in gw.upstream.seen)


# --- BRC-103/104 authenticated clients (AuthFetch) behind nginx -------------------------------


@pytest.mark.parametrize("template", ["farebox-tls.conf", "farebox-auth-request.conf"])
async def test_authenticated_clients_are_answered_signed_behind_nginx(
    front, decoy, template: str
) -> None:
    """The handshake reaches Farebox, a signed request is answered signed (in
    auth_request mode nginx hands it to Farebox, which alone can sign the
    answer), and a priced 402 asks for BRC-105."""
    from tests.test_peer_auth import Client

    gw = await front(template, decoy.url if "auth-request" in template else None)
    client = Client(gw.base, server=gw.server_pub, session=gw.client)
    await client.handshake()
    free = await client.request("GET", "/free/a?q=1")  # its signature is checked
    assert free.status == 200 and json.loads(free.body)["path"] == "/free/a?q=1"
    priced = await client.request("GET", "/page/1")
    assert priced.status == 402
    assert priced.headers["x-bsv-payment-satoshis-required"] == "40"
    replayed = await client.send("GET", "/free/b", client.sign("GET", "/free/b"))
    assert replayed.status == 200
    again = await client.send("GET", "/free/b", client.sent[-1])
    assert again.status == 401
