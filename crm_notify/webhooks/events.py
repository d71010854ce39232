"""The one vocabulary every provider's tracking events are mapped onto."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class EventType(enum.StrEnum):
    """What happened to a message, whoever reported it."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    REJECTED = "rejected"
    OPENED = "opened"
    CLICKED = "clicked"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    UNKNOWN = "unknown"


class BounceKind(enum.StrEnum):
    """A hard bounce will never be delivered (the address is suppressed); a soft one may."""

    HARD = "hard"
    SOFT = "soft"


@dataclass(frozen=True, kw_only=True)
class TrackingEvent:
    """One event of one recipient, as a provider reported it.

    Parameters:
        event_type: the normalised type (``UNKNOWN`` for types we do not map; kept all the same).
        provider_event_type: the provider's own name for it, e.g. ``"hard_bounce"``.
        provider_message_id: the id the provider gave the message, in the form its adapter
            stores in ``Notification.esp_message_id``; ``None`` when the event carries none.
        notification_id: our id when the provider echoes our metadata back, else ``None``.
        recipient: the address the event is about (for suppression; never logged).
        occurred_at: when the provider says it happened (timezone-aware), if it says.
        event_id: the provider's id of the event, or a hash of its payload: replays of the
            same event have the same one.
        bounce_kind: for ``BOUNCED`` (and ``REJECTED`` where known).
        url: the link of a ``CLICKED`` event.
        description: the provider's words (bounce reason, SMTP reply), shortened.
        payload: the provider's event as received.
    """

    event_type: EventType
    provider_event_type: str
    provider_message_id: str | None = None
    notification_id: int | None = None
    recipient: str | None = None
    occurred_at: datetime | None = None
    event_id: str
    bounce_kind: BounceKind | None = None
    url: str | None = None
    description: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


#: ``provider_event_type`` of a batch item that is not an event object.
MALFORMED = "malformed"


def malformed_event(item: Any) -> TrackingEvent:
    """An ``unknown`` event for a batch item that is not an event object: kept, so one bad
    item neither loses the rest of its batch nor disappears itself."""
    return TrackingEvent(
        event_type=EventType.UNKNOWN,
        provider_event_type=MALFORMED,
        event_id=payload_digest(item),
        payload=item if isinstance(item, dict) else {"item": item},
    )


def payload_digest(payload: Any) -> str:
    """A stable id for an event without a provider id: SHA-256 of its canonical JSON."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def text_or_none(value: Any) -> str | None:
    """``value`` as text, ``None`` when it is missing or empty."""
    return str(value) if value not in (None, "") else None


def unix_time(value: Any, *, numbers_only: bool = False) -> datetime | None:
    """An aware UTC datetime from Unix seconds (a number, or digits unless ``numbers_only``);
    ``None`` for anything else."""
    if isinstance(value, bool) or (numbers_only and not isinstance(value, int | float)):
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def parse_notification_id(value: Any) -> int | None:
    """Our notification id from echoed metadata (``"42"`` or ``42``), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
        return number if 0 < number < 2**63 else None
    return None
