"""The URIs the integration calls: download the items, cancel or reject one, finish the gate.

::

    GET  /v1/gates/{gateId}/items?token=...              200 {"gateId", "items", "next"}
    POST /v1/gates/{gateId}/items/{id}/cancel?token=...  200 {"gateId", "id", "status", "changed"}
    POST /v1/gates/{gateId}/items/{id}/reject?token=...  (the same)
    POST /v1/gates/{gateId}/finish?token=...             200 {"gateId", "status", "released"}

No API key: each URI carries its own token (:mod:`crm_notify.gates.tokens`), checked first.
A cancel or reject body is optional: ``{"reason": "..."}`` or plain text. A finish body is
optional: ``{"items": [{"id": "<id>", "data": {...}}]}``. Cancel and reject bodies over
64 KiB, and finish bodies over 16 MiB, are refused unread; an item's data may hold 16 KiB.

Status codes: 403 a missing, forged or misdirected token (another gate, item or action);
404 no such gate, or no such item in it; 409 the gate is finished (a second finish, a cancel
after finish), or the item is neither held nor cancelled; 410 the gate timed out or its
deadline has passed; 400 a finish body that is not a JSON object; 413 a body over 64 KiB; 422
a finish body that is wrong (``field`` names the place, e.g. ``items[2].id``). Nothing is
changed by a refused call; a repeated cancel is 200 with ``"changed": false``. Error bodies
are ``{"error", "field", "code", "message"}`` like the rest of the API's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.admin._http import ApiProblem, problem_response
from crm_notify.clock import now
from crm_notify.db import session_scope
from crm_notify.errors import GateClosedError
from crm_notify.gates.model import Gate, GateStatus
from crm_notify.gates.payload import GATES_PATH, gate_uri, held_items, item_json
from crm_notify.gates.release import cancel_item, release
from crm_notify.gates.tokens import GateAction, check_gate_token
from crm_notify.outbox.models import Notification

logger = logging.getLogger(__name__)

#: Largest cancel or reject body read.
MAX_BODY_BYTES = 64 * 1024
#: Largest finish body read: data for every item of a large batch (about 45 bytes an item
#: for a promo code) in one call.
MAX_FINISH_BODY_BYTES = 16 * 1024 * 1024
#: Largest data attached to one item (as JSON).
MAX_ITEM_DATA_BYTES = 16 * 1024
#: Ids per query when checking a finish body's items.
_ID_CHUNK = 500
#: Items per page of the download, unless ``limit`` says otherwise, and the most it may say.
DEFAULT_PAGE = 1000
MAX_PAGE = 5000

#: ``enqueue(notification_ids)``: hand released notifications to the broker.
Enqueue = Callable[[Sequence[int]], None]


def make_router(
    *, engine: Engine, secret_key: bytes, base_url: str, enqueue: Enqueue | None
) -> APIRouter:
    """Build the gate routes (see the module docstring).

    Parameters:
        engine: the database.
        secret_key: the key that signs the URIs' tokens.
        base_url: the service's public base URL (the ``next`` page and item URIs).
        enqueue: hands released notifications to the broker after the commit (``None``: the
            outbox relay finds them).
    """
    router = APIRouter(prefix=GATES_PATH, tags=["gates"])

    def check(request: Request, public_id: str, action: GateAction, item: str | None) -> int | None:
        item_id = (
            int(item)
            if item is not None and item.isascii() and item.isdigit() and len(item) < 19
            else None
        )
        if item is not None and item_id is None:
            raise ApiProblem(404, "not_found", "no such item in this gate")
        token = request.query_params.get("token")
        if not check_gate_token(
            secret_key, token, public_id=public_id, action=action, item_id=item_id
        ):
            raise ApiProblem(403, "forbidden", "missing or invalid token for this URI", "token")
        return item_id

    def hand_over(notification_ids: Sequence[int]) -> None:
        if notification_ids and enqueue is not None:
            try:
                enqueue(notification_ids)
            except Exception:  # the outbox relay requeues them
                logger.exception("enqueue after a gate call failed")

    def download(public_id: str, after: int | None, limit: int) -> dict[str, Any]:
        with Session(engine) as session:
            gate = _open_gate(session, public_id, lock=False)
            rows = held_items(session, gate, after=after, limit=limit)
            items = [
                item_json(
                    row,
                    public_id=public_id,
                    batch=gate.batch,
                    base_url=base_url,
                    secret_key=secret_key,
                )
                for row in rows
            ]
        next_uri = None
        if len(rows) == limit:
            uri = gate_uri(base_url, secret_key, public_id=public_id, action=GateAction.ITEMS)
            next_uri = f"{uri}&after={rows[-1].id}&limit={limit}"
        return {"gateId": public_id, "items": items, "next": next_uri}

    @router.get("/{public_id}/items", summary="Download the items a gate holds")
    async def items(request: Request, public_id: str) -> Response:
        try:
            check(request, public_id, GateAction.ITEMS, None)
            after = _int_param(request, "after", None, 0, 2**62)
            limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
            assert limit is not None
            return JSONResponse(await run_in_threadpool(download, public_id, after, limit))
        except ApiProblem as problem:
            return problem_response(problem)

    def cancel(public_id: str, item_id: int, reason: str, action: GateAction) -> dict[str, Any]:
        with session_scope(engine) as session:
            gate = _open_gate(session, public_id, lock=True)
            try:
                result = cancel_item(session, gate, item_id, reason=reason, action=action.value)
            except GateClosedError as exc:
                raise _closed(exc.status) from exc
            if result.status is None:
                raise ApiProblem(404, "not_found", "no such item in this gate")
            if not result.changed and result.status != "cancelled":
                raise ApiProblem(409, "conflict", f"the item is {result.status}, not held")
        hand_over(result.notification_ids)
        return {
            "gateId": public_id,
            "id": str(item_id),
            "status": result.status,
            "changed": result.changed,
        }

    async def cancel_route(
        request: Request, public_id: str, item: str, action: GateAction
    ) -> Response:
        try:
            item_id = check(request, public_id, action, item)
            assert item_id is not None
            reason = _reason(await _read_body(request))
            return JSONResponse(await run_in_threadpool(cancel, public_id, item_id, reason, action))
        except ApiProblem as problem:
            return problem_response(problem)

    @router.post("/{public_id}/items/{item}/cancel", summary="Reject one item of a batch")
    async def cancel_uri(request: Request, public_id: str, item: str) -> Response:
        return await cancel_route(request, public_id, item, GateAction.CANCEL)

    @router.post("/{public_id}/items/{item}/reject", summary="Reject one item of a single send")
    async def reject_uri(request: Request, public_id: str, item: str) -> Response:
        return await cancel_route(request, public_id, item, GateAction.REJECT)

    def finish(public_id: str, items_data: dict[int, dict[str, Any]]) -> dict[str, Any]:
        with session_scope(engine) as session:
            gate = _open_gate(session, public_id, lock=True)
            _check_items(session, gate, items_data)
            try:
                released = release(session, gate, items_data)
            except GateClosedError as exc:
                raise _closed(exc.status) from exc
        hand_over(released)
        return {"gateId": public_id, "status": GateStatus.FINISHED.value, "released": len(released)}

    @router.post("/{public_id}/finish", summary="Release every item not cancelled")
    async def finish_uri(request: Request, public_id: str) -> Response:
        try:
            check(request, public_id, GateAction.FINISH, None)
            items_data = _items_data(await _read_body(request, limit=MAX_FINISH_BODY_BYTES))
            return JSONResponse(await run_in_threadpool(finish, public_id, items_data))
        except ApiProblem as problem:
            return problem_response(problem)

    return router


def _open_gate(session: Session, public_id: str, *, lock: bool) -> Gate:
    """The gate, locked when ``lock``, if it is open and before its deadline.

    Raises:
        ApiProblem: 404 no such gate; 409 finished; 410 timed out or past its deadline.
    """
    query = select(Gate).where(col(Gate.public_id) == public_id)
    gate = session.exec(query.with_for_update() if lock else query).first()
    if gate is None:
        raise ApiProblem(404, "not_found", "no such gate")
    if gate.status != GateStatus.OPEN:
        raise _closed(gate.status)
    if now() >= gate.deadline:
        raise _closed(GateStatus.TIMED_OUT)
    return gate


def _closed(status: str) -> ApiProblem:
    if status == GateStatus.FINISHED:
        return ApiProblem(409, "gate_finished", "the gate is finished: nothing was changed")
    return ApiProblem(410, "gate_expired", "the gate's deadline has passed: nothing was changed")


async def _read_body(request: Request, *, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, at most ``limit`` bytes (read no further).

    Raises:
        ApiProblem: 413 a larger body.
    """
    too_large = ApiProblem(413, "payload_too_large", f"body larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(body: bytes) -> str:
    """The reason a cancel body gives: ``{"reason": "..."}``, or the text itself."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return ""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        reason = data.get("reason")
        return reason if isinstance(reason, str) else json.dumps(reason) if reason else ""
    return data if isinstance(data, str) else text


def _items_data(body: bytes) -> dict[int, dict[str, Any]]:
    """The data a finish body attaches, by notification id.

    Raises:
        ApiProblem: 400 not a JSON object; 422 a wrong field (named).
    """
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem(400, "invalid_request", f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiProblem(400, "invalid_request", "body must be a JSON object")
    items = data.get("items", [])
    if not isinstance(items, list):
        raise ApiProblem(422, "invalid_request", "items: must be a list", "items")
    found: dict[int, dict[str, Any]] = {}
    for index, entry in enumerate(items):
        where = f"items[{index}]"
        if not isinstance(entry, dict):
            raise ApiProblem(422, "invalid_request", f"{where}: must be an object", where)
        raw = entry.get("id")
        text = str(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else ""
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            message = f"{where}.id: must be an item id as given in the items"
            raise ApiProblem(422, "invalid_request", message, f"{where}.id")
        value = entry.get("data", {})
        if not isinstance(value, dict):
            message = f"{where}.data: must be an object"
            raise ApiProblem(422, "invalid_request", message, f"{where}.data")
        if int(text) in found:
            raise ApiProblem(422, "invalid_request", f"{where}.id: given twice", f"{where}.id")
        if len(json.dumps(value)) > MAX_ITEM_DATA_BYTES:
            message = f"{where}.data: larger than {MAX_ITEM_DATA_BYTES} bytes as JSON"
            raise ApiProblem(422, "invalid_request", message, f"{where}.data")
        found[int(text)] = value
    return found


def _check_items(session: Session, gate: Gate, items_data: dict[int, dict[str, Any]]) -> None:
    """Refuse (422) data for notifications that are not items of ``gate``."""
    if not items_data:
        return
    ids = list(items_data)
    known: set[int | None] = set()
    for start in range(0, len(ids), _ID_CHUNK):
        known.update(
            session.exec(
                select(Notification.id)
                .where(col(Notification.gate_id) == gate.id)
                .where(col(Notification.id).in_(ids[start : start + _ID_CHUNK]))
            ).all()
        )
    for index, notification_id in enumerate(items_data):
        if notification_id not in known:
            field = f"items[{index}].id"
            raise ApiProblem(422, "invalid_request", f"{field}: no such item in this gate", field)


def _int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiProblem(
            422, "invalid_request", f"{name}: must be a whole number from {low} to {high}", name
        )
    return int(raw)
