"""Server settings from three layers: config file < FAREBOX_* environment < flags.

Every setting has one name used everywhere: `read_timeout` in the YAML file,
`FAREBOX_READ_TIMEOUT` in the environment, `--read-timeout` on the command
line. Unknown keys in the file are errors, as in policies.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.policy.schema import Duration

ENV_PREFIX = "FAREBOX_"
STORE_SCHEMES = ("redis://", "rediss://", "redis+sentinel://", "redis+cluster://")


class ConfigError(Exception):
    pass


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8402, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    policies: Path = Path("policies")
    key_file: Path | None = None
    connect_timeout: Duration = 5
    read_timeout: Duration = 60
    upstream_connections: int = Field(256, ge=1)
    shutdown_timeout: Duration = 30
    watch: bool = True
    access_log: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Shared state: "memory" (one process) or a redis://, rediss://,
    # redis+sentinel:// or redis+cluster:// URL
    store: str = "memory"
    store_prefix: str = "farebox:"
    store_pool_size: int = Field(50, ge=1)
    store_timeout: float = Field(2.0, gt=0)
    # Fiat prices: fixed rates (currency units per BSV) or a JSON feed
    rate_usd: float | None = Field(None, gt=0)
    rate_eur: float | None = Field(None, gt=0)
    rate_feed: str | None = None
    rate_max_age: Duration = 300
    # Payments
    token_keys: Path = Path("token-keys")
    payment_window: Duration = 30
    cookie_secure: bool = True
    devnet_url: str | None = None
    arc_url: str | None = None
    arc_api_key: str | None = None
    arc_wait_for: str | None = "SEEN_ON_NETWORK"
    arc_callback_url: str | None = None
    arc_callback_token: str | None = None
    headers_url: str | None = None
    headers_api_key: str | None = None
    # Every receipt is also appended here (JSON lines, 0600): what sweeping reads
    receipts_file: Path | None = Path("receipts.jsonl")
    # Behind a proxy: peers whose X-Forwarded-* headers are believed
    trusted_proxies: tuple[str, ...] = ()
    # The admin listener (loopback; off until a token is given)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(9402, ge=0, le=65535)
    admin_token: str | None = None
    admin_token_file: Path | None = None
    log_format: Literal["text", "json"] = "text"
    # The paywall page
    watch_url: str | None = None  # WhatsOnChain-style API; the devnet when devnet_url is set
    watch_network: Literal["main", "test"] = "main"
    watch_api_key: str | None = None
    wallet_url: str = "http://localhost:3321"
    # How long after a checkout expires a payment to it is still looked for
    # and recorded (a phone wallet that broadcast late): payments/checkout.py
    checkout_grace: Duration = 86_400
    # BRC-103/104 authenticated clients (AuthFetch): how long a session lasts
    # before the client handshakes again, and the most bytes of one request
    # body or answer held in memory to be signed whole (gateway/peer/)
    auth_session: Duration = 600
    auth_body_limit: int = Field(8 * 1024 * 1024, ge=1024)
    # x402 clients (PAYMENT-SIGNATURE, scheme exact): the network they are
    # asked to pay on, a CAIP-2 id of the bsv namespace (bsv:<name> for a devnet)
    x402_network: str = "bsv:mainnet"
    # Payouts (rewards): the treasury that pays them, where they are recorded
    # with the memory store, how often and how many to a transaction.
    payouts_wallet: Path | None = None
    payouts_ledger: Path = Path("payouts.db")
    payouts_interval: Duration = 10
    payouts_batch: int = Field(100, ge=1, le=1000)
    payouts_low_balance: int | None = Field(None, ge=1)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v for v in (part.strip() for part in value.split(",")) if v]
        out = []
        for item in value or ():
            try:
                out.append(str(ipaddress.ip_network(str(item), strict=False)))
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {item!r} is not an address or network (e.g. 10.0.0.0/8)"
                ) from None
        return tuple(out)

    @field_validator("auth_session")
    @classmethod
    def _auth_session(cls, value: float) -> float:
        # Each request nonce is remembered for a session's life: bound it.
        if value > 86_400:
            raise ValueError("an authenticated session lasts at most 24h")
        return value

    @field_validator("x402_network")
    @classmethod
    def _x402_network(cls, value: str) -> str:
        # Imported here: the payments package loads bsv-sdk, which plain
        # commands (--help, policy check) need not wait for.
        from gateway.payments.x402 import network_problem

        problem = network_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _chain(self) -> Settings:
        if self.devnet_url and self.arc_url:
            raise ValueError("set either devnet_url or arc_url, not both")
        if self.store != "memory" and not self.store.startswith(STORE_SCHEMES):
            raise ValueError(
                f"store must be 'memory' or a URL starting with {', '.join(STORE_SCHEMES)}"
            )
        if self.rate_feed and (self.rate_usd or self.rate_eur):
            raise ValueError("set either fixed rates (rate_usd, rate_eur) or rate_feed, not both")
        if self.arc_url and not self.headers_url:
            raise ValueError(
                "arc_url needs headers_url: payments are checked against block headers"
            )
        if self.payouts_wallet is not None and not self.payments_enabled:
            raise ValueError(
                "payouts_wallet needs a chain to pay through: set devnet_url or arc_url"
            )
        return self

    @property
    def shared_store(self) -> bool:
        return self.store != "memory"

    @property
    def payments_enabled(self) -> bool:
        return bool(self.devnet_url or self.arc_url)


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name in Settings.model_fields:
        value = environ.get(ENV_PREFIX + name.upper())
        if value is not None and value != "":
            out[name] = value
    return out


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    return data


def load_settings(
    config: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Merge the layers; `flags` holds only options given on the command line."""
    config = config or (
        Path(environ[ENV_PREFIX + "CONFIG"]) if environ.get(ENV_PREFIX + "CONFIG") else None
    )
    merged: dict[str, Any] = {}
    from_file: dict[str, Any] = {}
    if config is not None:
        from_file = _from_file(config)
        merged.update(from_file)
    from_env = _from_env(environ)
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    merged.update(from_env)
    merged.update(given)
    # Keys whose value is the file's (not overridden): only those are blamed on it.
    from_file = {k: v for k, v in from_file.items() if k not in from_env and k not in given}
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        lines: list[tuple[int, str]] = []  # (line in the file, or 0), message
        where = _key_lines(config) if config is not None else {}
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                hint = difflib.get_close_matches(key, Settings.model_fields, n=1)
                msg = "unknown setting" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            line = f"{key}: {msg.removeprefix('Value error, ')}"
            at = where.get(key, 0) if key in from_file else 0
            if at:  # the admin's file and line
                line = f"{config}:{at}: {line}"
            lines.append((at, line))
        lines.sort(key=lambda found: found[0])  # in the file's order
        raise ConfigError("invalid settings: " + "; ".join(text for _, text in lines)) from None


def _key_lines(path: Path) -> dict[str, int]:
    """The line (1-based) each top-level key of a YAML config file is on."""
    try:
        node = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
