"""The lifecycle relay: ingests emitted lifecycle events as Segment ``track`` calls.

Each pass reads the events not ingested yet (oldest first), turns each into a ``track`` call
(``event`` its name, ``properties`` what it says with its ``source``, ``messageId``
``lc_<id>``, the contact's ``userId`` or ``anonymousId``) and hands them to the intake, so they
are stored with the other events, shown in the contact's timeline, and rules trigger on them
(``trigger: {event: contact.unsubscribed}``). Then it deletes them (the event rows hold them
now). Ingesting again after a crash changes nothing: the intake recognises the ``messageId``.
A contact known by neither id gets the event row without rules (no call could name them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify import __version__
from crm_notify._periodic import Periodic
from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.events.models import Event
from crm_notify.events.schemas import SegmentCall, parse_call
from crm_notify.lifecycle.models import LifecycleEvent

logger = logging.getLogger(__name__)

#: Events per pass.
DEFAULT_BATCH_SIZE = 200
#: The ``source`` of the event rows the relay writes.
SOURCE = "lifecycle"

#: ``ingest(calls, source)``: the intake's.
Ingest = Callable[[Sequence[SegmentCall], str], Any]


class LifecycleRelay(Periodic):
    """Ingests lifecycle events (see the module docstring).

    Parameters:
        engine: the database.
        ingest: the intake's ``ingest``.
        interval_s: seconds between passes.
        batch_size: events per pass.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        ingest: Ingest,
        interval_s: float,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        super().__init__(interval_s=interval_s, name="crm-notify-lifecycle")
        self._engine = engine
        self._ingest = ingest
        self._batch_size = batch_size

    def run_once(self, *, max_batches: int = 50) -> int:
        """Ingest the lifecycle events written so far; return how many."""
        done = 0
        for _ in range(max_batches):
            count = self._run_batch()
            done += count
            if count < self._batch_size:
                break
        return done

    def _run_batch(self) -> int:
        with Session(self._engine) as session:
            rows = session.exec(
                select(LifecycleEvent, Contact)
                .join(Contact, col(Contact.id) == col(LifecycleEvent.contact_id))
                .order_by(col(LifecycleEvent.id))
                .limit(self._batch_size)
            ).all()
        if not rows:
            return 0
        calls = [
            _call(event, contact)
            for event, contact in rows
            if contact.user_id or contact.anonymous_id
        ]
        if calls:
            self._ingest(calls, SOURCE)
        ids = [event.id for event, _contact in rows if event.id is not None]
        with session_scope(self._engine) as session:
            for event, contact in rows:
                if not (contact.user_id or contact.anonymous_id):
                    _store_only(session, event)
            session.execute(sa.delete(LifecycleEvent).where(col(LifecycleEvent.id).in_(ids)))
        return len(rows)


def message_id(event: LifecycleEvent) -> str:
    """The ``messageId`` of ``event``'s call."""
    return f"lc_{event.id}"


def _call(event: LifecycleEvent, contact: Contact) -> SegmentCall:
    body: dict[str, Any] = {
        "type": "track",
        "event": event.name,
        "properties": dict(event.properties),
        "messageId": message_id(event),
        "timestamp": event.created_at.isoformat(),
        "context": {"library": {"name": "crm-notify", "version": __version__}},
    }
    if contact.user_id:
        body["userId"] = contact.user_id
    else:
        body["anonymousId"] = contact.anonymous_id
    return parse_call(body, type_hint=None, received_at=now())


def _store_only(session: Session, event: LifecycleEvent) -> None:
    """The event row of a lifecycle event whose contact no call could name."""
    exists = session.exec(select(Event.id).where(Event.message_id == message_id(event))).first()
    if exists is None:
        session.add(
            Event(
                message_id=message_id(event),
                type="track",
                name=event.name,
                contact_id=event.contact_id,
                source=SOURCE,
                timestamp=event.created_at,
                payload={"event": event.name, "properties": event.properties},
            )
        )
