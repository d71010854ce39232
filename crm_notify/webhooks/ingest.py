"""Storing tracking events and applying their effects, in the caller's transaction.

Each event is stored once (a replay is recognised by its ``event_key`` and has no effect),
linked to our notification by the id we sent along or by the provider's message id, and
added to the notification's status history. Effects:

- a hard bounce or a complaint suppresses the address for every purpose (an address already
  suppressed for every purpose keeps its entry: an erased person's stays hash-only);
- an unsubscribe from one of our notifications records a consent withdrawal for its purpose
  (every non-transactional purpose when it was transactional mail); one that matches none of
  our notifications (mail of another tool on the same ESP account) is only stored;
- every other type is only recorded (and counted in the KPIs). Unknown types are stored too.

Events about an erased person (their address is suppressed as ``erased``) are stored without
the provider's payload, which holds the address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from crm_notify.guards.suppression import (
    address_hash_or_none,
    preload_suppressions,
)
from crm_notify.outbox.models import Notification
from crm_notify.webhooks.effects import add_history, apply_effects, is_erased
from crm_notify.webhooks.events import EventType, TrackingEvent
from crm_notify.webhooks.models import TrackingEventRecord

logger = logging.getLogger(__name__)

#: Longest ``description`` kept.
DESCRIPTION_CHARS = 1000
#: Longest provider message id and event key (the columns' lengths).
ID_CHARS = 255
#: Values per ``IN (...)`` list when looking rows up for a batch.
LOOKUP_CHUNK = 500


@dataclass
class IngestSummary:
    """What one webhook call did: events received, stored, recognised as replays, and stored
    without a matching notification."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    unmatched: int = 0

    def as_json(self) -> dict[str, int]:
        """The summary as the webhook answers it."""
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "unmatched": self.unmatched,
        }


def record_tracking_events(
    *,
    session: Session,
    provider: str,
    events: Sequence[TrackingEvent],
    purposes: Sequence[str] = ("marketing",),
) -> IngestSummary:
    """Store ``events`` of ``provider`` and apply their effects (see the module docstring).

    Parameters:
        purposes: the configured purposes (an unsubscribe from transactional mail withdraws
            every one of them but transactional).
    """
    summary = IngestSummary(received=len(events))
    keyed = [(f"{provider}:{_clean(event.event_id)}"[:ID_CHARS], event) for event in events]
    known = _existing_keys(session, [key for key, _ in keyed])
    hashes: dict[str, str | None] = {}

    def hash_of(address: str | None) -> str | None:  # each address validated once per call
        if not address:
            return None
        if address not in hashes:
            hashes[address] = address_hash_or_none(address)
        return hashes[address]

    notifications = _Notifications(session, events, hash_of)
    fresh: list[tuple[str, TrackingEvent, Notification | None, str | None]] = []
    for key, event in keyed:
        if key in known:
            summary.duplicates += 1
            continue
        known.add(key)
        notification = notifications.for_event(event)
        fresh.append(
            (
                key,
                event,
                notification,
                event.recipient or (notification.to_address if notification else None),
            )
        )
    preload_suppressions(session, [address for *_, address in fresh if address])
    new = [(*item, is_erased(session, item[3])) for item in fresh]
    stored = new
    try:
        with session.begin_nested():  # the whole batch: one flush, its INSERTs batched
            session.add_all([_record(provider, *item, hash_of) for item in new])
    except (IntegrityError, DataError):  # a concurrent replay, or a refused value: one by one
        stored = []
        for item in new:
            record = _record(provider, *item, hash_of)
            try:
                with session.begin_nested():  # a concurrent replay of the same event loses here
                    session.add(record)
            except IntegrityError:
                summary.duplicates += 1
                continue
            except DataError:  # a value the database refuses: kept as an unknown event instead
                logger.warning("%s webhook: event %s not stored as received", provider, item[0])
                with session.begin_nested():
                    session.add(_bare(record))
            stored.append(item)
    for _key, event, notification, address, erased in stored:
        summary.stored += 1
        if notification is None:
            summary.unmatched += 1
        else:
            add_history(session, notification, event, erased=erased)
        apply_effects(session, provider, event, notification, address, purposes)
    return summary


