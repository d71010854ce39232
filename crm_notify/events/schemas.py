"""The normalised Segment call, and parsing of single calls, batches and event files.

Parsing follows the Segment Spec and the HTTP Tracking API: camelCase fields in, a frozen
``SegmentCall`` out. Every rejection is an ``EventValidationError`` naming the field path, e.g.
``batch[3].event``. Unknown fields are accepted and kept in ``SegmentCall.raw``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, get_args
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crm_notify.clock import as_utc
from crm_notify.errors import EventValidationError
from crm_notify.events._fields import (
    field_path,
    merge_under,
    read_id,
    read_object,
    read_text,
    read_timestamp,
)
from crm_notify.events.decoding import json_type, loads_strict

CallType = Literal["track", "identify", "page", "screen", "group", "alias"]
#: Every call type, in the Spec's order.
CALL_TYPES: tuple[CallType, ...] = get_args(CallType)
#: Body fields that are credentials, never kept in ``SegmentCall.raw``.
SECRET_FIELDS = frozenset({"writeKey"})


class SegmentCall(BaseModel):
    """One call of the Segment Spec, normalised.

    ``raw`` is the call as received (after JSON parsing, minus ``writeKey``), for storage.
    """

    model_config = ConfigDict(frozen=True)

    type: CallType
    message_id: str
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = None
    name: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime
    group_id: str | None = None
    previous_id: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        return as_utc(value)


def parse_call(
    obj: Any, *, type_hint: CallType | None, field_prefix: str = "", received_at: datetime
) -> SegmentCall:
    """Validate and normalise one call.

    Parameters:
        obj: the parsed JSON of the call.
        type_hint: the type implied by the route (``/v1/track``); ``None`` to require ``type``.
        field_prefix: path of the call in its document, e.g. ``batch[3]`` (the dot is added).
        received_at: when the call arrived; its timestamp when it carries none.

    Raises:
        EventValidationError: naming the offending field.

    Returns:
        The normalised call.
    """
    prefix = field_prefix.rstrip(".")
    if not isinstance(obj, dict):
        raise EventValidationError(prefix, f"a call must be a JSON object, not {json_type(obj)}")
    call_type = _call_type(obj, type_hint, prefix)
    ids = {key: read_id(obj, key, prefix) for key in ("userId", "anonymousId", "previousId")}
    group_id = read_id(obj, "groupId", prefix)
    if call_type == "alias":
        for key in ("previousId", "userId"):
            if ids[key] is None:
                raise EventValidationError(field_path(prefix, key), "is required for alias")
    elif ids["userId"] is None and ids["anonymousId"] is None:
        raise EventValidationError(
            field_path(prefix, "userId"), "is required when anonymousId is absent"
        )
    if call_type == "group" and group_id is None:
        raise EventValidationError(field_path(prefix, "groupId"), "is required for group")
    event = read_text(obj, "event", prefix)
    if call_type == "track" and event is None:
        raise EventValidationError(field_path(prefix, "event"), "is required for track")
    name = read_text(obj, "name", prefix)
    properties = read_object(obj, "properties", prefix)
    traits = read_object(obj, "traits", prefix)
    context = read_object(obj, "context", prefix)
    if call_type == "identify" and isinstance(context.get("traits"), dict):
        # The RudderStack SDK sends identify traits in context.traits only.
        traits = merge_under(context["traits"], traits)
    timestamp = read_timestamp(obj, "timestamp", prefix)
    original = read_timestamp(obj, "originalTimestamp", prefix)
    return SegmentCall(
        type=call_type,
        message_id=read_id(obj, "messageId", prefix) or str(uuid4()),
        user_id=ids["userId"],
        anonymous_id=ids["anonymousId"],
        event=event if call_type == "track" else None,
        name=name if call_type in ("page", "screen") else None,
        properties=properties if call_type in ("track", "page", "screen") else {},
        traits=traits if call_type in ("identify", "group") else {},
        context=context,
        timestamp=timestamp or original or as_utc(received_at),
        group_id=group_id if call_type == "group" else None,
        previous_id=ids["previousId"] if call_type == "alias" else None,
        raw={key: value for key, value in obj.items() if key not in SECRET_FIELDS},
    )


def parse_batch(obj: Any, *, received_at: datetime) -> list[SegmentCall]:
    """Validate and normalise a ``/v1/batch`` body ``{"batch": [...], "context": {...}}``.

    Each item carries its own ``type``; the batch-level ``context`` is merged under each item's
    context (the item wins), as Segment does.

    Parameters:
        obj: the parsed JSON body.
        received_at: when the batch arrived.

    Raises:
        EventValidationError: naming the field, e.g. ``batch[3].event``.

    Returns:
        The calls, in order.
    """
    if not isinstance(obj, dict):
        raise EventValidationError("", f"a batch must be a JSON object, not {json_type(obj)}")
    items = obj.get("batch")
    if not isinstance(items, list):
        raise EventValidationError("batch", "is required and must be an array of calls")
    shared_context = read_object(obj, "context", "")
    calls = []
    for index, item in enumerate(items):
        call = parse_call(
            item, type_hint=None, field_prefix=f"batch[{index}]", received_at=received_at
        )
        if shared_context:
            call = call.model_copy(update={"context": merge_under(shared_context, call.context)})
        calls.append(call)
    return calls


def parse_calls_document(text: str, *, received_at: datetime) -> list[SegmentCall]:
    """Parse an events file: one call, a batch body, a JSON array of calls, or JSON Lines.

    Parameters:
        text: the file's content.
        received_at: the timestamp of calls that carry none.

    Raises:
        EventValidationError: naming the field: ``batch[2].event``, ``[2].event`` in an array,
            ``line[3].event`` (1-based) in JSON Lines.

    Returns:
        The calls, in file order.
    """
    try:
        document = loads_strict(text)
    except EventValidationError as exc:
        lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        if len(lines) < 2 or not _is_extra_data(exc):
            raise
        return [_parse_line(number, line, received_at) for number, line in lines]
    if isinstance(document, list):
        return [
            parse_call(item, type_hint=None, field_prefix=f"[{index}]", received_at=received_at)
            for index, item in enumerate(document)
        ]
    if isinstance(document, dict) and "batch" in document:
        return parse_batch(document, received_at=received_at)
    return [parse_call(document, type_hint=None, received_at=received_at)]


def _parse_line(number: int, line: str, received_at: datetime) -> SegmentCall:
    prefix = f"line[{number}]"
    try:
        obj = loads_strict(line)
    except EventValidationError as exc:
        raise EventValidationError(field_path(prefix, exc.field), exc.message) from exc
    return parse_call(obj, type_hint=None, field_prefix=prefix, received_at=received_at)


def _is_extra_data(exc: EventValidationError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, json.JSONDecodeError) and cause.msg == "Extra data"


def _call_type(obj: dict[str, Any], type_hint: CallType | None, prefix: str) -> CallType:
    path = field_path(prefix, "type")
    value = obj.get("type")
    if value is None:
        if type_hint is None:
            raise EventValidationError(path, f"is required (one of {', '.join(CALL_TYPES)})")
        return type_hint
    if value not in CALL_TYPES:
        shown = repr(value) if isinstance(value, str) else json_type(value)
        raise EventValidationError(path, f"must be one of {', '.join(CALL_TYPES)}, not {shown}")
    if type_hint is not None and value != type_hint:
        raise EventValidationError(path, f"is {value!r} but this route takes {type_hint!r} calls")
    call_type: CallType = value
    return call_type
