"""What a policy file may say, validated strictly.

These models are both the file format (pydantic rejects unknown keys and wrong
types, and we turn its errors into file:line messages) and the plain frozen
data the rest of the gateway reads.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from yarl import URL

from gateway.edge.hosts import HostError, host_name
from gateway.policy.patterns import PatternError, compile_pattern

MAX_SATOSHIS = 21_000_000 * 100_000_000
_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = (7 * 86400, 86400, 3600, 60, 1)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 method token


def parse_duration(value: object) -> int:
    """'90s', '15m', '24h', '7d', '1h30m' → seconds (> 0)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"expected a duration like '30s', '15m', '24h' or '7d', got {value!r}")
    if isinstance(value, int):
        raise ValueError(f"a duration needs a unit: write '{value}s' for seconds")
    m = _DURATION.fullmatch(value.strip())
    if not value.strip() or not m:
        raise ValueError(
            f"{value!r} is not a duration: use a number and a unit (s, m, h, d, w), "
            "largest first, e.g. '30s', '15m', '1h30m', '7d'"
        )
    seconds = sum(int(n) * u for n, u in zip(m.groups(), _UNITS, strict=True) if n)
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
    return seconds


Duration = Annotated[int, BeforeValidator(parse_duration)]


def _parse_price(value: object) -> object:
    if isinstance(value, Price):
        return value
    if value == "free":
        return {"satoshis": 0}
    if isinstance(value, dict):
        return _fiat_price(value)
    if isinstance(value, bool):
        raise ValueError(f"price must be 'free' or a whole number of satoshis, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("price must be at least 1 satoshi; write 'free' for no charge")
        if value > MAX_SATOSHIS:
            raise ValueError("price is more satoshis than will ever exist")
        return {"satoshis": value}
    if isinstance(value, float):
        raise ValueError(f"price must be a whole number of satoshis, got {value!r}")
    raise ValueError(
        f"price must be 'free', a whole number of satoshis, or {{usd_cents: N}} / {{eur_cents: N}}, got {value!r}"
    )


def _fiat_price(value: dict) -> dict:
    keys = set(value)
    if len(keys) != 1 or not keys <= {"usd_cents", "eur_cents"}:
        raise ValueError("a fiat price is exactly one of {usd_cents: N} or {eur_cents: N}")
    (key,) = keys
    amount = value[key]
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ValueError(f"{key} must be a number, got {amount!r}")
    cents = Decimal(str(amount))
    if not (cents.is_finite() and Decimal("0.0001") <= cents <= Decimal(10**9)):
        raise ValueError(f"{key} must be between 0.0001 and 1,000,000,000")
    return {"cents": cents, "currency": key[:3].upper()}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Frozen):
    """Satoshis, or cents of a currency converted at request time (gateway.pricer)."""

    satoshis: int = 0
    cents: Decimal | None = None
    currency: Literal["USD", "EUR"] | None = None

    @property
    def free(self) -> bool:
        return self.satoshis == 0 and self.currency is None


class Grant(_Frozen):
    """What one payment buys: how long, and whether just this resource or the route."""

    lasts: Duration = 300
    covers: Literal["resource", "route"] = "resource"


_DEFAULT_GRANT = Grant()


