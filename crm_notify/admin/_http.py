"""Request plumbing shared by the admin routers: API-key authentication, JSON bodies and the
4xx JSON answers ``{"error", "field", "code", "message"}`` of the event API."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import Session

from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import find_contact_by_ref
from crm_notify.explain import parse_moment

#: ``authenticate(api_key)``: the key's name, or ``None`` when unknown or revoked.
Authenticate = Callable[[str], str | None]

#: Largest request body read.
MAX_BODY_BYTES = 64 * 1024
#: The 401 challenge: HTTP Basic with the API key as user name.
CHALLENGE = {"WWW-Authenticate": 'Basic realm="crm-notify"'}
#: How a contact is named.
CONTACT_FORMS = "required: an email, user:<userId> or id:<n>"
#: The 401 message.
UNAUTHORIZED_MESSAGE = (
    "missing or invalid API key: send it as the Basic user name or a Bearer token"
)


class ApiProblem(Exception):
    """An answer other than success: status, code, message and the field concerned."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    """A 4xx answer in the event API's shape (a 401 carries the Basic challenge)."""
    content = {"error": message, "field": field, "code": code, "message": message}
    headers = CHALLENGE if status == 401 else None
    return JSONResponse(content, status_code=status, headers=headers)


def problem_response(problem: ApiProblem) -> JSONResponse:
    """The answer for ``problem``."""
    return error_response(problem.status, problem.code, problem.message, problem.field)


def unauthorized() -> JSONResponse:
    """The 401 answer."""
    return error_response(401, "unauthorized", UNAUTHORIZED_MESSAGE)


def request_key_name(request: Request, authenticate: Authenticate) -> str | None:
    """The name of the API key a request presents (Basic user name or Bearer token), or
    ``None`` when it presents none or an unknown one. Blocking: call it from a thread."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        key = credentials.strip()
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        key = decoded.partition(":")[0]  # the password is empty and ignored
    else:
        return None
    return authenticate(key) if key else None


async def require_key_name(request: Request, authenticate: Authenticate) -> str:
    """:func:`request_key_name` from async code.

    Raises:
        ApiProblem: 401, no known API key.
    """
    name = await run_in_threadpool(request_key_name, request, authenticate)
    if name is None:
        raise ApiProblem(401, "unauthorized", UNAUTHORIZED_MESSAGE)
    return name


async def read_json_object(request: Request, *, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body, which must be a JSON object.

    Raises:
        ApiProblem: 413 larger than ``max_bytes``; 400 not JSON, or not an object.
    """
    body = await request.body()
    if len(body) > max_bytes:
        raise ApiProblem(413, "payload_too_large", f"body larger than {max_bytes} bytes")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem(400, "invalid_request", f"body is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ApiProblem(400, "invalid_request", "body must be a JSON object")
    return obj


def contact_by_ref(session: Session, ref: str, *, field: str = "contact") -> Contact:
    """The contact ``ref`` names (an email, ``user:<userId>`` or ``id:<n>``).

    Raises:
        ApiProblem: 422 ``ref`` is empty or malformed; 404 no contact matches.
    """
    if not ref.strip():
        raise ApiProblem(422, "invalid_request", f"{field}: {CONTACT_FORMS}", field)
    try:
        contact = find_contact_by_ref(session, ref)
    except ValueError as exc:
        raise ApiProblem(422, "invalid_request", f"{field}: {exc}", field) from exc
    if contact is None:
        raise ApiProblem(404, "not_found", "no contact matches", field)
    return contact


def query_moments(params: Mapping[str, str], *names: str) -> dict[str, datetime | None]:
    """The moments named by query parameters such as ``since=7d`` or ``until=2026-11-20``
    (an ISO date or date-time, or a duration meaning that long ago; ``until`` takes a date's
    whole day); ``None`` for each one not given.

    Raises:
        ApiProblem: 422 naming the first parameter that is none of these.
    """
    moments: dict[str, datetime | None] = {}
    for name in names:
        raw = params.get(name)
        try:
            moments[name] = (
                parse_moment(raw, now=now(), end_of_day=name == "until") if raw else None
            )
        except ValueError as exc:
            raise ApiProblem(422, "invalid_request", f"{name}: {exc}", name) from exc
    return moments
