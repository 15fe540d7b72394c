"""The one WhatsOnChain client: what is unspent at a script, and a transaction's BEEF.

WhatsOnChain's API (`<base>/v1/bsv/<network>/...`), or anything answering
its paths the same way: the devnet does, so `--devnet-url` works too. The
payment watcher (`gateway.chain.watch`) asks it which transactions pay a
checkout's script; custody's sweep (`gateway.custody.sweep`) which outputs
at a derived key's script are left to spend.

- `GET /script/<script hash>/unspent`: a list of `{"tx_hash", "tx_pos",
  "value", "height"}` (newer API versions wrap it as `{"result": [...]}`);
  404 means none.
- `GET /tx/<txid>/beef`: the transaction's BEEF as hex text, as a JSON
  string, or as `{"beef": hex}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.bsv.scripts import script_hash
from gateway.chain import ChainError
from gateway.chain._http import HttpClient, transport_failure


@dataclass(frozen=True, slots=True)
class Utxo:
    """An unspent output, as the chain reports it."""

    txid: str  # lower-case hex, display order
    vout: int
    satoshis: int


class WhatsOnChain:
    TIMEOUT = 10.0  # seconds per request, unless the caller says otherwise

    def __init__(
        self,
        base_url: str,
        *,
        network: str = "main",
        api_key: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """`network` is "main" or "test"; `timeout` is seconds per request."""
        timeout = self.TIMEOUT if timeout is None else timeout
        headers = {"Authorization": api_key} if api_key else None
        root = base_url.rstrip("/") + f"/v1/bsv/{network}"
        self._http = HttpClient(root, timeout=timeout, headers=headers)

    async def unspent(self, script: bytes) -> list[Utxo]:
        """Unspent outputs locked by `script` (mempool included), in the API's order.

        Raises ChainError when the API cannot be asked or answers anything
        but a list of well-formed entries."""
        what = "unspent lookup"
        answer = await self._http.request("GET", f"/script/{script_hash(script)}/unspent")
        if answer.status == 404:
            return []
        failure = transport_failure(answer, what)
        if failure is not None:
            raise failure
        if answer.status != 200:
            raise ChainError("bad-response", f"{what} answered HTTP {answer.status}")
        entries = answer.body
        if isinstance(entries, dict):  # newer API versions wrap the list
            entries = entries.get("result")
        if not isinstance(entries, list):
            raise ChainError("bad-response", f"{what} did not answer a list")
        return [_utxo(entry, what) for entry in entries]

    async def beef(self, txid: str) -> bytes | None:
        """The BEEF of `txid`; None when the API has none it can give (any answer but
        a 200 with hex). Raises ChainError only when the API cannot be asked."""
        answer = await self._http.request("GET", f"/tx/{txid}/beef")
        if answer.status != 200:
            return None
        body = answer.body
        if isinstance(body, dict):
            value = body.get("beef")
        elif isinstance(body, str):
            value = body
        else:
            value = answer.raw.decode("ascii", "replace").strip()
        if not isinstance(value, str):
            return None
        try:
            return bytes.fromhex(value)
        except ValueError:
            return None

    async def close(self) -> None:
        await self._http.close()


def _utxo(entry: Any, what: str) -> Utxo:
    try:
        txid, vout, value = entry["tx_hash"], entry["tx_pos"], entry["value"]
    except (KeyError, TypeError):
        raise ChainError("bad-response", f"{what}: entry without tx_hash/tx_pos/value") from None
    if not (isinstance(txid, str) and len(txid) == 64 and _whole(vout) and _whole(value)):
        raise ChainError("bad-response", f"{what}: malformed entry {entry!r}")
    return Utxo(txid.lower(), vout, value)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
