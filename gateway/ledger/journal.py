"""The receipts journal: every gateway appends its receipts to a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.store.receipts import Receipt


class Journal:
    """Receipts appended to a file, one JSON line each (mode 0600).

    The store holds receipts for the admin API and the report; this file
    is the copy that survives the store (the memory store dies with the
    process), and `farebox sweep --receipts FILE` reads it: without a
    receipt's derivation data, what it paid cannot be spent. Lines are
    written whole with O_APPEND (workers may share the file); they reach the
    OS at once but are not fsynced, so a power cut may lose the last ones.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, receipt: Receipt) -> None:
        os.write(self._fd, (json.dumps(receipt.to_json()) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)
