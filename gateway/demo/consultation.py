"""The demo's city consultation and residents' register (issue 15's demo).

Two more stand-ins for public-sector backends, in the sample upstream:

- `/register`: Hollowmere's residents' register. `POST /register/credentials`
  with `{"resident": "HM-R-1001"}` issues a short-lived eligibility
  credential (an EdDSA JWT, `sub` the resident) for any of the demo's
  residents HM-R-1001 to HM-R-1050. Its signing key is fixed and public (a
  demo register vouches for no one); policies/consultation.yaml names its
  public key.
- `/consult`: the city's consultation on the Riverside Park plan. Surveys
  and their questions are free to read; `POST /consult/surveys/{id}/responses`
  records an answer (201), and refuses one that does not answer (422). It
  knows nothing of rewards: Farebox pays them.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ISSUER = "https://register.hollowmere.example"
# A fixed demo key, derived from a public string: worthless outside the demo.
REGISTER_KEY = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"farebox demo: Hollowmere residents' register").digest()
)
RESIDENTS = frozenset(f"HM-R-{n}" for n in range(1001, 1051))
CREDENTIAL_LIFETIME = 3600  # seconds

SURVEYS: dict[str, dict[str, Any]] = {
    "riverside-park": {
        "id": "riverside-park",
        "title": "Riverside Park: what should the city build first?",
        "closes": "2027-03-31",
        "questions": [
            {
                "id": "answer",
                "text": "Which should come first?",
                "choices": ["playground", "more trees", "lighting", "toilets"],
            },
            {"id": "comment", "text": "Anything else? (optional)", "optional": True},
        ],
    },
}


def register_public_pem() -> str:
    """The register's public key as PEM (what the policy's issuer_key holds)."""
    return (
        REGISTER_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def credential(resident: str, *, now: float | None = None) -> str:
    """An eligibility credential for `resident`: EdDSA JWT, iss ISSUER, sub the resident."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "sub": resident,
        "iat": issued,
        "exp": issued + CREDENTIAL_LIFETIME,
        "register": "residents",
    }
    return jwt.encode(claims, REGISTER_KEY, algorithm="EdDSA")


class Responses:
    """What the consultation recorded (kept in memory: a demo)."""

    def __init__(self) -> None:
        self.by_survey: dict[str, list[dict[str, Any]]] = {s: [] for s in SURVEYS}


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def add_routes(app: web.Application) -> None:
    responses = Responses()

    async def register_index(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "service": "Hollowmere residents' register",
                "endpoints": ['POST /register/credentials {"resident": "HM-R-1001"}'],
                "residents": "HM-R-1001 to HM-R-1050 (demo residents)",
            }
        )

    async def issue(request: web.Request) -> web.Response:
        body = await _body(request)
        resident = body.get("resident") if body else None
        if not isinstance(resident, str) or resident not in RESIDENTS:
            return web.json_response(
                {"error": "not a registered resident (the demo's are HM-R-1001 to HM-R-1050)"},
                status=404,
            )
        return web.json_response(
            {"credential": credential(resident), "expires_in": CREDENTIAL_LIFETIME}, status=201
        )

    async def consult_index(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "service": "Hollowmere city consultations",
                "surveys": [
                    {"id": s["id"], "title": s["title"], "closes": s["closes"]}
                    for s in SURVEYS.values()
                ],
            }
        )

    async def survey(request: web.Request) -> web.Response:
        found = SURVEYS.get(request.match_info["survey"])
        if found is None:
            return web.json_response({"error": "no such survey"}, status=404)
        return web.json_response(found)

    async def respond(request: web.Request) -> web.Response:
        survey_id = request.match_info["survey"]
        found = SURVEYS.get(survey_id)
        if found is None:
            return web.json_response({"error": "no such survey"}, status=404)
        body = await _body(request)
        choices = found["questions"][0]["choices"]
        if body is None or body.get("answer") not in choices:
            return web.json_response(
                {"error": f"answer must be one of: {', '.join(choices)}"}, status=422
            )
        comment = body.get("comment")
        recorded = responses.by_survey[survey_id]
        recorded.append({"answer": body["answer"], "comment": comment if comment else None})
        return web.json_response(
            {"recorded": True, "survey": survey_id, "response": len(recorded)}, status=201
        )

    async def results(request: web.Request) -> web.Response:
        survey_id = request.match_info["survey"]
        if survey_id not in SURVEYS:
            return web.json_response({"error": "no such survey"}, status=404)
        counts: dict[str, int] = {c: 0 for c in SURVEYS[survey_id]["questions"][0]["choices"]}
        for response in responses.by_survey[survey_id]:
            counts[response["answer"]] += 1
        return web.json_response(
            {"survey": survey_id, "responses": sum(counts.values()), "counts": counts}
        )

    router = app.router
    for path in ("/register", "/register/"):
        router.add_get(path, register_index)
    router.add_post("/register/credentials", issue)
    for path in ("/consult", "/consult/"):
        router.add_get(path, consult_index)
    survey_path = "/consult/surveys/{survey:[a-z0-9-]{1,64}}"
    router.add_get(survey_path, survey)
    router.add_post(survey_path + "/responses", respond)
    router.add_get(survey_path + "/results", results)
