"""Typed readers for the fields of one Segment call; each error names the field's path."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from crm_notify.clock import as_utc
from crm_notify.errors import EventValidationError
from crm_notify.events.decoding import json_type

#: Longest id accepted (userId, anonymousId, messageId, groupId, previousId).
MAX_ID_CHARS = 255
#: Longest event or page/screen name accepted.
MAX_NAME_CHARS = 255
#: Longest timestamp string accepted.
MAX_TIMESTAMP_CHARS = 64


def field_path(prefix: str, name: str) -> str:
    """Join a prefix (``batch[3]``) and a field name (``event``) into ``batch[3].event``."""
    if not prefix:
        return name
    if not name:
        return prefix
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def read_id(obj: dict[str, Any], key: str, prefix: str) -> str | None:
    """Read an id: a string, or a number turned into a string as Segment does.

    ``null`` and the empty string count as absent.
    """
    value = obj.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise EventValidationError(
            field_path(prefix, key), f"must be a string or a number, not {json_type(value)}"
        )
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventValidationError(field_path(prefix, key), "must be a finite number")
        text = str(int(value)) if value.is_integer() else repr(value)
    else:
        text = str(value)
    return _bounded(text, key, prefix, MAX_ID_CHARS)


def read_text(obj: dict[str, Any], key: str, prefix: str) -> str | None:
    """Read an optional name (``event``, ``name``); the empty string counts as absent."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventValidationError(
            field_path(prefix, key), f"must be a string, not {json_type(value)}"
        )
    return _bounded(value, key, prefix, MAX_NAME_CHARS)


def read_object(obj: dict[str, Any], key: str, prefix: str) -> dict[str, Any]:
    """Read an optional JSON object (``properties``, ``traits``, ``context``); absent is ``{}``."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventValidationError(
            field_path(prefix, key), f"must be an object, not {json_type(value)}"
        )
    return value


def read_timestamp(obj: dict[str, Any], key: str, prefix: str) -> datetime | None:
    """Read an optional ISO 8601 timestamp as aware UTC; a naive one is taken to be UTC."""
    value = obj.get(key)
    if value is None:
        return None
    path = field_path(prefix, key)
    if not isinstance(value, str):
        raise EventValidationError(path, f"must be an ISO 8601 string, not {json_type(value)}")
    if len(value) > MAX_TIMESTAMP_CHARS:
        raise EventValidationError(path, f"is longer than {MAX_TIMESTAMP_CHARS} characters")
    try:
        return as_utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError) as exc:
        raise EventValidationError(path, f"is not an ISO 8601 timestamp: {value!r}") from exc


def merge_under(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Return ``top`` deep-merged over ``base``: nested objects merge, ``top`` wins otherwise."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key] = merge_under(below, value)
        else:
            merged[key] = value
    return merged


def _bounded(text: str, key: str, prefix: str, limit: int) -> str:
    if len(text) > limit:
        raise EventValidationError(field_path(prefix, key), f"is longer than {limit} characters")
    return text
