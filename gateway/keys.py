"""The server identity key: the BSV key clients pay to (via BRC-29 derivation).

It is a secret that can spend received payments, so it is written with mode
0600, loaded from a file or the environment, and never logged or echoed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bsv import PrivateKey

ENV_KEY = "FAREBOX_KEY"
# Where `farebox keys generate` writes, and where every command looks when no
# key file is named: one default, so generating and serving in one folder agree.
DEFAULT_FILE = Path("farebox.key")


class KeyFileError(Exception):
    """The identity key is missing, unreadable or malformed (one-line reason)."""


def generate(path: Path, *, force: bool = False) -> PrivateKey:
    """Create a new key file readable by its owner only; refuse to clobber one."""
    key = PrivateKey()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; pass --force to replace it") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # O_TRUNC on an existing file keeps its old mode
        f.write(key.hex() + "\n")
    return key


def parse(text: str, source: str) -> PrivateKey:
    text = text.strip()
    try:
        if len(text) == 64:
            return PrivateKey(bytes.fromhex(text))
        return PrivateKey(text)  # WIF
    except Exception:  # bsv-sdk raises assorted types for bad input
        # Never include the text: it may be a real key with a typo.
        raise KeyFileError(f"{source} does not hold a valid key (64 hex digits or WIF)") from None


def load(path: str | Path | None) -> PrivateKey:
    """From FAREBOX_KEY if set, else from the file at `path`, else ./farebox.key
    (DEFAULT_FILE) if there is one. Raises KeyFileError (a one-line reason)."""
    if value := os.environ.get(ENV_KEY):
        return parse(value, f"${ENV_KEY}")
    if not path:
        if not DEFAULT_FILE.exists():
            raise KeyFileError(
                f"no server key: no ./{DEFAULT_FILE} here; pass --key-file, set {ENV_KEY}, "
                "or run 'farebox keys generate'"
            )
        path = DEFAULT_FILE
    path = Path(path)
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} is readable by others; run: chmod 600 {path}")
    return parse(text, str(path))
