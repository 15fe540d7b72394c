"""RFC 9457 problem+json responses: every error Farebox itself produces.

Each carries a short machine-readable `reason` (also the last part of `type`)
so clients can branch on it without parsing prose, and `Cache-Control:
no-store` unless its maker says otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

CONTENT_TYPE = "application/problem+json"
# Marks (response[OURS]) a problem Farebox made itself, not an upstream's answer.
OURS = web.ResponseKey("farebox.problem", bool)
TYPE_PREFIX = "https://farebox.dev/problems/"


def problem_body(status: int, reason: str, title: str, detail: str = "", **extra: Any) -> dict:
    body: dict[str, Any] = {"type": TYPE_PREFIX + reason, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["reason"] = reason
    body.update(extra)
    return body


def problem(
    status: int,
    reason: str,
    title: str,
    detail: str = "",
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body = problem_body(status, reason, title, detail, **extra)
    response = web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type=CONTENT_TYPE,
        headers=headers,
    )
    # An answer about this one request, never a representation to reuse: no
    # cache in front may hand it (a 402 above all) to another request.
    response.headers.setdefault("Cache-Control", "no-store")
    response[OURS] = True  # Farebox's own problem, not an upstream's answer passed on
    return response


def answer(body: Any, status: int = 200) -> web.Response:
    """One of Farebox's own JSON answers (not an error): never cached."""
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def payments_disabled() -> web.Response:
    return problem(
        503,
        "payments-disabled",
        "Payments are not configured",
        "this gateway has no chain services configured",
    )
