"""Rotating keys: the token signing ring and the server identity key.

Token keys (a `KeyRing` directory): rotating adds a new key, which signs from
the next start of each gateway on; the older keys stay in the ring, and so in
the JWKS, and keep verifying the tokens they signed. A key can go once every
token it signed has expired: that is, once it has been *retired* (a newer key
was added) for longer than any grant, tab or checkout lasts. Pruning goes by
that retirement time, never by the key's own age, and never removes the
active (newest) key.

The identity key: a new key file replaces the old one, which is kept next to
it as `<file>.previous` (mode 0600). Everything paid to the old key stays
spendable only with it: sweep it with `--key-file <file>.previous`.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from bsv import PrivateKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import keys
from gateway.tokens import KeyRing, _kid

DEFAULT_PRUNE_AGE = 90 * 86400  # longer than a tab token lasts by default (30 d)


@dataclass(frozen=True, slots=True)
class RingKey:
    kid: str
    path: Path
    created: float  # unix seconds (the file's mtime: what KeyRing orders by)
    retired: float | None  # when a newer key was added; None for the active key

    @property
    def active(self) -> bool:
        return self.retired is None


def ring_keys(folder: Path) -> list[RingKey]:
    """The ring's keys, oldest first, ordered as `KeyRing.load` orders them."""
    KeyRing.load(folder, create=False)  # every file must be a key; at least one
    found = []
    for path in folder.glob("*.pem"):
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)  # checked by KeyRing.load
        found.append((path.stat().st_mtime, _kid(key.public_key()), path))
    found.sort()
    out = []
    for i, (created, kid, path) in enumerate(found):
        retired = found[i + 1][0] if i + 1 < len(found) else None
        out.append(RingKey(kid, path, created, retired))
    return out


def rotate_token_keys(folder: Path) -> str:
    """Add a signing key that becomes the active one; its kid."""
    before = [p.stat().st_mtime_ns for p in folder.glob("*.pem")] if folder.is_dir() else []
    kid = KeyRing.add_key(folder)
    path = folder / f"{kid}.pem"
    # The ring orders keys by mtime: make sure the new one sorts last even on
    # a filesystem with coarse timestamps.
    newest = max(before, default=0)
    if path.stat().st_mtime_ns <= newest:
        os.utime(path, ns=(newest + 1, newest + 1))
    return kid


def prune_token_keys(
    folder: Path, older_than: float = DEFAULT_PRUNE_AGE, *, now: float | None = None
) -> list[RingKey]:
    """Delete keys retired more than `older_than` seconds ago; the deleted ones."""
    now = time.time() if now is None else now
    gone = []
    for key in ring_keys(folder):
        if key.retired is not None and now - key.retired >= older_than:
            key.path.unlink()
            gone.append(key)
    return gone


# --- the identity key --------------------------------------------------------------------


def load_key_file(path: Path) -> PrivateKey:
    """The key in `path` (never from $FAREBOX_KEY), refused when others may read it."""
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except OSError as exc:
        raise keys.KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise keys.KeyFileError(f"key file {path} is readable by others; run: chmod 600 {path}")
    return keys.parse(text, str(path))


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


@dataclass(frozen=True, slots=True)
class IdentityRotation:
    path: Path
    previous: Path
    old_public: str
    new_public: str


def rotate_identity(path: Path) -> IdentityRotation:
    """Write a new identity key to `path`, keeping the old one as `path.previous`.

    Refuses when `path.previous` exists: it may still hold payments (sweep
    it, then move it away). Both files are written mode 0600, the old key
    before the new one replaces it, so a crash never loses a key.
    """
    old = load_key_file(path)
    previous = previous_path(path)
    _write_private(
        previous,
        path.read_text(),
        exists=f"{previous} exists: it may hold a key that still has payments to sweep. "
        f"Sweep it (farebox sweep --key-file {previous} ...), then move it away "
        "and rotate again",
    )
    fresh = path.with_name(path.name + ".new")
    try:
        new = keys.generate(fresh)
    except keys.KeyFileError:
        raise keys.KeyFileError(
            f"{fresh} exists (left by an interrupted rotation?): remove it and rotate again"
        ) from None
    os.replace(fresh, path)
    return IdentityRotation(path, previous, old.public_key().hex(), new.public_key().hex())


def _write_private(path: Path, text: str, *, exists: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise keys.KeyFileError(exists) from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
