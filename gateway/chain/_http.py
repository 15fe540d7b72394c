"""The HTTP plumbing the chain clients share: one session, bounded answers.

Every request has a total timeout; every transport failure becomes a
ChainError, so callers never see aiohttp's or asyncio's exception zoo.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.chain import ChainError

# Chain service answers are small JSON objects; a larger one is a broken or
# hostile service and must not fill our memory.
MAX_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    text: str  # the start of the raw body, for error messages
    raw: bytes = b""  # the whole body (bounded by MAX_ANSWER_BYTES)


class HttpClient:
    """An aiohttp session, borrowed or created lazily (and then owned and closed)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.headers = dict(headers or {})
        self._session = session
        self._owned = session is None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use, not in __init__: a ClientSession belongs to the
        # running event loop, and constructors often run before there is one.
        if self._session is None or (self._owned and self._session.closed):
            self._session = aiohttp.ClientSession(timeout=self.timeout)
            self._owned = True
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | str | None = None,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        url = self.base_url + path
        merged = {**self.headers, **(headers or {})}
        session = self._get_session()
        try:
            async with session.request(
                method,
                url,
                headers=merged,
                data=data,
                json=json_body,
                params=params,
                timeout=self.timeout,
                allow_redirects=False,  # a redirect would drop or leak the API key
            ) as response:
                raw = await _read_bounded(response)
                return Answer(
                    response.status, _parse_json(raw), raw[:300].decode("utf-8", "replace"), raw
                )
        except TimeoutError:  # asyncio.TimeoutError is TimeoutError since 3.11
            raise ChainError(
                "timeout", f"{method} {url}: no answer within {self.timeout.total} s"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise ChainError("unreachable", f"{method} {url}: {exc}") from None
        except aiohttp.ClientError as exc:
            # The connection broke mid-request: for a POST the outcome is unknown.
            raise ChainError(
                "unreachable", f"{method} {url}: {type(exc).__name__}: {exc}"
            ) from None

    async def close(self) -> None:
        """Close the session if it is ours; a borrowed one belongs to its lender."""
        if self._owned and self._session is not None:
            if not self._session.closed:
                await self._session.close()
            self._session = None


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    declared = response.content_length
    if declared is not None and declared > MAX_ANSWER_BYTES:
        raise ChainError(
            "bad-response", f"answer of {declared} bytes is too large", status=response.status
        )
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise ChainError("bad-response", "answer is too large", status=response.status)
    return bytes(body)


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both subclass it
        return None


def transport_failure(answer: Answer, what: str) -> ChainError | None:
    """The ChainError for statuses that say nothing about the transaction itself."""
    status = answer.status
    if status >= 500:
        return ChainError("server-error", f"{what}: HTTP {status}: {answer.text}", status=status)
    if status in (401, 403, 407):
        return ChainError(
            "unauthorized", f"{what}: HTTP {status}: check the API key", status=status
        )
    if status == 429:
        return ChainError("rate-limited", f"{what}: HTTP 429", status=status)
    if status == 408:
        return ChainError("timeout", f"{what}: HTTP 408", status=status)
    return None
