"""Access tokens: short-lived JWTs that say what a payment bought.

Signed with Ed25519 (EdDSA) keys from a key ring; every token names its key
(`kid`), the JWKS at `/.well-known/jwks.json` publishes all public keys, and
rotating adds a new signing key while the old ones keep verifying until the
tokens they signed expire. Verification is cached: the hot path (a request
with a valid token) costs a dict lookup and a clock read, and so does a
token refused before (expired, forged, malformed): clients keep sending an
expired token until they pay again, and junk must not cost more than a
valid token. A token is looked at in the order that refuses junk cheapest:
its shape and `kid` (a regular expression and the header alone), then its
Ed25519 signature, and only a genuine one goes to PyJWT for its claims.

Every time in a token (iat, nbf, exp) is checked with one slack, LEEWAY,
because the instance that reads a token is often not the one that minted
it. A token whose iat is further ahead than that is signed and genuine but
not valid yet: `not_yet_valid` tells it apart from an unknown token, so the
gateway can say so instead of asking the client to pay again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "farebox"
ACCESS = "farebox:access"  # audience of tokens clients present
UPSTREAM = "farebox:upstream"  # audience of grant headers sent upstream
ALGORITHM = "EdDSA"
LEEWAY = 30
"""Seconds by which the clocks of instances sharing a key ring may disagree.

Applied alike to iat/nbf (a token minted by an instance whose clock runs
ahead opens at once) and to exp (a token opens until LEEWAY seconds past
its exp by the reading clock), in PyJWT's checks and in the cache of
verified tokens. NTP-synced instances differ by well under a second; 30 s
is the window a payment's x-bsv-time already gets (`payment_window`), so
the gateway trusts clocks no further for tokens than for payments, and a
token lives at most 30 s longer than it says. A clock further off is
broken: its tokens are refused until they are valid here, and said to be
(`grant-not-yet-valid`), never taken for unknown ones.
"""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified payment entitles its holder to."""

    id: str
    service: str
    scope: str  # a canonical path, or a route pattern (mount included)
    covers: str  # "resource" or "route"
    methods: tuple[str, ...]
    expires: int  # unix seconds
    txid: str
    satoshis: int
    payer: str  # hash of the payer's identity key: never the key itself
    tab: str = ""  # for covers "tab": the prepaid tab this token draws on

    def allows(self, service: str, method: str, resource: str, route_scope: str) -> bool:
        """Whether this grant opens a priced (not metered) resource."""
        if (
            self.covers == "tab"
            or service != self.service
            or not (self.methods[0] == "*" or method in self.methods)
        ):
            return False
        return self.scope == (resource if self.covers == "resource" else route_scope)


def new_grant_id() -> str:
    """32 random hex digits (128 bits, as unique as uuid4, without its object)."""
    return os.urandom(16).hex()


def payer_hash(identity_key_hex: str) -> str:
    # Enough for an upstream or auditor to link payments by one payer without
    # learning the key: a truncated SHA-256.
    return hashlib.sha256(bytes.fromhex(identity_key_hex)).hexdigest()[:32]


