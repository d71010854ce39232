"""The body a subscriber receives: built once per event and subscription, sent as is.

JSON (the default)::

    {"type": "contact.unsubscribed", "timestamp": "2026-12-06T10:00:00.123456Z",
     "data": {"event_id": "lc_...", "source": "contact", "purpose": "marketing",
              "contact": {"id": 7, "user_id": "u-42", "email": "ada@example.com"}}}

``data`` holds the event's own fields (see ``docs/webhooks.md``), its ``source``, its
``event_id`` (the ``messageId`` it is stored under) and the contact. Form bodies
(``application/x-www-form-urlencoded``, as Mailchimp's audience webhooks send) flatten the same
data with brackets: ``type=contact.unsubscribed&data[contact][email]=ada%40example.com``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

#: The event a ping sends.
PING_EVENT = "webhook.ping"
#: The ``Content-Type`` of each body encoding.
CONTENT_TYPES = {"json": "application/json", "form": "application/x-www-form-urlencoded"}


def event_payload(
    name: str,
    *,
    event_id: str,
    occurred_at: datetime,
    contact: Mapping[str, Any],
    properties: Mapping[str, Any],
) -> dict[str, Any]:
    """The payload of lifecycle event ``name`` (see the module docstring)."""
    data = {"event_id": event_id, **properties, "contact": dict(contact)}
    return {"type": name, "timestamp": _utc(occurred_at), "data": data}


def ping_payload(subscription: str, *, at: datetime) -> dict[str, Any]:
    """The payload of a test ping to ``subscription``."""
    return {"type": PING_EVENT, "timestamp": _utc(at), "data": {"subscription": subscription}}


def encode(payload: Mapping[str, Any], content_type: str) -> str:
    """``payload`` as the body text of ``content_type`` (``json`` or ``form``)."""
    if content_type == "form":
        return urlencode(list(_flatten(payload, "")))
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}[{key}]" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{index}]")
    elif isinstance(value, bool):
        yield prefix, "true" if value else "false"
    else:
        yield prefix, "" if value is None else str(value)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
