"""Routing at the edge: the route decided is the route served (issue: the edge holds).

Each case is one kind of disagreement between how Farebox picks a route and
how the request reaches the upstream: Unicode case folding, Host spellings,
and a later catch-all answering a method an earlier priced route refused.
Real gateway, real recording upstream, raw request bytes where clients would
normalise them.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.edge.hosts import HostError, host_name
from gateway.policy import load_policy
from tests.conftest import raw_request

PREMIUM = """\
services:
  kiosk:
    upstream: {upstream}
    mount: /k/premium
    case_sensitive: false
    routes:
      - path: /**
        price: free
  premium:
    upstream: {upstream}
    mount: /premium
    routes:
      - path: /**
        price: 100
        grant: {{lasts: 1h}}
"""


@pytest.mark.parametrize(
    "letter",
    [
        "%E2%84%AA",  # KELVIN SIGN: lower-cases to ASCII k
        "%C4%B0",  # LATIN CAPITAL I WITH DOT ABOVE: lower-cases to two characters
        "%E1%BA%9E",  # LATIN CAPITAL SHARP S: folds to ss
    ],
)
async def test_unicode_case_folding_never_reaches_a_priced_path_free(
    gateway, upstream, letter: str
) -> None:
    base = await gateway(PREMIUM.format(upstream=upstream.url))
    status, _ = await raw_request(base, f"/{letter}/premium/doc")
    assert status in (400, 404), status
    assert upstream.seen == []
    # ASCII case still folds: the free mount is served, and exactly that path goes up.
    status, _ = await raw_request(base, "/K/Premium/doc")
    assert status == 200
    assert upstream.paths == ["/doc"]


HOSTS = """\
services:
  paid:
    upstream: {upstream}
    host: paid.test
    routes:
      - path: /**
        price: 100
        grant: {{lasts: 1h}}
  anything:
    upstream: {upstream}
    preserve_host: true
    routes:
      - path: /**
        price: free
"""


@pytest.mark.parametrize(
    "host", ["paid.test", "PAID.test", "paid.test.", "paid.test.:8080", "Paid.Test.:1"]
)
async def test_every_spelling_of_a_priced_host_is_priced(gateway, upstream, host: str) -> None:
    base = await gateway(HOSTS.format(upstream=upstream.url))
    status, body = await raw_request(base, "/doc", host=host)
    assert status == 402, body[:200]
    assert upstream.seen == []


@pytest.mark.parametrize(
    "host", ["paid..test", "paid test", "paid.test:port", "[::1", "p\u00e4id.test\u0000"]
)
async def test_a_host_no_virtual_host_reads_one_way_is_400(gateway, upstream, host: str) -> None:
    base = await gateway(HOSTS.format(upstream=upstream.url))
    status, body = await raw_request(base, "/doc", host=host)
    assert status == 400, body[:200]
    assert upstream.seen == []


def test_host_names_as_virtual_hosts_read_them() -> None:
    assert host_name("B\u00fccher.Example.:443") == "xn--bcher-kva.example"
    assert host_name("[::1]:8080") == "[::1]"
    assert host_name(None) is None
    with pytest.raises(HostError):
        host_name("a/b")
    # A DNS name and a port at most (RFC 1035: 255): a longer Host names no host.
    assert host_name("a" * 249 + ":65535") == "a" * 249
    with pytest.raises(HostError) as refused:
        host_name("a" * 256)
    assert refused.value.reason == "host-too-long"


FALL_THROUGH = """\
services:
  shop:
    upstream: {upstream}
    routes:
      - path: /paid/**
        price: 100
        grant: {{lasts: 1h}}
      - path: /dual/{{id}}
        methods: [GET, HEAD]
        price: 10
        grant: {{lasts: 1h}}
      - path: /dual/{{n}}
        methods: [POST]
        price: 20
        grant: {{lasts: 1h}}
      - path: /**
        methods: "*"
        price: free
"""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_a_catch_all_never_answers_a_method_a_priced_route_refused(
    gateway, upstream, method: str
) -> None:
    base = await gateway(FALL_THROUGH.format(upstream=upstream.url))
    status, body = await raw_request(base, "/paid/x", method=method)
    assert status == 405, body[:200]
    assert b'"reason": "method-not-allowed"' in body
    assert upstream.seen == []
    # Routes of the same pattern still share a path by method.
    status, _ = await raw_request(base, "/dual/1", method="POST")
    assert status == 402
    # And the catch-all still catches what no earlier pattern claims.
    status, _ = await raw_request(base, "/elsewhere", method=method)
    assert status == 200


async def test_405_carries_allow(gateway, upstream) -> None:
    base = await gateway(FALL_THROUGH.format(upstream=upstream.url))
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /paid/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    head = (await reader.read()).partition(b"\r\n\r\n")[0].lower()
    writer.close()
    assert b"allow: get, head" in head


def test_policy_check_says_what_a_catch_all_does_not_catch(tmp_path) -> None:
    (tmp_path / "p.yaml").write_text(FALL_THROUGH.format(upstream="http://127.0.0.1:9"))
    notes = [str(n) for n in load_policy(tmp_path).notes]
    assert any(
        "/** does not catch any other method on /paid/**" in n and "405" in n for n in notes
    ), notes


TWINS = """\
services:
  kiosk:
    upstream: {upstream}
    mount: /kiosk
    case_sensitive: false
    routes:
      - path: /**
        price: 100
        grant: {{lasts: 1h}}
  secret:
    upstream: {upstream}
    mount: /secret
    case_sensitive: false
    routes:
      - path: /**
        price: 100
        grant: {{lasts: 1h}}
  everything:
    upstream: {upstream}
    routes:
      - path: /**
        price: free
"""


@pytest.mark.parametrize(
    "target",
    [
        "/%E2%84%AAiosk/doc",  # KELVIN SIGN: k to Java, Go, Spring
        "/%C5%BFecret/doc",  # LONG S: S upper-cased
        "/%C4%B1nvoice/doc",  # dotless i: I upper-cased
        "/%C4%B0nvoice/doc",  # I with dot: two characters lower-cased
        "/stra%C3%9Fe",  # sharp s: SS upper-cased
    ],
)
async def test_characters_that_fold_into_ascii_are_refused_where_case_folds(
    gateway, upstream, target: str
) -> None:
    # A free catch-all beside case-insensitive priced mounts: a case-insensitive
    # upstream could read these as the priced path, so they have no one reading.
    base = await gateway(TWINS.format(upstream=upstream.url))
    status, body = await raw_request(base, target)
    assert status == 400 and b"ambiguous-case" in body, body[:200]
    assert upstream.seen == []
    status, _ = await raw_request(base, "/caf%C3%A9")  # an accent folds nowhere: served
    assert status == 200


@pytest.mark.parametrize(
    "name",
    ["X.Farebox.Grant", "X_Farebox_Grant", "X-HTTP-Method-Override", "X-Method-Override",
     "X-HTTP-Method", "X-Original-URL", "X-Rewrite-URL", "X.Forwarded.For",
     "True-Client-IP", "CF-Connecting-IP", "X-Client-IP", "X-Forwarded-Port"],
)  # fmt: skip
async def test_twins_and_overrides_never_reach_the_upstream(gateway, upstream, name: str) -> None:
    base = await gateway(FALL_THROUGH.format(upstream=upstream.url))
    status, _ = await raw_request(base, "/elsewhere", headers=f"{name}: GET\r\n")
    assert status == 200
    assert name.lower() not in {h.lower() for h in upstream.seen[-1].headers}


@pytest.mark.parametrize("head", ["GET /doc HTTP/1.1\r\nHost: \r\n", "GET /doc HTTP/1.0\r\n"])
async def test_a_request_without_a_host_is_400(gateway, upstream, head: str) -> None:
    base = await gateway(HOSTS.format(upstream=upstream.url))
    address, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(address, int(port))
    writer.write((head + "Connection: close\r\n\r\n").encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.split(b" ", 2)[1] == b"400", data[:200]
    assert upstream.seen == []