class Quota(_Frozen):
    """Free requests per client per window: per network (IPv4 /24, IPv6 /64),
    or per client key (the value of `key_header`; requests without one are
    counted by network). Client keys must be checked before Farebox sees
    them (nginx, an API gateway), or anyone can mint a fresh quota."""

    requests: int = Field(ge=1, le=1_000_000_000)
    per: Duration
    by: Literal["ip", "key"] = "ip"
    key_header: str = "X-Api-Key"

    @field_validator("key_header")
    @classmethod
    def _key_header(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError(f"{value!r} is not a header name")
        return value


class Concession(_Frozen):
    """A discount, or free requests of its own, for holders of an eligibility
    credential from one issuer; or, with neither, the proof of eligibility a
    reward route requires (residents, voters).

    The issuer (a benefits agency, say) signs short-lived JWTs; its public
    key is given inline (PEM) or as a JWKS file, relative to the policy file.
    `free_quota` is counted per credential holder (the credential's `sub`),
    not per network, and is used before any price or discount applies.
    """

    description: str = ""
    discount: int = Field(default=0, ge=0, le=100)  # percent off; 100 is free
    free_quota: Quota | None = None
    issuer_key: str | None = None
    issuer_jwks: str | None = None
    issuer: str | None = None  # the `iss` the credentials must carry, if set

    @model_validator(mode="after")
    def _one_source(self) -> Concession:
        if (self.issuer_key is None) == (self.issuer_jwks is None):
            raise ValueError("give exactly one of issuer_key (PEM) or issuer_jwks (a file)")
        return self

    @property
    def gives(self) -> bool:
        """Whether it lowers a price (a discount or a free quota); without either it
        only proves eligibility, as a reward's `requires` asks."""
        return self.discount > 0 or self.free_quota is not None


MB = 1_000_000  # bytes: per-MB prices count decimal megabytes


class Meter(_Frozen):
    """Charged from a prepaid tab, per request, per MB of response body or per
    unit the upstream reports in a response header. The route's `price` is the
    price of one unit; `most` is the most units one request may use (what is
    held on the tab before the request goes upstream)."""

    per: Literal["request", "mb", "unit"]
    most: Annotated[Decimal, Field(gt=0, le=10**9)] = Decimal(1)
    units_header: str = "X-Usage-Units"

    @field_validator("most", mode="before")
    @classmethod
    def _most(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
            raise ValueError(f"most must be a number of units, got {value!r}")
        return Decimal(str(value))

    @field_validator("units_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value) or value.lower().startswith(("x-farebox-", "x-bsv-")):
            raise ValueError(f"{value!r} is not a header name the upstream can send")
        return value

    @model_validator(mode="after")
    def _request_is_one(self) -> Meter:
        if self.per == "request" and self.most != 1:
            raise ValueError("a per-request meter charges one unit per request: drop `most`")
        return self


class Tabs(_Frozen):
    """How a service's prepaid tabs are opened: the smallest top-up (what a
    402 asks for; a larger payment is credited in full) and how long a tab's
    token lasts after its latest top-up."""

    top_up: Annotated[Price, BeforeValidator(_parse_price)]
    lasts: Duration = 30 * 86400

    @field_validator("top_up")
    @classmethod
    def _not_free(cls, value: Price) -> Price:
        if value.free:
            raise ValueError("top_up must be a price, not 'free'")
        return value


class Budget(_Frozen):
    """The most a reward campaign pays out, in satoshis: in all, and per UTC day.
    Counted in the shared store, atomically across workers and instances."""

    total: int = Field(ge=1, le=MAX_SATOSHIS)
    per_day: int | None = Field(default=None, ge=1, le=MAX_SATOSHIS)

    @model_validator(mode="after")
    def _day_within_total(self) -> Budget:
        if self.per_day is not None and self.per_day > self.total:
            raise ValueError(f"per_day ({self.per_day}) is more than the total ({self.total})")
        return self


class Reward(_Frozen):
    """A participation reward (issue 15): the route is proxied free, and when the
    upstream answers 2xx the participant is owed `pays` once per `campaign`.

    Participants prove they may take part with an eligibility credential from
    one of the concessions in `requires` (a JWT, as for concessions); its
    subject (`sub`) is who is paid once (`once_per: subject`). `budget` caps
    what the campaign pays. `when_exhausted`: `proxy` lets participation go on
    unpaid once the budget is spent (and says so), `refuse` answers 403.
    """

    pays: Annotated[Price, BeforeValidator(_parse_price)]
    campaign: str  # names the budget, the payouts and their lines in the transparency report
    once_per: Literal["subject"] = "subject"
    requires: tuple[str, ...]
    budget: Budget
    when_exhausted: Literal["proxy", "refuse"] = "proxy"
    description: str = ""

    @field_validator("pays")
    @classmethod
    def _paid(cls, value: Price) -> Price:
        if value.free:
            raise ValueError("a reward pays at least 1 satoshi (or some cents)")
        return value

    @field_validator("campaign")
    @classmethod
    def _campaign(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", value):
            raise ValueError(
                f"campaign {value!r} must be lower-case letters, digits, '.', '-' or '_'"
            )
        return value

    @field_validator("requires", mode="before")
    @classmethod
    def _requires(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ValueError(
                "requires names the concessions whose credentials may take part, e.g. [residents]"
            )
        return value


class Route(_Frozen):
    path: str
    methods: tuple[str, ...] = ("GET", "HEAD")
    price: Annotated[Price, BeforeValidator(_parse_price)]
    grant: Grant | None = None
    free_quota: Quota | None = None
    concessions: tuple[str, ...] = ()
    meter: Meter | None = None
    reward: Reward | None = None
    description: str = ""

    @model_validator(mode="after")
    def _rewarded(self) -> Route:
        if self.reward is not None and not self.price.free:
            raise ValueError("a rewarded route is proxied free: set `price: free`")
        if self.reward is not None and self.free_quota is not None:
            raise ValueError("a rewarded route pays each participant once: drop `free_quota`")
        if self.reward is not None:
            safe = [m for m in self.methods if m in ("*", "GET", "HEAD", "OPTIONS")]
            if safe:
                raise ValueError(
                    "a reward is for taking part (an answer sent): set `methods: [POST]` "
                    f"(or PUT, PATCH), not {', '.join(safe)}"
                )
        return self

    @model_validator(mode="after")
    def _metered(self) -> Route:
        if self.meter is not None:
            if self.price.free:
                raise ValueError("a metered route needs a price per unit, not 'free'")
            if self.grant is not None:
                raise ValueError("a metered route is charged per use from a tab: drop `grant`")
        return self

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        try:
            compile_pattern(value)
        except PatternError as exc:
            raise ValueError(f"bad path pattern {value!r}: {exc}") from None
        return value

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> tuple[str, ...]:
        if value in ("*", "ANY"):
            return ("*",)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ValueError("methods must be a list such as [GET, HEAD], or '*' for any")
        out = []
        for method in value:
            if not isinstance(method, str) or not _TOKEN.fullmatch(method):
                raise ValueError(f"{method!r} is not an HTTP method")
            if method.upper() in out:
                raise ValueError(f"method {method.upper()} is listed twice")
            out.append(method.upper())
        return tuple(out)

    @property
    def effective_grant(self) -> Grant:
        return self.grant or _DEFAULT_GRANT  # one frozen model, not one per payment

    def allows(self, method: str) -> bool:
        return self.methods[0] == "*" or method in self.methods


class Service(_Frozen):
    upstream: str
    description: str = ""
    host: str | None = None
    mount: str = "/"
    case_sensitive: bool = True
    preserve_host: bool = False
    connect_timeout: Duration | None = None
    read_timeout: Duration | None = None
    tabs: Tabs | None = None
    cors_origins: tuple[str, ...] = ()  # pages elsewhere that may pay by BRC-121; "*": any
    transparency: bool = True  # in the public transparency report (never names payers)
    routes: tuple[Route, ...]

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("cors_origins is a list of origins such as https://portal.example.gov")
        out = []
        for origin in value:
            if origin == "*":
                out.append("*")
                continue
            url = URL(str(origin)) if isinstance(origin, str) else None
            if (
                url is None
                or url.scheme not in ("http", "https")
                or not url.host
                or url.raw_path not in ("", "/")
                or url.query_string
            ):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port], e.g. https://portal.example.gov"
                )
            out.append(str(origin).rstrip("/").lower())
        return tuple(out)

    @model_validator(mode="after")
    def _tabs_for_meters(self) -> Service:
        if self.tabs is None and any(r.meter is not None for r in self.routes):
            raise ValueError(
                "metered routes are paid from tabs: add `tabs: {top_up: N}` (satoshis or cents)"
            )
        top_up = self.tabs.top_up.satoshis if self.tabs is not None else 0
        for route in self.routes:
            if route.meter is None or not top_up or route.price.currency is not None:
                continue
            most = math.ceil(route.price.satoshis * route.meter.most)
            if top_up < most:
                raise ValueError(
                    f"tabs.top_up ({top_up}) is less than one request on {route.path} "
                    f"may cost ({most} satoshis): no top-up could ever pay for it"
                )
        return self

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        try:
            url = URL(value)
        except ValueError as exc:
            raise ValueError(f"upstream {value!r} is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream must be an http:// or https:// URL, got {value!r}")
        if url.query_string or url.fragment or url.user:
            raise ValueError("upstream URL must not carry a query, fragment or credentials")
        return value.rstrip("/")

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: tuple[Route, ...]) -> tuple[Route, ...]:
        if not value:
            raise ValueError("a service needs at least one route")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            name = host_name(value)
        except HostError:
            name = None
        if name is None or ":" in value:
            raise ValueError(
                f"host must be a plain host name without port, e.g. data.example.gov, got {value!r}"
            )
        return name  # as requests are read: lower case, no trailing dot, IDNA

    @field_validator("mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        if not re.fullmatch(r"/|(/[A-Za-z0-9._~!$&'()*+,=:@-]+)+", value) or "/." in value:
            raise ValueError(
                f"mount must be a plain path like /archive (no trailing /), got {value!r}"
            )
        return value


class PolicyFile(_Frozen):
    services: dict[str, Service] = Field(default_factory=dict)
    concessions: dict[str, Concession] = Field(default_factory=dict)
    unmatched: Literal[403, 404, 410] | None = None

    @field_validator("services")
    @classmethod
    def _names(cls, value: dict[str, Service]) -> dict[str, Service]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
                raise ValueError(
                    f"service name {name!r} must be lower-case letters, digits, '-' or '_'"
                )
        return value
