"""Admin API of the outbox: ``GET /v1/outbox`` (list) and ``POST /v1/outbox/{id}/retry``
(replay a failed notification), the HTTP side of ``crm-notify outbox``.

``GET /v1/outbox`` takes ``status``, ``rule``, ``since`` (an ISO date or date-time, or a
duration such as ``24h`` meaning that long ago) and ``limit`` (1-1000, default 100), and answers
``{"notifications": [...], "limit"}``, the most recently changed first; each row has every
column but the rendered message and the template data. ``POST /v1/outbox/{id}/retry`` replays
one ``failed`` notification as ``crm-notify outbox retry`` does (the history records
``replayed by api-key:<name>``) and answers 200 with ``{"id", "status"}``: ``queued`` (or, when
delivery ran at once, where it ended). Status codes: 401 missing or unknown key, 404 no such
notification, 409 not ``failed`` (``cancelled`` ones are never replayed), 422 a bad query
parameter (``field`` names it). Authenticated like the event API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.admin._http import (
    ApiProblem,
    Authenticate,
    error_response,
    problem_response,
    query_moments,
    request_key_name,
    require_key_name,
    unauthorized,
)
from crm_notify.db import session_scope
from crm_notify.outbox import repository
from crm_notify.outbox.models import Notification, NotificationStatus
from crm_notify.outbox.repository import notification_json

#: Largest page of ``GET /v1/outbox``.
MAX_LIMIT = 1000


def make_router(
    *, engine: Engine, authenticate: Authenticate, enqueue: Callable[[Sequence[int]], None]
) -> APIRouter:
    """Build the ``/v1/outbox`` routes.

    Parameters:
        engine: the database.
        authenticate: maps an API key to its name (recorded as who replayed).
        enqueue: hands replayed notification ids to delivery (``Runtime.enqueue``).
    """
    router = APIRouter(prefix="/v1/outbox", tags=["outbox"])

    @router.get("", summary="List notifications, the most recently changed first")
    def listing(request: Request) -> Response:
        if request_key_name(request, authenticate) is None:
            return unauthorized()
        params = request.query_params
        status = params.get("status") or None
        if status is not None and status not in set(NotificationStatus):
            allowed = ", ".join(NotificationStatus)
            message = f"status: must be one of {allowed}"
            return error_response(422, "invalid_request", message, "status")
        raw_limit = params.get("limit") or "100"
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            message = f"limit: must be a whole number from 1 to {MAX_LIMIT}"
            return error_response(422, "invalid_request", message, "limit")
        try:
            since = query_moments(params, "since")["since"]
        except ApiProblem as problem:
            return problem_response(problem)
        with Session(engine) as session:
            rows = repository.list_notifications(
                session=session,
                status=status,
                rule=params.get("rule") or None,
                since=since,
                limit=int(raw_limit),
            )
            items = [notification_json(row) for row in rows]
        return JSONResponse({"notifications": items, "limit": int(raw_limit)})

    def replay(notification_id: int, key_name: str) -> Response:
        with session_scope(engine) as session:
            result = repository.replay_failed(
                session=session, notification_ids=[notification_id], by=f"api-key:{key_name}"
            )
        if notification_id in result.refused:
            status = result.refused[notification_id]
            if status is None:
                return error_response(404, "not_found", f"no notification {notification_id}")
            why = (
                "cancelled notifications were refused by consent or suppression and are never "
                "replayed"
                if status == NotificationStatus.CANCELLED
                else "only failed notifications can be replayed"
            )
            message = f"notification {notification_id} is {status}: {why}"
            return error_response(409, "conflict", message)
        enqueue([notification_id])
        with Session(engine) as session:
            row = session.get(Notification, notification_id)
            now_status = str(row.status) if row is not None else None
        return JSONResponse({"id": notification_id, "status": now_status})

    @router.post("/{notification_id}/retry", summary="Replay a failed notification")
    async def retry(request: Request, notification_id: int) -> Response:
        try:
            key_name = await require_key_name(request, authenticate)
        except ApiProblem:
            return unauthorized()
        response: Response = await run_in_threadpool(replay, notification_id, key_name)
        return response

    return router
