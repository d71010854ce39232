"""Admin API of the decision log: ``GET /v1/decisions`` returns a contact's explained timeline.

Query: ``contact`` (required: an email, ``user:<userId>`` or ``id:<n>``), ``rule``, ``since``
and ``until`` (ISO date or date-time, or a duration such as ``7d`` meaning that long ago),
``limit`` (most recent entries, default 200). Answers 200 with the timeline of
:meth:`crm_notify.explain.Timeline.to_json`, 401, 404 (no such contact) or 422 (``field``
names the bad parameter). Authenticated like the event API.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.admin._http import (
    ApiProblem,
    Authenticate,
    contact_by_ref,
    error_response,
    problem_response,
    query_moments,
    request_key_name,
    unauthorized,
)
from crm_notify.explain import DEFAULT_LIMIT, explain_contact

#: Most entries one answer holds.
MAX_LIMIT = 2000


def make_router(
    *, engine: Engine, authenticate: Authenticate, purposes: Sequence[str] = ("marketing",)
) -> APIRouter:
    """Build the ``GET /v1/decisions`` route.

    Parameters:
        engine: the database.
        authenticate: maps an API key to its name.
        purposes: the configured purposes, shown in the contact's consent summary.
    """
    router = APIRouter(prefix="/v1", tags=["decisions"])

    @router.get("/decisions", summary="Why a contact got, or did not get, each message")
    def decisions(request: Request) -> Response:
        if request_key_name(request, authenticate) is None:
            return unauthorized()
        params = request.query_params
        try:
            moments = query_moments(params, "since", "until")
        except ApiProblem as problem:
            return problem_response(problem)
        raw_limit = params.get("limit") or str(DEFAULT_LIMIT)
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            return _invalid("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        with Session(engine) as session:
            try:
                contact = contact_by_ref(session, params.get("contact", ""))
            except ApiProblem as problem:
                return problem_response(problem)
            timeline = explain_contact(
                session=session,
                contact=contact,
                rule=params.get("rule") or None,
                since=moments["since"],
                until=moments["until"],
                purposes=purposes,
                limit=int(raw_limit),
            )
            return JSONResponse(timeline.to_json())

    return router


def _invalid(field: str, message: str) -> JSONResponse:
    return error_response(422, "invalid_request", f"{field}: {message}", field)
