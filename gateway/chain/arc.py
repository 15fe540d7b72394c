"""Broadcasting through ARC (github.com/bitcoin-sv/arc, doc/arc.json).

POST {url}/v1/tx takes one transaction: binary (application/octet-stream:
BEEF, EF or raw; ARC tells them apart by the BEEF magic or the EF marker) or
hex (text/plain). GET {url}/v1/tx/{txid} reports the current status.

ARC's answers:
- 200 with `txStatus` (and `competingTxs`, `blockHeight`, `merklePath`, ...):
  mapped by `gateway.chain.classify_status`; with `X-WaitFor`, ARC returns the
  status reached when `X-MaxTimeout` (default 5 s, at most 30 s) ran out.
- 4xx with an RFC 7807 object (`status`, `title`, `detail`, `txid`,
  `extraInfo`): 400/422 and 460-475 refuse the transaction (ERROR_REASONS);
  404 on GET means ARC does not know the txid; 409 is ARC's "unclassified"
  error, so the outcome is unknown (ChainError).
- 401/403, 429, 5xx, connection failures, timeouts, unreadable answers:
  ChainError.

ARC reads a BEEF's subject-less list and answers about the *first* unmined
transaction in it (internal/api/handler/default.go: POSTTransaction returns
response[0]), so a payment whose BEEF carries unconfirmed ancestors would be
judged by its parent's status. Pass `txid=` (or send Atomic BEEF, whose
subject we read) and a mismatch is resolved with GET /v1/tx/{txid}.
Atomic BEEF (BRC-95) itself is not understood by ARC (its BEEF check looks
for 0xBEEF at bytes 2-3), so its 36-byte prefix is stripped before sending.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import aiohttp

from gateway.bsv.beef import ATOMIC_PREFIX, split_atomic
from gateway.chain import ACCEPTED_STATUSES, BroadcastResult, ChainError, classify_status
from gateway.chain._http import Answer, HttpClient, transport_failure

# ARC error code -> reason (pkg/api/status.go, doc/errors.md). All of them
# are definite refusals of the submitted transaction.
ERROR_REASONS: dict[int, str] = {
    400: "bad-request",  # unparsable body, or a header ARC refuses (X-MaxTimeout > 30, unknown X-WaitFor)
    422: "bad-request",  # the request failed ARC's OpenAPI validation
    460: "not-extended-format",  # raw tx whose parents ARC could not find
    461: "invalid-script",  # unlocking scripts do not validate
    462: "invalid-inputs",  # inputs missing, spent, or worth less than outputs
    463: "malformed",
    464: "invalid-outputs",
    465: "fee-too-low",
    466: "double-spend",  # conflicting tx in the block template
    467: "missing-ancestors",  # mined ancestors not found in BEEF (arc.json only)
    468: "invalid-beef",  # BUMPs do not compute
    469: "invalid-merkle-roots",
    471: "frozen-input",  # policy blacklist
    472: "frozen-input",  # consensus blacklist
    473: "cumulative-fee-too-low",
    474: "tx-too-large",
    475: "missing-ancestors",  # mined ancestor not in the provided BUMPs
}

_STATUS_NAME = re.compile(r"[A-Z][A-Z_]{0,63}")
_TXID = re.compile(r"[0-9a-fA-F]{64}")


class ArcBroadcaster:
    """An ARC client. Configure per deployment; every header is optional.

    `api_key` goes out as `Authorization: Bearer <key>` (TAAL and most hosted
    ARCs); `extra_headers` are sent with every request and win over ours, for
    deployments that differ (another auth header, the older
    `X-WaitForStatus`, ...). `wait_for=None` leaves X-WaitFor out (ARC's own
    default applies). `max_timeout` (X-MaxTimeout, whole seconds) is how long
    ARC may wait for `wait_for`; `timeout` is our total bound on each request,
    so it must be longer.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        wait_for: str | None = "SEEN_ON_NETWORK",
        max_timeout: int | None = None,
        callback_url: str | None = None,
        callback_token: str | None = None,
        full_status_updates: bool = False,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        extra_headers: Mapping[str, str] | None = None,
        accepted_statuses: Iterable[str] = ACCEPTED_STATUSES,
    ) -> None:
        if wait_for is not None and not _STATUS_NAME.fullmatch(wait_for):
            raise ValueError(f"wait_for must be an ARC status name, not {wait_for!r}")
        if max_timeout is not None and (max_timeout < 1 or timeout <= max_timeout):
            raise ValueError(
                "max_timeout must be >= 1 and shorter than timeout, so ARC can answer in time"
            )
        self.url = url.rstrip("/")
        self.accepted_statuses = frozenset(accepted_statuses)
        common = {"Accept": "application/json"}
        if api_key:
            common["Authorization"] = f"Bearer {api_key}"
        self._http = HttpClient(self.url, timeout=timeout, session=session, headers=common)
        self._extra = dict(extra_headers or {})
        self._post_headers = _post_headers(
            wait_for, max_timeout, callback_url, callback_token, full_status_updates
        )

    async def broadcast(self, tx: bytes | str, *, txid: str | None = None) -> BroadcastResult:
        body, content_type, subject = _wire_form(tx)
        expected = (txid or subject or "").lower() or None
        if expected is not None and not _TXID.fullmatch(expected):
            raise ValueError(f"txid must be 64 hex digits, not {expected!r}")
        headers = {**self._post_headers, "Content-Type": content_type, **self._extra}
        answer = await self._http.request("POST", "/v1/tx", headers=headers, data=body)
        result = self._interpret(answer, "POST /v1/tx", expected, not_found_ok=False)
        if expected is None or not result.status or result.txid == expected:
            return result
        # ARC answered about an unconfirmed ancestor in the BEEF. A refused
        # ancestor sinks our transaction too; otherwise ask about ours.
        if result.rejected:
            return replace(
                result, txid=expected, detail=f"{result.detail} (about ancestor {result.txid})"
            )
        return await self.status(expected)

    async def status(self, txid: str) -> BroadcastResult:
        if not _TXID.fullmatch(txid):
            raise ValueError(f"txid must be 64 hex digits, not {txid!r}")
        txid = txid.lower()
        answer = await self._http.request("GET", f"/v1/tx/{txid}", headers=self._extra)
        return self._interpret(answer, f"GET /v1/tx/{txid}", txid, not_found_ok=True)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> ArcBroadcaster:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _interpret(
        self, answer: Answer, what: str, expected: str | None, *, not_found_ok: bool
    ) -> BroadcastResult:
        failure = transport_failure(answer, what)
        if failure is not None:
            raise failure
        body = answer.body
        if not isinstance(body, dict):
            raise ChainError(
                "bad-response",
                f"{what}: HTTP {answer.status} without an ARC JSON object: {answer.text!r}",
                status=answer.status,
            )
        if answer.status == 200 and isinstance(body.get("txStatus"), str):
            return _status_result(body, expected, self.accepted_statuses)
        # An error object; arc.json even shows one under HTTP 200, so trust
        # the object's own code over the HTTP status.
        code = body.get("status")
        if not isinstance(code, int) or isinstance(code, bool) or code < 400:
            code = answer.status
        return _error_result(body, code, what, expected, not_found_ok=not_found_ok)