def _record(
    provider: str,
    key: str,
    event: TrackingEvent,
    notification: Notification | None,
    address: str | None,
    erased: bool,
    hash_of: Callable[[str | None], str | None],
) -> TrackingEventRecord:
    return TrackingEventRecord(
        event_key=key,
        esp=provider,
        event_type=event.event_type.value,
        provider_event_type=_clean(event.provider_event_type)[:64],
        provider_message_id=_clean(event.provider_message_id or "")[:ID_CHARS] or None,
        notification_id=notification.id if notification else None,
        recipient_hash=hash_of(address),
        bounce_kind=event.bounce_kind.value if event.bounce_kind else None,
        url=None if erased else _clean(event.url or "") or None,
        description=None if erased else _clean(event.description or "")[:DESCRIPTION_CHARS] or None,
        occurred_at=event.occurred_at,
        payload={} if erased else _clean(event.payload),
    )


def _clean(value: Any) -> Any:
    """``value`` without NUL characters (PostgreSQL refuses them in text and JSON)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def _bare(record: TrackingEventRecord) -> TrackingEventRecord:
    """``record`` reduced to what cannot be refused: key, type and links."""
    return TrackingEventRecord(
        event_key=record.event_key,
        esp=record.esp,
        event_type=EventType.UNKNOWN.value,
        provider_event_type=record.provider_event_type,
        notification_id=record.notification_id,
        recipient_hash=record.recipient_hash,
        payload={"error": "the event could not be stored as received"},
    )


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), LOOKUP_CHUNK):
        yield values[start : start + LOOKUP_CHUNK]


def _existing_keys(session: Session, keys: Sequence[str]) -> set[str]:
    found: set[str] = set()
    unique = sorted(set(keys))
    for chunk in _chunks(unique):
        found.update(
            session.exec(
                select(TrackingEventRecord.event_key).where(
                    col(TrackingEventRecord.event_key).in_(chunk)
                )
            ).all()
        )
    return found


class _Notifications:
    """Our notifications a batch of events may be about, looked up in a few queries."""

    def __init__(
        self,
        session: Session,
        events: Sequence[TrackingEvent],
        hash_of: Callable[[str | None], str | None],
    ) -> None:
        self.hash_of = hash_of
        # Rows are loaded for their id, address, contact and purpose, not their message.
        lean = [defer(getattr(Notification, name)) for name in ("message", "context")]
        ids = sorted({e.notification_id for e in events if e.notification_id is not None})
        message_ids = sorted({e.provider_message_id for e in events if e.provider_message_id})
        self.by_id: dict[int, Notification] = {}
        self.by_message_id: dict[str, list[Notification]] = {}
        for chunk in _chunks(ids):
            query = select(Notification).options(*lean).where(col(Notification.id).in_(chunk))
            for row in session.exec(query):
                assert row.id is not None
                self.by_id[row.id] = row
        for chunk in _chunks(message_ids):
            rows = session.exec(
                select(Notification)
                .options(*lean)
                .where(col(Notification.esp_message_id).in_(chunk))
                .order_by(col(Notification.id))
            )
            for row in rows:
                assert row.esp_message_id is not None
                self.by_message_id.setdefault(row.esp_message_id, []).append(row)

    def for_event(self, event: TrackingEvent) -> Notification | None:
        """The notification ``event`` is about: by the id we sent along (when the recipient
        agrees), else by the provider's message id."""
        if event.notification_id is not None:
            row = self.by_id.get(event.notification_id)
            if row is not None and self._same_recipient(row, event):
                return row
        for row in self.by_message_id.get(event.provider_message_id or "", []):
            if self._same_recipient(row, event):
                return row
        return None

    def _same_recipient(self, row: Notification, event: TrackingEvent) -> bool:
        if not event.recipient:
            return True
        return self.hash_of(event.recipient) == self.hash_of(row.to_address)
