"""The Segment HTTP Tracking API (``/v1/track`` ... ``/v1/batch``) as a FastAPI router.

Shops point a Segment or RudderStack server SDK at us. Per request: authenticate the HTTP Basic
write key (before reading the body), check the content type, read the body within Segment's
size limit, decode it (gzip, strict JSON), find the write key in the body when there was no
header, parse the calls, then hand them to ``ingest`` in a worker thread. A body that cannot
be decoded gets its 400 even without credentials (it has no key to check); calls are only
validated once the key is known. A Basic header wins over a ``writeKey`` in the body.

Status codes: 200 ``{"success": true}``; 400 invalid body or call; 401 missing or unknown
write key; 413 a size limit exceeded; 415 unsupported content type. Error bodies carry
``error`` and ``field`` plus the ``code`` and ``message`` the SDKs read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from crm_notify.clock import now
from crm_notify.errors import EventError, EventValidationError, PayloadTooLargeError
from crm_notify.events.bodies import (
    AliasBody,
    BatchBody,
    ErrorResponse,
    GroupBody,
    IdentifyBody,
    PageBody,
    SuccessResponse,
    TrackBody,
    inline_schema,
)
from crm_notify.events.decoding import (
    BATCH_LIMIT_NAME,
    CALL_LIMIT_NAME,
    MAX_BATCH_BYTES,
    MAX_CALL_BYTES,
    decode_body,
    gzip_wire_limit,
)
from crm_notify.events.schemas import CallType, SegmentCall, parse_batch, parse_call

#: ``ingest(calls, key_name)``: stores accepted calls; sync and blocking (runs in a thread).
Ingest = Callable[[list[SegmentCall], str], None]
#: ``authenticate(write_key)``: the key's name, or ``None`` when unknown.
Authenticate = Callable[[str], str | None]

#: Media types accepted: Segment's server SDKs send JSON, analytics.js sends text/plain.
ACCEPTED_MEDIA_TYPES = frozenset({"application/json", "text/plain"})

#: Route name -> (call type, or None for a batch; body model documented in OpenAPI).
ROUTES: dict[str, tuple[CallType | None, type[BaseModel]]] = {
    "track": ("track", TrackBody),
    "identify": ("identify", IdentifyBody),
    "page": ("page", PageBody),
    "screen": ("screen", PageBody),
    "group": ("group", GroupBody),
    "alias": ("alias", AliasBody),
    "batch": (None, BatchBody),
    "import": (None, BatchBody),  # Segment's mobile libraries post batches here
}

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid body or call; `field` names it."},
    401: {"model": ErrorResponse, "description": "Missing or unknown write key."},
    413: {"model": ErrorResponse, "description": "A Segment size limit was exceeded."},
    415: {"model": ErrorResponse, "description": "Unsupported Content-Type."},
}


class _Unauthorized(Exception):
    """No usable write key: answered with 401."""


class _UnsupportedMediaType(Exception):
    """A Content-Type other than JSON or text: answered with 415."""


def make_router(*, ingest: Ingest, authenticate: Authenticate) -> APIRouter:
    """Build the Tracking API routes (``POST /v1/{track,identify,page,screen,group,alias}``,
    ``/v1/batch`` and its alias ``/v1/import``).

    Parameters:
        ingest: receives the parsed calls and the write key's name (never an empty list); may
            raise ``EventError``, answered with 400 (413 for ``PayloadTooLargeError``).
        authenticate: maps a write key to its name, or ``None`` when unknown.

    Returns:
        The router; include it in an app as is.
    """
    router = APIRouter(prefix="/v1", tags=["tracking"])
    for route, (call_type, body_model) in ROUTES.items():
        router.add_api_route(
            f"/{route}",
            _make_endpoint(call_type, ingest, authenticate),
            methods=["POST"],
            name=f"segment_{route}",
            summary=f"Segment {route}" + (" (alias of batch)" if route == "import" else ""),
            response_model=SuccessResponse,
            responses=_RESPONSES,
            openapi_extra={"requestBody": _request_body(body_model)},
        )
    return router


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = inline_schema(model)
    return {
        "required": True,
        "content": {"application/json": {"schema": schema}, "text/plain": {"schema": schema}},
    }


def _make_endpoint(
    call_type: CallType | None, ingest: Ingest, authenticate: Authenticate
) -> Callable[[Request], Any]:
    batch = call_type is None
    limit, limit_name = (
        (MAX_BATCH_BYTES, BATCH_LIMIT_NAME) if batch else (MAX_CALL_BYTES, CALL_LIMIT_NAME)
    )

    def process(body: bytes, encoding: str | None, key_name: str | None, at: datetime) -> None:
        obj = decode_body(body, content_encoding=encoding, batch=batch)
        if key_name is None:
            key_name = _authenticate_body(obj, authenticate)
        if batch:
            calls = parse_batch(obj, received_at=at)
        else:
            calls = [parse_call(obj, type_hint=call_type, received_at=at)]
        if calls:
            ingest(calls, key_name)

    async def endpoint(request: Request) -> Response:
        received_at = now()
        try:
            key_name = await _authenticate_header(request, authenticate)
            _check_media_type(request.headers.get("content-type"))
            encoding = request.headers.get("content-encoding")
            gzipped = (encoding or "identity").strip().lower() not in ("", "identity")
            wire_limit = gzip_wire_limit(limit) if gzipped else limit
            body = await _read_body(request, wire_limit, limit, limit_name)
            await run_in_threadpool(process, body, encoding, key_name, received_at)
        except _Unauthorized as exc:
            return _error(401, "unauthorized", str(exc), None, {"WWW-Authenticate": _CHALLENGE})
        except _UnsupportedMediaType as exc:
            return _error(415, "unsupported_media_type", str(exc), "Content-Type")
        except PayloadTooLargeError as exc:
            return _error(413, "payload_too_large", str(exc), exc.field or None)
        except EventValidationError as exc:
            return _error(400, "invalid_request", str(exc), exc.field or None)
        except EventError as exc:
            return _error(400, "invalid_request", str(exc), getattr(exc, "field", None) or None)
        return JSONResponse({"success": True})

    return endpoint


#: The 401 challenge: HTTP Basic with the write key as user name.
_CHALLENGE = 'Basic realm="crm-notify"'


async def _authenticate_header(request: Request, authenticate: Authenticate) -> str | None:
    """Return the key name for an HTTP Basic write key, ``None`` when there is no Basic header."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic":
        return None  # no header, or a Bearer token: the body's writeKey decides
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _Unauthorized("malformed Basic credentials") from exc
    write_key = decoded.partition(":")[0]  # the password is empty and ignored
    if not write_key:
        raise _Unauthorized("missing write key")
    key_name = await run_in_threadpool(authenticate, write_key)
    if key_name is None:
        raise _Unauthorized("invalid write key")
    return key_name


def _authenticate_body(obj: dict[str, Any], authenticate: Authenticate) -> str:
    write_key = obj.get("writeKey")
    if not isinstance(write_key, str) or not write_key:
        raise _Unauthorized("missing write key: send it as the Basic user name or as writeKey")
    key_name = authenticate(write_key)
    if key_name is None:
        raise _Unauthorized("invalid write key")
    return key_name


def _check_media_type(content_type: str | None) -> None:
    if content_type is None:
        return
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type and media_type not in ACCEPTED_MEDIA_TYPES:
        raise _UnsupportedMediaType(
            f"unsupported Content-Type {media_type!r}; send application/json"
        )


async def _read_body(request: Request, wire_limit: int, limit: int, limit_name: str) -> bytes:
    """Read the body, stopping as soon as it passes ``wire_limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > wire_limit:
        raise PayloadTooLargeError(limit_name, limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > wire_limit:
                raise PayloadTooLargeError(limit_name, limit)
    except ClientDisconnect as exc:
        raise EventValidationError("", "the client disconnected before the body ended") from exc
    return bytes(body)


def _error(
    status: int, code: str, message: str, field: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    content = {"error": message, "field": field, "code": code, "message": message}
    return JSONResponse(content, status_code=status, headers=headers)
