"""Intake: apply Segment calls — store them once, update contact/order/cart state, decide sends.

One call of :meth:`Intake.ingest` is one transaction: every call of a batch is validated first,
then events, state, decisions and outbox rows are written together, or nothing is. Only after
the commit are the new notification ids handed to the broker (the transactional outbox); a
crash in between leaves them ``pending`` for the relay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.commerce.models import Cart, Order
from crm_notify.commerce.state import (
    apply_cart_event,
    apply_order_event,
    cart_data,
    order_data,
)
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import contact_data, find_contact, upsert_contact
from crm_notify.db import session_scope
from crm_notify.errors import ConditionError, EventValidationError
from crm_notify.events.emails import normalise_email
from crm_notify.events.models import Event
from crm_notify.events.schemas import SegmentCall
from crm_notify.guards.policy import SendPolicy
from crm_notify.outbox import repository
from crm_notify.outbox.models import DecisionOutcome, Notification
from crm_notify.render.mime import FORBIDDEN_IN_HEADERS
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.model import Rule

logger = logging.getLogger(__name__)

#: Traits that end up in mail headers (the To display name): line breaks there are rejected.
NAME_TRAITS = ("name", "first_name", "last_name", "firstName", "lastName")

#: Transactions tried per request when a concurrent request wrote the same rows first.
INGEST_ATTEMPTS = 3

#: How far in the future an event's timestamp may be when ordering state; later stamps are
#: taken as this, so one event from a wrong clock cannot freeze an order.
MAX_CLOCK_SKEW = timedelta(minutes=5)


@dataclass
class IngestResult:
    """What one :meth:`Intake.ingest` call did."""

    accepted: int = 0
    duplicates: int = 0
    notification_ids: list[int] = field(default_factory=list)


def event_data(call: SegmentCall) -> dict[str, Any]:
    """The call as plain data for conditions and templates."""
    return {
        "type": call.type,
        "event": call.event,
        "name": call.name,
        "message_id": call.message_id,
        "user_id": call.user_id,
        "anonymous_id": call.anonymous_id,
        "properties": dict(call.properties),
        "traits": dict(call.traits),
        "context": dict(call.context),
        "timestamp": call.timestamp.isoformat(),
    }


@dataclass
class _Matched:
    rule: Rule
    order: Order | None
    cart: Cart | None


class Intake:
    """Applies Segment calls to the database and decides which notifications to send.

    Parameters:
        engine: the database.
        rules: the loaded rules.
        policy: the guards every matched rule passes before a send is written.
        enqueue: called with the ids of new notifications after their transaction commits.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        rules: RuleSet,
        policy: SendPolicy | None = None,
        enqueue: Callable[[Sequence[int]], None] | None = None,
    ) -> None:
        self._engine = engine
        self.rules = rules
        self._policy = policy or SendPolicy()
        self._enqueue = enqueue

    def ingest(self, calls: Sequence[SegmentCall], source: str = "api") -> IngestResult:
        """Apply ``calls`` in one transaction and enqueue the notifications they produced.

        Raises:
            EventValidationError: a call is invalid (nothing is written).
        """
        emails = self._validate(calls)
        received = now()
        for attempt in range(1, INGEST_ATTEMPTS + 1):
            try:
                with session_scope(self._engine) as session:
                    result = self._apply(session, calls, emails, source, received)
                break
            except IntegrityError:
                # A concurrent request inserted the same messageId, contact or order first;
                # the retry sees its rows (duplicates are then skipped, rows updated).
                if attempt == INGEST_ATTEMPTS:
                    raise
        if result.notification_ids and self._enqueue is not None:
            try:
                self._enqueue(result.notification_ids)
            except Exception:  # the relay re-enqueues pending rows; the events are stored
                logger.exception(
                    "enqueue failed; %d notifications left for the relay",
                    len(result.notification_ids),
                )
        return result

    def _validate(self, calls: Sequence[SegmentCall]) -> dict[int, str | None]:
        emails: dict[int, str | None] = {}
        for index, call in enumerate(calls):
            if call.type != "identify":
                continue
            prefix = f"batch[{index}]." if len(calls) > 1 else ""
            for trait in NAME_TRAITS:
                value = call.traits.get(trait)
                if isinstance(value, str) and not FORBIDDEN_IN_HEADERS.isdisjoint(value):
                    raise EventValidationError(
                        f"{prefix}traits.{trait}", "must not contain line breaks or NUL"
                    )
            if "email" not in call.traits:
                continue
            value = call.traits["email"]
            if value is None or value == "":
                emails[index] = None
                continue
            if not isinstance(value, str):
                raise EventValidationError(f"{prefix}traits.email", "must be a string")
            try:
                emails[index] = normalise_email(value)
            except EventValidationError as exc:
                raise EventValidationError(f"{prefix}traits.email", exc.message) from exc
        return emails

    def _apply(
        self,
        session: Session,
        calls: Sequence[SegmentCall],
        emails: dict[int, str | None],
        source: str,
        received: datetime,
    ) -> IngestResult:
        result = IngestResult()
        seen = set(
            session.exec(
                select(Event.message_id).where(
                    col(Event.message_id).in_([c.message_id for c in calls])
                )
            ).all()
        )
        for index, call in enumerate(calls):
            if call.message_id in seen:
                result.duplicates += 1
                continue
            seen.add(call.message_id)
            result.accepted += 1
            try:
                self._apply_one(session, call, emails.get(index), source, received, result)
            except EventValidationError as exc:
                if len(calls) == 1:
                    raise
                raise EventValidationError(f"batch[{index}].{exc.field}", exc.message) from exc
        return result

    def _apply_one(
        self,
        session: Session,
        call: SegmentCall,
        email: str | None,
        source: str,
        received: datetime,
        result: IngestResult,
    ) -> None:
        created = False
        contact: Contact | None
        if call.type == "identify":
            contact, created = upsert_contact(
                session=session,
                user_id=call.user_id,
                anonymous_id=call.anonymous_id,
                traits={k: v for k, v in call.traits.items() if k != "email"},
                email=email,
                context=call.context,
            )
        else:
            contact = find_contact(
                session=session, user_id=call.user_id, anonymous_id=call.anonymous_id
            )
        event = Event(
            message_id=call.message_id,
            type=call.type,
            name=call.event or call.name,
            user_id=call.user_id,
            anonymous_id=call.anonymous_id,
            contact_id=contact.id if contact else None,
            source=source,
            timestamp=call.timestamp,
            payload=call.raw,
        )
        session.add(event)
        state_time = min(call.timestamp, received + MAX_CLOCK_SKEW)
        matched = self._match(session, call, contact, created, state_time)
        if not matched:
            return
        session.flush()
        for match in matched:
            self._decide(session, call, event, contact, match, result)

    def _match(
        self,
        session: Session,
        call: SegmentCall,
        contact: Contact | None,
        created: bool,
        state_time: datetime,
    ) -> list[_Matched]:
        contact_id = contact.id if contact else None
        if call.type == "identify":
            return [_Matched(r, None, None) for r in self.rules.for_identify(created)]
        if call.type != "track" or not call.event:
            return []
        order_change = apply_order_event(
            session=session,
            event_name=call.event,
            properties=call.properties,
            timestamp=state_time,
            contact_id=contact_id,
        )
        cart = apply_cart_event(
            session=session,
            event_name=call.event,
            properties=call.properties,
            timestamp=state_time,
            contact_id=contact_id,
        )
        order = order_change.order if order_change else None
        matched = [_Matched(r, order, cart) for r in self.rules.for_event(call.event)]
        if order_change is not None and order_change.status_changed:
            assert order_change.new_status is not None
            matched += [
                _Matched(r, order, cart)
                for r in self.rules.for_order_status(
                    order_change.old_status, order_change.new_status
                )
            ]
        return matched

    def _decide(
        self,
        session: Session,
        call: SegmentCall,
        event: Event,
        contact: Contact | None,
        match: _Matched,
        result: IngestResult,
    ) -> None:
        rule = match.rule
        contact_id = contact.id if contact else None

        def skip(reason: str) -> None:
            repository.record_decision(
                session=session,
                rule=rule.name,
                outcome=DecisionOutcome.SKIP,
                reason=reason,
                event_id=event.id,
                contact_id=contact_id,
            )

        context: dict[str, Any] = {
            "event": event_data(call),
            "contact": contact_data(contact) if contact else None,
            "order": order_data(match.order),
            "cart": cart_data(match.cart),
        }
        for condition in rule.conditions:
            try:
                holds = condition.evaluate(context)
            except ConditionError as exc:
                skip(f"condition failed: {condition.source}: {exc}")
                return
            if not holds:
                skip(f"condition not met: {condition.source}")
                return
        if contact is None or not contact.email:
            skip("no email address known for this contact")
            return
        verdict = self._policy.check(rule=rule, contact=contact)
        if verdict is not None:
            skip(verdict)
            return
        notification = Notification(
            idempotency_key=f"{rule.name}:{call.message_id}",
            rule=rule.name,
            template=rule.template,
            purpose=str(rule.purpose),
            channel=rule.channel,
            contact_id=contact.id,
            event_id=event.id,
            to_address=contact.email,
            language=contact.language,
            context=context,
        )
        if repository.create_notification(
            session=session, notification=notification, reason="rule matched"
        ):
            assert notification.id is not None
            result.notification_ids.append(notification.id)
