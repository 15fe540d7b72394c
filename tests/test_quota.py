"""Free quotas: N free requests per client network per window, then pay (or 429)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway.pricing.quota import client_network

POLICY = """\
services:
  data:
    upstream: {upstream}
    routes:
      - path: /query
        price: 10
        free_quota: {{requests: 3, per: 2s}}
        description: Three free queries every two seconds, then 10 satoshis each
      - path: /search
        price: free
        free_quota: {{requests: 2, per: 2s}}
      - path: /api
        price: 10
        free_quota: {{requests: 2, per: 1h, by: key, key_header: X-Api-Key}}
"""


@pytest.mark.parametrize(
    ("remote", "network"),
    [
        ("203.0.113.7", "203.0.113.0/24"),
        ("203.0.113.250", "203.0.113.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),  # IPv4-mapped counts as IPv4
        (None, "unknown"),
        ("not an address", "unknown"),
    ],
)
def test_clients_are_counted_by_network(remote: str | None, network: str) -> None:
    assert client_network(remote) == network


async def get(
    base: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(base + path, headers=headers) as r:
        await r.read()
        return r.status, dict(r.headers)


async def test_priced_route_is_free_within_quota_then_asks_for_payment(gateway, upstream) -> None:
    base = await gateway(POLICY.format(upstream=upstream.url))
    seen = []
    for _ in range(3):
        status, headers = await get(base, "/query")
        assert status == 200
        seen.append(headers["RateLimit-Remaining"])
        assert headers["RateLimit-Limit"] == "3" and headers["RateLimit-Policy"] == "3;w=2"
    assert seen == ["2", "1", "0"]
    status, headers = await get(base, "/query")
    assert status == 402 and headers["x-bsv-sats"] == "10"
    assert headers["RateLimit-Remaining"] == "0" and int(headers["Retry-After"]) >= 1
    assert len(upstream.seen) == 3  # nothing served past the quota

    await asyncio.sleep(2.1)  # the window resets
    status, headers = await get(base, "/query")
    assert status == 200 and headers["RateLimit-Remaining"] == "2"


async def test_free_route_quota_answers_429(gateway, upstream) -> None:
    base = await gateway(POLICY.format(upstream=upstream.url))
    assert [(await get(base, "/search"))[0] for _ in range(3)] == [200, 200, 429]
    status, headers = await get(base, "/search")
    assert status == 429 and headers["RateLimit-Remaining"] == "0" and "Retry-After" in headers


async def test_quota_counts_per_route(gateway, upstream) -> None:
    base = await gateway(POLICY.format(upstream=upstream.url))
    for _ in range(3):
        assert (await get(base, "/query"))[0] == 200
    assert (await get(base, "/search"))[0] == 200  # another route, its own count


async def test_quota_by_client_key(gateway, upstream) -> None:
    base = await gateway(POLICY.format(upstream=upstream.url))
    alice, bob = {"X-Api-Key": "alice-key"}, {"X-Api-Key": "bob-key"}
    assert [(await get(base, "/api", alice))[0] for _ in range(3)] == [200, 200, 402]
    assert (await get(base, "/api", bob))[0] == 200  # a key of its own
    # Without a key the client's network is counted instead.
    assert [(await get(base, "/api"))[0] for _ in range(3)] == [200, 200, 402]
    # The upstream still gets the key (it is the client's, not Farebox's).
    assert upstream.seen[0].headers["X-Api-Key"] == "alice-key"


def test_quota_validation(tmp_path) -> None:
    from gateway.policy import PolicyError, load_policy

    (tmp_path / "p.yaml").write_text(
        "services:\n  s:\n    upstream: http://127.0.0.1:1\n    routes:\n"
        "      - path: /x\n        price: 5\n        free_quota: {requests: 0, per: 1h, by: cookie}\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    text = str(info.value)
    assert "p.yaml:7:" in text
    assert "free_quota.by: Input should be 'ip' or 'key'" in text


def test_trusted_proxies_name_the_client() -> None:
    from gateway.edge.forwarded import client_address, networks

    trusted = networks(["127.0.0.1/32", "10.0.0.0/8"])
    # nginx (trusted) forwards for a client; a spoofed hop on the left is ignored.
    assert client_address("127.0.0.1", "6.6.6.6, 203.0.113.9", trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", "203.0.113.9, 10.1.2.3", trusted) == "203.0.113.9"
    # An untrusted peer's header is not believed.
    assert client_address("198.51.100.1", "203.0.113.9", trusted) == "198.51.100.1"
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"
