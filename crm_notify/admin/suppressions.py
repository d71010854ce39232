"""Admin API of the suppression list: ``/v1/suppressions`` (add, list, remove).

Authenticated like the event API: HTTP Basic with an API key as the user name (or a Bearer
token). Status codes: 201 added (or updated), 200 listed, 204 removed, 401 missing or unknown
key, 404 no such entry, 422 invalid input (``field`` names it), 400 a body that is not a JSON
object, 413 a body over 64 KiB. Error bodies are
``{"error", "field", "code", "message"}`` like the event API's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.admin._http import (
    ApiProblem,
    Authenticate,
    error_response,
    problem_response,
    read_json_object,
    request_key_name,
    require_key_name,
    unauthorized,
)
from crm_notify.config import PURPOSE_PATTERN
from crm_notify.db import session_scope
from crm_notify.errors import EventValidationError
from crm_notify.events.emails import normalise_email
from crm_notify.guards.models import ALL_PURPOSES, Suppression, SuppressionReason
from crm_notify.guards.suppression import (
    AdminReason,
    list_suppressions,
    suppress,
    unsuppress,
)

#: Largest page of ``GET /v1/suppressions``.
MAX_LIMIT = 1000


class SuppressionCreate(BaseModel):
    """Body of ``POST /v1/suppressions``."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=320)
    reason: AdminReason = "manual"
    purpose: str = Field(ALL_PURPOSES, description='"*" (every purpose) or one purpose.')
    detail: str | None = Field(None, max_length=2000)


def suppression_json(entry: Suppression) -> dict[str, Any]:
    """An entry as the API shows it."""
    return {
        "id": entry.id,
        "email": entry.email,
        "address_hash": entry.address_hash,
        "purpose": entry.purpose,
        "reason": entry.reason,
        "detail": entry.detail,
        "created_by": entry.created_by,
        "created_at": entry.created_at.isoformat(),
    }


def _check_purpose(purpose: str, purposes: Sequence[str]) -> str | None:
    """Why ``purpose`` is refused, or ``None``."""
    if purpose == ALL_PURPOSES:
        return None
    if not PURPOSE_PATTERN.fullmatch(purpose):
        return 'must be "*" or a purpose name such as marketing'
    if purposes and purpose not in purposes:
        return f"unknown purpose (known: *, {', '.join(purposes)})"
    return None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise EventValidationError(name, f"must be a whole number from {low} to {high}")
    return int(raw)


def make_router(
    *, engine: Engine, authenticate: Authenticate, purposes: Sequence[str] = ()
) -> APIRouter:
    """Build the ``/v1/suppressions`` routes.

    Parameters:
        engine: the database.
        authenticate: maps an API key to its name (recorded as ``created_by``).
        purposes: the configured purposes; when given, other purposes are refused.
    """
    router = APIRouter(prefix="/v1/suppressions", tags=["suppressions"])

    def add(body: SuppressionCreate, key_name: str) -> dict[str, Any]:
        with session_scope(engine) as session:
            entry = suppress(
                session=session,
                email=body.email,
                reason=body.reason,
                purpose=body.purpose,
                detail=body.detail,
                created_by=key_name,
            )
            return suppression_json(entry)

    @router.post("", status_code=201, summary="Suppress an address")
    async def create(request: Request) -> Response:
        try:
            key_name = await require_key_name(request, authenticate)
            body = SuppressionCreate.model_validate(await read_json_object(request))
            normalise_email(body.email)
        except ApiProblem as problem:
            return problem_response(problem)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or None
            return error_response(422, "invalid_request", f"{field}: {first['msg']}", field)
        except EventValidationError as exc:
            return error_response(422, "invalid_request", f"email: {exc.message}", "email")
        refusal = _check_purpose(body.purpose, purposes)
        if refusal is not None:
            return error_response(422, "invalid_request", f"purpose: {refusal}", "purpose")
        created = await run_in_threadpool(add, body, key_name)
        return JSONResponse(created, status_code=201)

    @router.get("", summary="List suppressed addresses, newest first")
    def listing(request: Request) -> Response:
        if request_key_name(request, authenticate) is None:
            return unauthorized()
        reason = request.query_params.get("reason") or None
        try:
            if reason is not None and reason not in set(SuppressionReason):
                raise EventValidationError(
                    "reason", f"must be one of {', '.join(SuppressionReason)}"
                )
            limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
            offset = _int_param(request, "offset", 0, 0, 10**9)
        except EventValidationError as exc:
            return error_response(422, "invalid_request", str(exc), exc.field)
        with Session(engine) as session:
            rows = list_suppressions(session=session, reason=reason, limit=limit, offset=offset)
            items = [suppression_json(row) for row in rows]
        return JSONResponse({"suppressions": items, "limit": limit, "offset": offset})

    @router.delete("/{email}", status_code=204, summary="Remove an address's entry")
    def remove(request: Request, email: str) -> Response:
        if request_key_name(request, authenticate) is None:
            return unauthorized()
        purpose = request.query_params.get("purpose") or ALL_PURPOSES
        try:
            normalise_email(email)
        except EventValidationError as exc:
            return error_response(422, "invalid_request", f"email: {exc.message}", "email")
        with session_scope(engine) as session:
            removed = unsuppress(session=session, email=email, purpose=purpose)
        if not removed:
            return error_response(
                404,
                "not_found",
                f"no suppression entry for this address and purpose {purpose}",
                None,
            )
        return Response(status_code=204)

    return router
