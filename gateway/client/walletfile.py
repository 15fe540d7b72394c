"""The wallet file: its JSON shape, and reading and writing it safely.

The file (JSON, mode 0600) is replaced atomically; every change happens
under an exclusive lock on a companion `.lock` file and starts from the
file's current content, so two processes never pick the same coin.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.client.coins import Coin
from gateway.client.errors import WalletError, WalletNotFound
from gateway.client.records import HISTORY, Paid, PendingPayment
from gateway.client.tokens import StoredToken

ENV_WALLET = "FAREBOX_WALLET"
DEFAULT_PATH = "~/.farebox/wallet.json"
FORMAT = 1


def default_path() -> Path:
    return Path(os.environ.get(ENV_WALLET) or DEFAULT_PATH).expanduser()


@dataclass(slots=True)
class State:
    identity: str
    next_key: int = 0
    chain: str | None = None  # ARC/devnet base URL the coins came from, for fresh proofs
    coins: list[Coin] = field(default_factory=list)
    pending: dict[str, PendingPayment] = field(default_factory=dict)  # by payment txid
    tokens: list[StoredToken] = field(default_factory=list)
    history: list[Paid] = field(default_factory=list)  # oldest first
    # Payout ledgers this wallet paid from as a treasury (absolute paths): a
    # list sent again under another name must not start a ledger of its own.
    payout_ledgers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        now = time.time()
        return {
            "format": FORMAT,
            "identity": self.identity,
            "next_key": self.next_key,
            "chain": self.chain,
            "coins": [c.to_json() for c in self.coins],
            "pending": [p.to_json() for p in self.pending.values()],
            # Expired grants are worth nothing: they are dropped on every write.
            "tokens": [t.to_json() for t in self.tokens if t.usable(now)],
            "history": [p.to_json() for p in self.history[-HISTORY:]],
            "payout_ledgers": list(self.payout_ledgers),
        }

    @classmethod
    def from_json(cls, data: Any) -> State:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise WalletError("not a Farebox wallet file (or a newer format)")
        try:
            pending = {str(p["txid"]): PendingPayment.from_json(p) for p in data.get("pending", [])}
            tokens = [StoredToken.from_json(t) for t in data.get("tokens", [])]
            return cls(
                identity=str(data["identity"]),
                next_key=int(data["next_key"]),
                chain=None if data.get("chain") is None else str(data["chain"]),
                coins=[Coin.from_json(c) for c in data.get("coins", [])],
                pending=pending,
                tokens=[t for t in tokens if t is not None],
                history=[Paid.from_json(p) for p in data.get("history", [])],
                payout_ledgers=[str(p) for p in data.get("payout_ledgers", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WalletError(f"the wallet file is malformed: {exc!r}") from None


@contextlib.contextmanager
def locked(path: Path, *, create: bool = True) -> Iterator[None]:
    if not create and not path.exists():
        raise WalletNotFound(str(path))
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read(path: Path) -> State:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except FileNotFoundError:
        raise WalletNotFound(str(path)) from None
    except OSError as exc:
        raise WalletError(f"cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise WalletError(f"{path} holds private keys and is readable by others: chmod 600 {path}")
    try:
        return State.from_json(json.loads(data))
    except ValueError:
        raise WalletError(f"{path} is not valid JSON") from None


def write(path: Path, state: State) -> None:
    """Write a whole new file and rename it over the old one: a crash leaves either."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(state.to_json(), indent=1).encode()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a stale one may have another mode; O_EXCL makes ours 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