def _post_headers(
    wait_for: str | None,
    max_timeout: int | None,
    callback_url: str | None,
    callback_token: str | None,
    full_status_updates: bool,
) -> dict[str, str]:
    headers: dict[str, str] = {}
    if wait_for is not None:
        headers["X-WaitFor"] = wait_for
    if max_timeout is not None:
        headers["X-MaxTimeout"] = str(int(max_timeout))
    if callback_url:
        headers["X-CallbackUrl"] = callback_url
    if callback_token:
        headers["X-CallbackToken"] = callback_token
    if full_status_updates:
        headers["X-FullStatusUpdates"] = "true"
    return headers


def _wire_form(tx: bytes | str) -> tuple[bytes | str, str, str | None]:
    """(body, content type, subject txid of an Atomic BEEF)."""
    if isinstance(tx, str):
        text = "".join(tx.split())
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError("a str transaction must be hex") from None
        if not raw:
            raise ValueError("empty transaction")
        if raw.startswith(ATOMIC_PREFIX):
            body, _, subject = _wire_form(raw)
            return bytes(body).hex(), "text/plain", subject
        return text.lower(), "text/plain", None
    if not tx:
        raise ValueError("empty transaction")
    subject, beef = split_atomic(bytes(tx))
    if subject is not None and not beef:
        raise ValueError("Atomic BEEF is shorter than its prefix")
    return beef, "application/octet-stream", subject


def _status_result(
    body: dict[str, Any], expected: str | None, accepted_statuses: frozenset[str]
) -> BroadcastResult:
    status = body["txStatus"]
    extra = _text(body.get("extraInfo"))
    accepted, rejected, reason = classify_status(status, extra, accepted_statuses)
    txid = _text(body.get("txid")).lower() or expected or ""
    competing = body.get("competingTxs")
    competing = competing if isinstance(competing, list) else []
    detail = "" if accepted else f"ARC status {status}" + (f": {extra}" if extra else "")
    height = body.get("blockHeight")
    return BroadcastResult(
        txid=txid,
        status=status,
        accepted=accepted,
        rejected=rejected,
        reason=reason,
        detail=detail,
        code=200,
        competing_txs=tuple(str(t) for t in competing if isinstance(t, str)),
        # ARC sends 0 and "" before the transaction is mined.
        block_height=height if isinstance(height, int) and height > 0 else None,
        block_hash=_text(body.get("blockHash")) or None,
        merkle_path=_text(body.get("merklePath")) or None,
        extra_info=extra,
    )


def _error_result(
    body: dict[str, Any], code: int, what: str, expected: str | None, *, not_found_ok: bool
) -> BroadcastResult:
    title = _text(body.get("title"))
    extra = _text(body.get("extraInfo"))
    text = "; ".join(t for t in (title, _text(body.get("detail")), extra) if t)
    if code == 409:
        raise ChainError(
            "generic", f"{what}: ARC 409 (unclassified, outcome unknown): {text}", status=409
        )
    if code == 404 and not_found_ok:
        return BroadcastResult(
            txid=expected or "",
            status="",
            accepted=False,
            rejected=False,
            reason="not-found",
            detail=text or "ARC does not know this transaction",
            code=404,
            extra_info=extra,
        )
    reason = ERROR_REASONS.get(code) or ("rejected" if 460 <= code < 500 else None)
    if reason is None:
        raise ChainError(
            "bad-response", f"{what}: unexpected ARC answer {code}: {text}", status=code
        )
    about = _text(body.get("txid")).lower()
    if about and expected and about != expected:
        text += f" (about ancestor {about})"
    return BroadcastResult(
        txid=expected or about,
        status="",
        accepted=False,
        rejected=True,
        reason=reason,
        detail=f"ARC {code}: {text}" if text else f"ARC {code}",
        code=code,
        extra_info=extra,
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