class KeyRing:
    """Ed25519 signing keys in a directory, one PEM file each; the newest signs."""

    def __init__(self, keys: dict[str, Ed25519PrivateKey], active: str) -> None:
        self.keys = keys
        self.active = active
        self.public = {kid: key.public_key() for kid, key in keys.items()}

    @classmethod
    def load(cls, folder: Path, *, create: bool = True) -> KeyRing:
        if create and not any(folder.glob("*.pem")):
            cls.add_key(folder)
        found: list[tuple[float, str, Ed25519PrivateKey]] = []
        for path in folder.glob("*.pem"):
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 key")
            found.append((path.stat().st_mtime, _kid(key.public_key()), key))
        if not found:
            raise ValueError(f"no token signing keys in {folder}")
        found.sort()
        return cls({kid: key for _, kid, key in found}, found[-1][1])

    @staticmethod
    def add_key(folder: Path) -> str:
        """Create a new signing key (it becomes the active one on load)."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        kid = _kid(key.public_key())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(folder / f"{kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_jwk(kid, pub) for kid, pub in self.public.items()]}


class Tokens:
    def __init__(self, ring: KeyRing, *, cache_size: int = 100_000) -> None:
        self.ring = ring
        self._cache: OrderedDict[str, tuple[Grant, str]] = OrderedDict()
        # Tokens signed here but not valid yet (iat/nbf beyond LEEWAY): the
        # grant and when it opens (unix seconds, LEEWAY applied). Decoded once.
        self._early: OrderedDict[str, tuple[Grant, float]] = OrderedDict()
        self._cache_size = cache_size
        # Tokens `verify` refused that cannot open here, each with the time
        # (unix seconds) before which this clock would have to read for it to
        # open after all: an expired one's end (exp + LEEWAY: a clock stepped
        # back), -inf for the forged, the malformed and those signed by a key
        # this ring lacks (forgotten on reload, which may bring that key).
        # Short tokens only (a genuine one is about 600 characters), at most
        # _REFUSED_KEPT: junk makes this hold about 10 MiB at most.
        self._refused: OrderedDict[str, float] = OrderedDict()
        self._headers: dict[str, bytes] = {}  # kid -> the JWS header segment, base64url

    def reload(self, folder: Path) -> str:
        """Read the key ring again (after `farebox keys rotate`); the active kid.

        Verified tokens are forgotten, so a pruned key stops verifying at
        once. On any error the current ring stays and the error is raised.
        """
        ring = KeyRing.load(folder, create=False)
        self.ring = ring
        self._cache.clear()
        self._early.clear()
        self._refused.clear()
        return ring.active

    def issued_here(self, token: str) -> bool:
        """Whether a token names one of our signing keys (signature not checked:
        enough to keep it from an upstream)."""
        kid = unverified_kid(token)
        return kid is not None and kid in self.ring.public

    def mint(self, grant: Grant) -> str:
        return self._sign(grant, ACCESS)

    def upstream_header(self, grant: Grant) -> str:
        """A signed statement for the upstream: what was paid, by whom (hashed)."""
        return self._sign(grant, UPSTREAM)

    def upstream_header_minted(self, token: str, grant: Grant) -> str:
        """`upstream_header(grant)` for a token `mint` just made of `grant`, and
        that token remembered as verified: its holder's first use then costs
        neither a signature check nor another statement signed.

        Only for a token minted here now (not one an earlier acceptance or
        another instance made, which `verify` judges as any other). A token
        whose key is no longer the active one (the ring reloaded, a key
        pruned, between minting and now) is not remembered: `verify` judges it.
        """
        upstream = self.upstream_header(grant)
        active = self._headers.get(self.ring.active)
        if active is not None and token.startswith(active.decode("ascii") + "."):
            self._cache[token] = (grant, upstream)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return upstream

    def known(self, token: str) -> bool:
        """Whether `token` was verified here before and is still kept: `verify`
        answers it from memory, without checking a signature."""
        return token in self._cache

    def verify(self, token: str) -> tuple[Grant, str] | None:
        """The grant and its upstream header, or None for any bad token.

        None too for a genuine token not valid yet (see `not_yet_valid`).
        Times are checked with LEEWAY: a cached token expires LEEWAY seconds
        after its exp, as a decoded one does.
        """
        hit = self._cache.get(token)
        if hit is not None:
            # Expired, it stays until pushed out (the cache is bounded): a
            # token presented again after its end costs a lookup, not another
            # signature check, and every caller that asks gets the same None.
            return hit if hit[0].expires + LEEWAY > time.time() else None
        early = self._early.get(token)
        if early is not None:
            if early[1] > time.time():
                return None
            del self._early[token]  # this clock caught up with the minting one
            grant = early[0]
            if grant.expires + LEEWAY <= time.time():
                return None
        else:
            refused = self._refused.get(token)
            if refused is not None:
                if time.time() >= refused:
                    return None
                del self._refused[token]  # the clock went back: ask again
            decoded = self._decode(token)
            if not isinstance(decoded, tuple):  # refused: `decoded` says until when
                if len(token) <= _REFUSED_LENGTH:
                    self._refused[token] = decoded
                    if len(self._refused) > _REFUSED_KEPT:
                        self._refused.popitem(last=False)
                return None
            grant, opens = decoded
            if opens > time.time():
                self._early[token] = (grant, opens)
                if len(self._early) > self._cache_size:
                    self._early.popitem(last=False)
                return None
        entry = (grant, self.upstream_header(grant))
        self._cache[token] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def _ended(self, token: str) -> float:
        """For a token PyJWT refused as expired: when it ended (exp + LEEWAY),
        read without checking its end; -inf if that does not read."""
        try:
            claims = self._claims(token, ACCESS, False, ("iat", "jti"), False)
        except jwt.PyJWTError:
            return -math.inf
        try:
            return float(claims["exp"]) + LEEWAY if claims is not None else -math.inf
        except (KeyError, TypeError, ValueError, OverflowError):
            return -math.inf

    def not_yet_valid(self, token: str) -> tuple[Grant, float] | None:
        """For a token signed here whose iat (or nbf) is more than LEEWAY ahead
        of this clock: its grant and when it opens (unix seconds); else None.

        Such a token was minted by an instance whose clock runs ahead: it is
        genuine, and paying again would buy what it already holds. Knows the
        tokens `verify` was given (it decodes each once): a dict lookup.
        """
        early = self._early.get(token)
        if early is None or early[1] <= time.time():
            return None
        return early

    def sign_claims(self, claims: dict[str, Any], audience: str) -> str:
        """A signed token of these claims, for `audience` only (checkout tickets too)."""
        kid = self.ring.active
        payload = {**claims, "iss": ISSUER, "aud": audience}
        if any(isinstance(payload.get(c), datetime) for c in ("exp", "iat", "nbf")):
            # PyJWT turns these into numbers; the fast path takes numbers only.
            return jwt.encode(
                payload, self.ring.keys[kid], algorithm=ALGORITHM, headers={"kid": kid}
            )
        return self._encode(payload, kid)

    def _encode(self, payload: dict[str, Any], kid: str) -> str:
        """What `jwt.encode(payload, key, "EdDSA", headers={"kid": kid})` returns, byte
        for byte (Ed25519 signatures are deterministic), without PyJWT's per-call
        work: the header segment is made once per key, the key object reused.
        TypeError, as from PyJWT, for a claim JSON cannot hold."""
        header = self._headers.get(kid)
        if header is None:
            # PyJWT's header: typ and alg, then ours, keys sorted, compact JSON.
            fields = {"typ": "JWT", "alg": ALGORITHM, "kid": kid}
            header = _b64url(json.dumps(fields, separators=(",", ":"), sort_keys=True).encode())
            self._headers[kid] = header
        body = _b64url(_COMPACT.encode(payload).encode("utf-8"))
        signing_input = header + b"." + body
        signature = self.ring.keys[kid].sign(signing_input)
        return (signing_input + b"." + _b64url(signature)).decode("ascii")

    def read_claims(
        self,
        token: str,
        audience: str,
        *,
        verify_exp: bool = True,
        require: tuple[str, ...] = (),
    ) -> dict[str, Any] | None:
        """The claims of a token this ring signed for `audience`, or None.

        iat, nbf and exp (when verified) are checked with LEEWAY.
        """
        try:
            return self._claims(token, audience, verify_exp, require, True)
        except jwt.PyJWTError:
            return None

    def _claims(
        self,
        token: str,
        audience: str,
        verify_exp: bool,
        require: tuple[str, ...],
        verify_issued: bool,
    ) -> dict[str, Any] | None:
        """The verified claims, None for a key not ours; PyJWTError for the rest.

        `verify_issued=False` leaves iat and nbf to the caller.
        """
        kid = unverified_kid(token)  # None for what is not a JWS (or not ASCII)
        key = self.ring.public.get(kid) if kid is not None else None
        if key is None:
            return None
        if not _signature_holds(token, key):
            # What PyJWT would find too, after tens of microseconds reading
            # every character of the token in Python.
            raise jwt.InvalidSignatureError("Signature verification failed")
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],  # never "none", never a MAC keyed with the public key
            audience=audience,
            issuer=ISSUER,
            leeway=LEEWAY,
            options={
                "require": ["exp", "aud", "iss", *require],
                "verify_exp": verify_exp,
                "verify_iat": verify_issued,
                "verify_nbf": verify_issued,
            },
        )

    def _sign(self, grant: Grant, audience: str) -> str:
        claims = {
            "sub": grant.payer,
            "jti": grant.id,
            "iat": int(time.time()),
            "exp": grant.expires,
            "svc": grant.service,
            "scope": grant.scope,
            "covers": grant.covers,
            "methods": list(grant.methods),
            "txid": grant.txid,
            "sats": grant.satoshis,
        }
        if grant.tab:
            claims["tab"] = grant.tab
        return self.sign_claims(claims, audience)

    def _decode(self, token: str) -> tuple[Grant, float] | float:
        """The grant of an access token and when it opens (iat/nbf less LEEWAY);
        for a token refused, the time from which that refusal holds (unix
        seconds): an expired one's end (`_ended`: a clock set back before it
        must ask again), -inf for any other (it never opens here)."""
        try:
            claims = self._claims(token, ACCESS, True, ("iat", "jti"), False)
        except jwt.ExpiredSignatureError:
            return self._ended(token)
        except jwt.PyJWTError:
            return -math.inf
        if claims is None:
            return -math.inf
        try:
            # As PyJWT would check them: integers (or what int() takes), nbf optional.
            opens = max(int(claims["iat"]), int(claims.get("nbf", claims["iat"]))) - LEEWAY
            grant = Grant(
                id=str(claims["jti"]),
                service=str(claims["svc"]),
                scope=str(claims["scope"]),
                covers=str(claims["covers"]),
                methods=tuple(str(m) for m in claims["methods"]),
                expires=int(claims["exp"]),
                txid=str(claims["txid"]),
                satoshis=int(claims["sats"]),
                payer=str(claims["sub"]),
                tab=str(claims.get("tab", "")),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            return -math.inf
        return grant, opens


# json.dumps(..., separators=(",", ":")) as PyJWT calls it, without a new encoder per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))

# One base64url segment of a compact JWS (RFC 7515 section 7.1), with the
# trailing "=" PyJWT tolerates. ASCII only: a str pattern would take Unicode digits.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+={0,2}", re.ASCII)
_HEADER_LENGTH = 1024  # characters: ours are about 80
_REFUSED_LENGTH = 1024  # characters: refusals of longer tokens are not kept
_REFUSED_KEPT = 8192


def unverified_kid(token: str) -> str | None:
    """The `kid` of a compact JWS's protected header, nothing checked but the
    header and that there are three segments; None for anything that is not
    such a token or names no string kid.

    What `jwt.get_unverified_header(token).get("kid")` answers for a token
    PyJWT reads, without its Python loop over every character of all three
    segments (about 50 us for a 600-character token): the header segment
    alone. For choosing a key, never for trusting.
    """
    header, dot, rest = token.partition(".")
    if (
        not dot
        or rest.count(".") != 1
        or len(header) > _HEADER_LENGTH
        or not _SEGMENT.fullmatch(header)
    ):
        return None
    try:
        fields = json.loads(_b64url_decode(header))
    except (binascii.Error, ValueError, RecursionError):  # JSONDecodeError, a deep nest
        return None
    kid = fields.get("kid") if isinstance(fields, dict) else None
    return kid if isinstance(kid, str) else None


def _signature_holds(token: str, key: Ed25519PublicKey) -> bool:
    """Whether the last segment of a compact JWS is `key`'s Ed25519 signature
    (RFC 8037) over the rest, as it stands (RFC 7515 section 5.2)."""
    signing_input, _, signature = token.rpartition(".")
    try:
        key.verify(_b64url_decode(signature), signing_input.encode("ascii"))
    except (InvalidSignature, binascii.Error, ValueError):  # UnicodeEncodeError too
        return False
    return True


def _b64url_decode(segment: str) -> bytes:
    """A base64url segment, trailing "=" or not; binascii.Error for any character
    outside the alphabet (the standard decoder would skip it)."""
    segment = segment.rstrip("=")
    return base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)


def _b64url(data: bytes) -> bytes:
    """base64url without padding (RFC 7515), as PyJWT writes JWS segments."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _kid(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw(pub)).hexdigest()[:16]


def _jwk(kid: str, pub: Ed25519PublicKey) -> dict[str, str]:
    x = base64.urlsafe_b64encode(_raw(pub)).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALGORITHM, "use": "sig"}
