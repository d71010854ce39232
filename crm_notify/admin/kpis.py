"""Admin API of the KPIs: ``GET /v1/kpis``.

Query: ``rule``, ``since`` and ``until`` (ISO date or date-time, or a duration such as ``7d``
meaning that long ago; ``since`` defaults to 30 days). Answers 200 with
``{"since", "until", "rules": [{rule, channel, sent, failed, delivered, opened, clicked,
bounced, complained, unsubscribed, delivery_rate, open_rate, click_rate, bounce_rate,
complaint_rate}]}``, 401, or 422 (``field`` names the bad parameter). Authenticated like the
event API.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.admin._http import (
    ApiProblem,
    Authenticate,
    problem_response,
    query_moments,
    request_key_name,
    unauthorized,
)
from crm_notify.clock import now
from crm_notify.kpis import rule_kpis

#: The window when ``since`` is not given.
DEFAULT_WINDOW = timedelta(days=30)


def make_router(*, engine: Engine, authenticate: Authenticate) -> APIRouter:
    """Build the ``GET /v1/kpis`` route."""
    router = APIRouter(prefix="/v1", tags=["kpis"])

    @router.get("/kpis", summary="Per-rule delivery, open, click, bounce and complaint rates")
    def kpis(request: Request) -> Response:
        if request_key_name(request, authenticate) is None:
            return unauthorized()
        params = request.query_params
        try:
            moments = query_moments(params, "since", "until")
        except ApiProblem as problem:
            return problem_response(problem)
        since = moments["since"] or now() - DEFAULT_WINDOW
        with Session(engine) as session:
            rows = rule_kpis(
                session=session, since=since, until=moments["until"], rule=params.get("rule")
            )
        until = moments["until"]
        return JSONResponse(
            {
                "since": since.isoformat(),
                "until": until.isoformat() if until else None,
                "rules": [row.to_json() for row in rows],
            }
        )

    return router
