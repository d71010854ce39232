"""Admin API of webhook subscriptions: ``/v1/webhook-subscriptions``.

Authenticated like the other admin APIs (an API key as the Basic user name, or a Bearer
token). ``POST`` creates one and answers its signing ``secret`` (shown this once);
``GET`` lists them or shows one (settings, state, counters: never the secret); ``PATCH``
enables or disables one (``{"enabled": false, "reason": "..."}``); ``DELETE`` removes an API
subscription; ``POST .../ping`` sends a signed ``webhook.ping`` and answers what came back;
``POST .../redeliver`` queues its failed deliveries again. Errors are
``{"error", "field", "code", "message"}``: 401, 404, 409 (a name taken, a file subscription
changed through the API), 422 naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
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
    problem_response,
    read_json_object,
    require_key_name,
)
from crm_notify.db import session_scope
from crm_notify.subscriptions import repository
from crm_notify.subscriptions.file import LEFT_THE_FILE
from crm_notify.subscriptions.models import SubscriptionOrigin, WebhookSubscription
from crm_notify.subscriptions.repository import SubscriptionError
from crm_notify.subscriptions.sender import SubscriptionSender


class SubscriptionCreate(BaseModel):
    """Body of ``POST /v1/webhook-subscriptions``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(max_length=2048)
    name: str | None = None
    events: list[str] = Field(default_factory=list, description="Event names; empty or * all.")
    sources: list[str] = Field(default_factory=list, description="Sources; empty or * all.")
    content_type: str = "json"
    headers: dict[str, str] = Field(default_factory=dict)
    disable_after: str | None = Field(None, description="A duration such as 3d (default 5d).")


class SubscriptionChange(BaseModel):
    """Body of ``PATCH /v1/webhook-subscriptions/{name}``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool
    reason: str | None = Field(None, max_length=500)


def _validation_problem(exc: ValidationError) -> ApiProblem:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return ApiProblem(422, "invalid_request", f"{field}: {first['msg']}", field)


async def _answer(
    request: Request, authenticate: Authenticate, work: Callable[..., Any], *args: Any
) -> Response:
    """Authenticate, run ``work(*args)`` in a thread and answer its result as JSON (or the
    problem it raised)."""
    try:
        await require_key_name(request, authenticate)
        return JSONResponse(await run_in_threadpool(work, *args))
    except ApiProblem as problem:
        return problem_response(problem)


def make_router(
    *, engine: Engine, authenticate: Authenticate, sender: SubscriptionSender
) -> APIRouter:
    """Build the ``/v1/webhook-subscriptions`` routes (see the module docstring)."""
    router = APIRouter(prefix="/v1/webhook-subscriptions", tags=["webhook subscriptions"])

    def shown(session: Session, subscription: WebhookSubscription) -> dict[str, Any]:
        counts = repository.delivery_counts(session=session).get(subscription.id or 0, {})
        return repository.subscription_json(subscription, **counts)

    def find(session: Session, name: str) -> WebhookSubscription:
        subscription = repository.by_name(session=session, name=name)
        if subscription is None:
            raise ApiProblem(404, "not_found", f"no webhook subscription named {name!r}", "name")
        return subscription

    def create_one(body: SubscriptionCreate) -> dict[str, Any]:
        with session_scope(engine) as session:
            try:
                subscription = repository.create(
                    session=session,
                    url=body.url,
                    name=body.name,
                    events=body.events,
                    sources=body.sources,
                    content_type=body.content_type,
                    headers=body.headers,
                    disable_after=body.disable_after,
                )
            except SubscriptionError as exc:
                status = 409 if "exists" in exc.message else 422
                code = "conflict" if status == 409 else "invalid_request"
                raise ApiProblem(status, code, str(exc), exc.field) from exc
            return {**shown(session, subscription), "secret": subscription.secret}

    @router.post("", status_code=201, summary="Subscribe a URL to lifecycle events")
    async def create(request: Request) -> Response:
        try:
            await require_key_name(request, authenticate)
            try:
                body = SubscriptionCreate.model_validate(await read_json_object(request))
            except ValidationError as exc:
                raise _validation_problem(exc) from exc
            created = await run_in_threadpool(create_one, body)
        except ApiProblem as problem:
            return problem_response(problem)
        return JSONResponse(created, status_code=201)

    def list_all() -> dict[str, Any]:
        with Session(engine) as session:
            counts = repository.delivery_counts(session=session)
            return {
                "subscriptions": [
                    repository.subscription_json(row, **counts.get(row.id or 0, {}))
                    for row in repository.all_subscriptions(session=session)
                ]
            }

    @router.get("", summary="List webhook subscriptions with their state and counters")
    async def listing(request: Request) -> Response:
        return await _answer(request, authenticate, list_all)

    def show_one(name: str) -> dict[str, Any]:
        with Session(engine) as session:
            return shown(session, find(session, name))

    @router.get("/{name}", summary="One webhook subscription")
    async def show(request: Request, name: str) -> Response:
        return await _answer(request, authenticate, show_one, name)

    def change_one(name: str, body: SubscriptionChange) -> dict[str, Any]:
        with session_scope(engine) as session:
            subscription = find(session, name)
            repository.set_enabled(
                session=session, subscription=subscription, enabled=body.enabled, reason=body.reason
            )
            session.flush()
            return shown(session, subscription)

    @router.patch("/{name}", summary="Enable or disable a webhook subscription")
    async def change(request: Request, name: str) -> Response:
        try:
            await require_key_name(request, authenticate)
            try:
                body = SubscriptionChange.model_validate(await read_json_object(request))
            except ValidationError as exc:
                raise _validation_problem(exc) from exc
            return JSONResponse(await run_in_threadpool(change_one, name, body))
        except ApiProblem as problem:
            return problem_response(problem)

    def remove_one(name: str) -> None:
        with session_scope(engine) as session:
            subscription = find(session, name)
            if subscription.origin == SubscriptionOrigin.FILE.value and (
                subscription.disabled_reason != LEFT_THE_FILE
            ):
                raise ApiProblem(
                    409,
                    "conflict",
                    f"{name} comes from the subscriptions file; remove it there first",
                )
            repository.remove(session=session, subscription=subscription)

    @router.delete("/{name}", status_code=204, summary="Remove a webhook subscription")
    async def remove(request: Request, name: str) -> Response:
        try:
            await require_key_name(request, authenticate)
            await run_in_threadpool(remove_one, name)
        except ApiProblem as problem:
            return problem_response(problem)
        return Response(status_code=204)

    def ping_one(name: str) -> dict[str, Any]:
        with session_scope(engine) as session:
            subscription = find(session, name)
            session.commit()  # nothing stays locked while the subscriber answers
            attempt = sender.ping(subscription)
            repository.record_ping(session=session, subscription=subscription, attempt=attempt)
            return {"ok": attempt.ok, "status": attempt.status, "error": attempt.error}

    @router.post("/{name}/ping", summary="Send a signed test event now")
    async def ping(request: Request, name: str) -> Response:
        return await _answer(request, authenticate, ping_one, name)

    def redeliver_one(name: str) -> dict[str, Any]:
        with session_scope(engine) as session:
            count = repository.redeliver_failed(session=session, subscription=find(session, name))
            return {"queued": count}

    @router.post("/{name}/redeliver", summary="Queue the failed deliveries again")
    async def redeliver(request: Request, name: str) -> Response:
        return await _answer(request, authenticate, redeliver_one, name)

    return router
