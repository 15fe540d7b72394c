"""Settings: layers, validation, and the chain clients they configure."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_settings
from gateway.serve.assemble import chain_clients


def test_chain_settings_must_be_complete_and_unambiguous() -> None:
    with pytest.raises(ConfigError, match="arc_url needs headers_url"):
        load_settings(environ={"FAREBOX_ARC_URL": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match="either devnet_url or arc_url"):
        load_settings(
            environ={
                "FAREBOX_ARC_URL": "http://a",
                "FAREBOX_HEADERS_URL": "http://h",
                "FAREBOX_DEVNET_URL": "http://d",
            }
        )
    assert not load_settings(environ={}).payments_enabled


async def test_arc_settings_reach_the_broadcaster() -> None:
    settings = load_settings(
        environ={
            "FAREBOX_ARC_URL": "http://127.0.0.1:9/",
            "FAREBOX_ARC_API_KEY": "k3y",
            "FAREBOX_ARC_CALLBACK_URL": "https://gw.example.gov/arc-callback",
            "FAREBOX_ARC_CALLBACK_TOKEN": "t0ken",
            "FAREBOX_HEADERS_URL": "http://127.0.0.1:8",
        }
    )
    assert settings.payments_enabled
    closers: list = []
    _, broadcaster = chain_clients(settings, closers)
    headers = {k.lower(): v for k, v in broadcaster._post_headers.items()}
    assert headers["x-callbackurl"] == "https://gw.example.gov/arc-callback"
    assert headers["x-callbacktoken"] == "t0ken"
    assert headers["x-waitfor"] == "SEEN_ON_NETWORK"
    for close in closers:
        await close()
