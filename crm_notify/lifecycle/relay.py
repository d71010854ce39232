"""The lifecycle relay: ingests emitted lifecycle events as Segment ``track`` calls.

Each pass reads the events written so far (oldest first), turns each into a ``track`` call
(``event`` its name, ``properties`` what it says with its ``source``, its random ``messageId``,
the contact's ``userId``) and hands them to the intake, so they are stored with the other
events, shown in the contact's timeline, and rules trigger on them (``trigger: {event:
contact.unsubscribed}``), and queued for the webhook subscriptions that want them
(:mod:`crm_notify.subscriptions`). The rows are deleted in the intake's own transaction: all
commit or neither, and a row that vanished meanwhile (the contact was erased) makes the pass
start again without it, so an erased person's event is never stored. A contact without a
``userId`` gets the event row without rules (an ``anonymousId`` may be shared, so no call could
name them alone). A batch the intake refuses is retried one call at a time; a call that still
fails is retried on later passes and set aside after :data:`MAX_ATTEMPTS` (logged, kept in the
table).
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
from crm_notify.subscriptions.fanout import queue_deliveries

logger = logging.getLogger(__name__)

#: Events per pass.
DEFAULT_BATCH_SIZE = 200
#: The ``source`` of the event rows the relay writes.
SOURCE = "lifecycle"
#: Failed ingestions after which an event is set aside.
MAX_ATTEMPTS = 5

#: ``ingest(calls, source, within=...)``: the intake's.
Ingest = Callable[..., Any]


class RowsGone(Exception):
    """Some lifecycle rows were deleted while the relay ingested them (an erasure)."""


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
                .where(col(LifecycleEvent.attempts) < MAX_ATTEMPTS)
                .order_by(col(LifecycleEvent.id))
                .limit(self._batch_size)
            ).all()
        if not rows:
            return 0
        try:
            self._ingest_rows(rows)
        except RowsGone:
            return len(rows)  # the next pass reads what is left
        except Exception:
            logger.warning("lifecycle batch refused; ingesting its events one at a time")
            for row in rows:
                try:
                    self._ingest_rows([row])
                except RowsGone:
                    continue
                except Exception:
                    self._failed(row[0])
        return len(rows)

    def _ingest_rows(self, rows: Sequence[tuple[LifecycleEvent, Contact]]) -> None:
        """Ingest ``rows`` and delete them, in one transaction."""
        ids = [event.id for event, _contact in rows if event.id is not None]
        named = [(event, contact) for event, contact in rows if contact.user_id]
        unnamed = [event for event, contact in rows if not contact.user_id]

        def claim(session: Session) -> None:
            gone = session.execute(
                sa.delete(LifecycleEvent)
                .where(col(LifecycleEvent.id).in_(ids))
                .returning(col(LifecycleEvent.id))
            ).all()
            if len(gone) != len(ids):
                raise RowsGone
            for event in unnamed:
                _store_only(session, event)
            queue_deliveries(session, rows)  # webhook subscriptions, in the same transaction

        if named:
            self._ingest([_call(event, contact) for event, contact in named], SOURCE, within=claim)
        else:
            with session_scope(self._engine) as session:
                claim(session)

    def _failed(self, event: LifecycleEvent) -> None:
        logger.exception("lifecycle event %s could not be ingested", event.id)
        with session_scope(self._engine) as session:
            session.execute(
                sa.update(LifecycleEvent)
                .where(col(LifecycleEvent.id) == event.id)
                .values(attempts=LifecycleEvent.attempts + 1)
            )


def _call(event: LifecycleEvent, contact: Contact) -> SegmentCall:
    body: dict[str, Any] = {
        "type": "track",
        "event": event.name,
        "properties": dict(event.properties),
        "messageId": event.message_id,
        "timestamp": event.created_at.isoformat(),
        "context": {"library": {"name": "crm-notify", "version": __version__}},
    }
    body["userId"] = contact.user_id
    return parse_call(body, type_hint=None, received_at=now())


def _store_only(session: Session, event: LifecycleEvent) -> None:
    """The event row of a lifecycle event whose contact no call could name."""
    exists = session.exec(select(Event.id).where(Event.message_id == event.message_id)).first()
    if exists is None:
        session.add(
            Event(
                message_id=event.message_id,
                type="track",
                name=event.name,
                contact_id=event.contact_id,
                source=SOURCE,
                timestamp=event.created_at,
                payload={"event": event.name, "properties": event.properties},
            )
        )
