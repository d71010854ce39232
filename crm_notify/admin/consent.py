"""Admin API of the consent ledger: ``POST /v1/consent`` records, ``GET /v1/consent`` reads.

Authenticated with an API key like the event API (HTTP Basic with the key as user name, or
``Authorization: Bearer <key>``). Errors are JSON ``{"error", "field", "code", "message"}``.

``POST /v1/consent`` names the contact by exactly one of ``email``, ``userId`` or
``contactId``. An unknown ``email`` creates the contact (consent is often collected before
the shop sends an ``identify``, e.g. a newsletter form or an import; a later ``identify`` with
that address finds it); an unknown ``userId`` or ``contactId`` is a 404.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from crm_notify.admin._http import (
    ApiProblem,
    Authenticate,
    contact_by_ref,
    problem_response,
    read_json_object,
    require_key_name,
)
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import find_contact_by_ref
from crm_notify.db import session_scope
from crm_notify.errors import EventValidationError
from crm_notify.events.emails import normalise_email
from crm_notify.guards.consent import consent_history, record_consent
from crm_notify.guards.models import ConsentRecord, ConsentSource, LawfulBasis

#: Fields ``POST /v1/consent`` accepts.
FIELDS = frozenset(
    {
        "email",
        "userId",
        "contactId",
        "purpose",
        "granted",
        "lawful_basis",
        "text_version",
        "ip",
        "user_agent",
        "source",
    }
)


def record_json(record: ConsentRecord) -> dict[str, Any]:
    """A consent record as the API shows it."""
    return {
        "id": record.id,
        "contact_id": record.contact_id,
        "purpose": record.purpose,
        "granted": record.granted,
        "source": record.source,
        "lawful_basis": record.lawful_basis,
        "text_version": record.text_version,
        "ip": record.ip,
        "user_agent": record.user_agent,
        "actor": record.actor,
        "event_id": record.event_id,
        "notification_id": record.notification_id,
        "recorded_at": record.recorded_at.isoformat(),
    }


def make_router(
    *, engine: Engine, authenticate: Authenticate, purposes: Sequence[str]
) -> APIRouter:
    """Build ``POST /v1/consent`` and ``GET /v1/consent?contact=<ref>``.

    Parameters:
        engine: the database.
        authenticate: maps an API key to its name, or ``None`` (``ApiKeyAuthenticator``).
        purposes: ``Settings.purpose_names``; consent to another purpose is refused (422).
    """
    router = APIRouter(prefix="/v1", tags=["consent"])
    known = tuple(purposes)

    def create(body: dict[str, Any], actor: str) -> dict[str, Any]:
        values = _validate(body, known)
        with session_scope(engine) as session:
            contact = _contact(session, body)
            assert contact.id is not None
            record = record_consent(session=session, contact_id=contact.id, actor=actor, **values)
            assert record is not None
            return record_json(record)

    def show(ref: str) -> dict[str, Any]:
        with Session(engine) as session:
            contact = contact_by_ref(session, ref)
            assert contact.id is not None
            history = [
                record_json(r) for r in consent_history(session=session, contact_id=contact.id)
            ]
        current: dict[str, Any] = {purpose: None for purpose in known}
        for record in history:
            current[record["purpose"]] = record
        return {"contact_id": contact.id, "current": current, "history": history}

    @router.post("/consent", status_code=201, summary="Record a consent grant or withdrawal")
    async def post_consent(request: Request) -> JSONResponse:
        try:
            actor = await require_key_name(request, authenticate)
            body = await read_json_object(request)
            return JSONResponse(await run_in_threadpool(create, body, actor), status_code=201)
        except ApiProblem as problem:
            return problem_response(problem)

    @router.get("/consent", summary="A contact's current consent and its history")
    async def get_consent(request: Request, contact: str = "") -> JSONResponse:
        try:
            await require_key_name(request, authenticate)
            return JSONResponse(await run_in_threadpool(show, contact))
        except ApiProblem as problem:
            return problem_response(problem)

    return router


def _validate(body: dict[str, Any], purposes: Sequence[str]) -> dict[str, Any]:
    """The ``record_consent`` arguments of a request body (the contact aside)."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiProblem(422, "invalid_request", f"unknown field {unknown[0]!r}", unknown[0])
    purpose = body.get("purpose")
    if purpose not in purposes:
        raise ApiProblem(
            422, "invalid_request", f"purpose must be one of {', '.join(purposes)}", "purpose"
        )
    if not isinstance(body.get("granted"), bool):
        raise ApiProblem(422, "invalid_request", "granted must be true or false", "granted")
    lawful_basis = body.get("lawful_basis", LawfulBasis.CONSENT)
    if lawful_basis not in set(LawfulBasis):
        choices = ", ".join(LawfulBasis)
        raise ApiProblem(
            422, "invalid_request", f"lawful_basis must be one of {choices}", "lawful_basis"
        )
    source = body.get("source", ConsentSource.API)
    if source not in set(ConsentSource):
        choices = ", ".join(ConsentSource)
        raise ApiProblem(422, "invalid_request", f"source must be one of {choices}", "source")
    for name, limit in (("text_version", 255), ("ip", 64), ("user_agent", 1024)):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise ApiProblem(
                422, "invalid_request", f"{name} must be a string of at most {limit}", name
            )
    return {
        "purpose": purpose,
        "granted": body["granted"],
        "lawful_basis": str(lawful_basis),
        "source": str(source),
        "text_version": body.get("text_version"),
        "ip": body.get("ip"),
        "user_agent": body.get("user_agent"),
    }


def _contact(session: Session, body: dict[str, Any]) -> Contact:
    """The contact the body names; an unknown email is created (see the module docstring)."""
    named = [name for name in ("email", "userId", "contactId") if body.get(name) is not None]
    if len(named) != 1:
        raise ApiProblem(
            422,
            "invalid_request",
            "name the contact by one of email, userId or contactId",
            named[1] if named else "email",
        )
    field, value = named[0], body[named[0]]
    if field == "contactId":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiProblem(422, "invalid_request", "contactId must be an integer", field)
        ref = f"id:{value}"
    elif not isinstance(value, str) or not value.strip():
        raise ApiProblem(422, "invalid_request", f"{field} must be a non-empty string", field)
    elif field == "userId":
        ref = f"user:{value.strip()}"
    else:
        try:
            ref = normalise_email(value)
        except EventValidationError as exc:
            raise ApiProblem(422, "invalid_request", f"email: {exc.message}", field) from exc
    contact = find_contact_by_ref(session, ref)
    if contact is None and field == "email":
        try:
            with session.begin_nested():  # a concurrent first request may create it too
                contact = Contact(email=ref)
                session.add(contact)
        except IntegrityError:
            contact = find_contact_by_ref(session, ref)
    if contact is None:
        raise ApiProblem(404, "not_found", f"no contact with {field} {value}", field)
    return contact
