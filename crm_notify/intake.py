"""Intake: apply Segment calls — store them once, update contact/order/cart state, decide sends.

One call of :meth:`Intake.ingest` is one transaction: every call of a batch is validated first,
then events, state, decisions and outbox rows are written together, or nothing is. Only after
the commit are the new notification ids handed to the broker (the transactional outbox); a
crash in between leaves them ``pending`` for the relay.

Within the transaction, the contacts, orders and carts a batch names are loaded with one query
each; the calls are then applied in order, each decision taken on the state as of its call;
events, decisions and notifications are inserted together at the end (a few multi-row
statements instead of several round trips per call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from crm_notify._outages import outage
from crm_notify.actions.rows import firing_rows, send_reason
from crm_notify.clock import now
from crm_notify.commerce.models import Cart, Order
from crm_notify.commerce.state import (
    apply_cart_event,
    apply_order_event,
    cart_data,
    cart_key,
    forget_state,
    order_data,
    order_key,
    preload_state,
)
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import (
    contact_data,
    find_contact,
    forget_contacts,
    preload_contacts,
    upsert_contact,
)
from crm_notify.db import insert_rows, new_row, session_scope
from crm_notify.decisions import (
    attempt_for,
    defer_send,
    failing_condition,
    missing_recipient,
    order_window_refusal,
    rule_unique_key,
    unique_key_refusal,
)
from crm_notify.errors import EventValidationError
from crm_notify.events.emails import normalise_email
from crm_notify.events.models import Event
from crm_notify.events.schemas import SegmentCall
from crm_notify.gates.hold import GateHold
from crm_notify.gates.withdraw import withdraw_held
from crm_notify.guards import PlannedSend, SendPolicy, Verdict
from crm_notify.guards.consent import (
    DEFAULT_CATEGORIES,
    DEFAULT_TRAITS,
    consent_from_call,
    preload_consent,
    record_changes,
)
from crm_notify.guards.models import ConsentRecord
from crm_notify.guards.suppression import preload_suppressions
from crm_notify.outbox import repository
from crm_notify.outbox.models import DecisionOutcome, Notification
from crm_notify.render.mime import FORBIDDEN_IN_HEADERS
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.model import Rule
from crm_notify.rules.triggers import IdleTrigger, OrderStatusTrigger
from crm_notify.timers import repository as timer_repository
from crm_notify.timers.firing import idle_key_base, schedule_step, step_due_at
from crm_notify.timers.models import Timer

logger = logging.getLogger(__name__)

#: Traits that end up in mail headers (the To display name): line breaks there are rejected.
NAME_TRAITS = ("name", "first_name", "last_name", "firstName", "lastName")

#: Transactions tried per request when a concurrent request wrote the same rows first.
INGEST_ATTEMPTS = 3

#: How far in the future an event's timestamp may be when ordering state; later stamps are
#: taken as this, so one event from a wrong clock cannot freeze an order.
MAX_CLOCK_SKEW = timedelta(minutes=5)


#: PostgreSQL errors a retry of the whole transaction resolves: deadlock, serialisation.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def _retryable(exc: IntegrityError | OperationalError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    return getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


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


def _cart_id(call: SegmentCall) -> str | None:
    """The cart a call names (``properties.cart_id``), as a string."""
    value = call.properties.get("cart_id")
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)[:255]
    return None


def _order_dedupe_key(rule: Rule, order: Order | None) -> str | None:
    """``order:<id>:<status>`` for order-status rules: one send per order and status."""
    if isinstance(rule.trigger, OrderStatusTrigger) and order is not None:
        return f"order:{order.order_id}:{order.status}"
    return None


@dataclass
class _Batch:
    """What one transaction accumulates while its calls are applied in order."""

    events: list[dict[str, Any]] = field(default_factory=list)
    #: Timers of delayed rules and deferred sends, with the messageId of their event: inserted
    #: once the event has an id.
    timers: list[tuple[Timer, str]] = field(default_factory=list)
    #: Dedupe keys of sends decided earlier in this batch, per rule.
    dedupe_keys: set[tuple[str, str]] = field(default_factory=set)
    #: The rules' own dedupe keys of sends decided earlier in this batch: (rule, contact, key).
    unique_keys: set[tuple[str, int, str]] = field(default_factory=set)
    #: Sends decided earlier in this batch, for the rate limits.
    planned: list[PlannedSend] = field(default_factory=list)
    #: Consent records written from this batch's calls, with their call's messageId.
    consent: list[tuple[ConsentRecord, str]] = field(default_factory=list)


@dataclass
class _Matched:
    rule: Rule
    order: Order | None
    cart: Cart | None


#: The reason recorded with a ``send`` decision.
SEND_REASON = "rule matched"


@dataclass
class _Verdict:
    """A decision taken on the state as of its call, written once the events have ids.

    ``notification`` is set for a send (``reason`` is then :data:`SEND_REASON`, with the
    action named when it is a webhook action's row), and ``actions`` holds the rows of the
    rule's other webhook actions; otherwise ``reason`` says why the rule was skipped.
    """

    rule: str
    event: dict[str, Any]
    contact_id: int | None
    reason: str
    notification: dict[str, Any] | None = None
    outcome: DecisionOutcome | None = None
    details: dict[str, Any] | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)


class Intake:
    """Applies Segment calls to the database and decides which notifications to send.

    Parameters:
        engine: the database.
        rules: the loaded rules.
        policy: the guards every matched rule passes before a send is written (default: the
            standard policy with its default options).
        enqueue: called with the ids of new notifications after their transaction commits.
        consent_categories: Segment consent category -> purpose (matched in any case).
        consent_traits: identify trait -> purpose it grants or withdraws.
        hold: puts the sends of gated rules on hold before the transaction commits.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        rules: RuleSet,
        policy: SendPolicy | None = None,
        enqueue: Callable[[Sequence[int]], None] | None = None,
        consent_categories: Mapping[str, str] | None = None,
        consent_traits: Mapping[str, str] | None = None,
        hold: GateHold | None = None,
    ) -> None:
        self._engine = engine
        self._hold = hold
        self.rules = rules
        self._policy = policy or SendPolicy.standard()
        self._enqueue = enqueue
        self._consent_categories = (
            DEFAULT_CATEGORIES if consent_categories is None else consent_categories
        )
        self._consent_traits = DEFAULT_TRAITS if consent_traits is None else consent_traits

    def ingest(
        self,
        calls: Sequence[SegmentCall],
        source: str = "api",
        *,
        within: Callable[[Session], None] | None = None,
    ) -> IngestResult:
        """Apply ``calls`` in one transaction and enqueue the notifications they produced.

        Parameters:
            within: run in that transaction, first (the lifecycle relay claims the rows the
                calls come from: both commit, or neither); what it raises rolls back.

        Raises:
            EventValidationError: a call is invalid (nothing is written).
        """
        emails = self._validate(calls)
        received = now()
        for attempt in range(1, INGEST_ATTEMPTS + 1):
            try:
                with session_scope(self._engine) as session:
                    if within is not None:
                        within(session)
                    result = self._apply(session, calls, emails, source, received)
                    if self._hold is not None:
                        held = self._hold.hold(session, result.notification_ids, batch=False)
                        result.notification_ids = held.released
                break
            except (IntegrityError, OperationalError) as exc:
                # A concurrent request inserted the same messageId, contact or order first, or
                # PostgreSQL broke a lock cycle (two batches locking the same contacts for
                # their rate limits): the retry sees the other's rows.
                if attempt == INGEST_ATTEMPTS or not _retryable(exc):
                    raise
        if self._hold is not None:
            self._hold.after_commit(held)
        if result.notification_ids and self._enqueue is not None:
            try:
                self._enqueue(result.notification_ids)
            except Exception as exc:  # the relay re-enqueues pending rows; the events are stored
                down = outage(exc)
                log = logger.warning if down else logger.exception
                log(
                    "enqueue failed%s; %d notifications left for the relay",
                    f" ({down})" if down else "",
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
        fresh: list[int] = []
        for index, call in enumerate(calls):
            if call.message_id in seen:
                result.duplicates += 1
                continue
            seen.add(call.message_id)
            fresh.append(index)
        self._preload(session, [calls[index] for index in fresh], emails)
        try:
            batch = _Batch()
            verdicts: list[_Verdict] = []
            for index in fresh:
                result.accepted += 1
                try:
                    verdicts += self._apply_one(
                        session, calls[index], emails.get(index), source, received, batch
                    )
                except EventValidationError as exc:
                    if len(calls) == 1:
                        raise
                    raise EventValidationError(f"batch[{index}].{exc.field}", exc.message) from exc
            self._write(session, batch, verdicts, result)
        finally:
            forget_contacts(session)
            forget_state(session)
        return result

    @staticmethod
    def _preload(
        session: Session, calls: Sequence[SegmentCall], emails: dict[int, str | None]
    ) -> None:
        """Load the contacts, orders and carts ``calls`` name, one query per table, and what the
        guards will ask about those contacts (suppression entries, current consent)."""
        contacts = preload_contacts(
            session,
            user_ids=[c.user_id for c in calls if c.user_id],
            anonymous_ids=[c.anonymous_id for c in calls if c.anonymous_id],
            emails=[e for e in emails.values() if e],
        )
        preload_suppressions(
            session, [*(c.email for c in contacts if c.email), *(e for e in emails.values() if e)]
        )
        preload_consent(session, [c.id for c in contacts if c.id is not None])
        tracks = [(c.event, c.properties) for c in calls if c.type == "track" and c.event]
        preload_state(
            session,
            order_ids=[key for e, p in tracks if (key := order_key(e, p)) is not None],
            cart_ids=[key for e, p in tracks if (key := cart_key(e, p)) is not None],
        )

    def _apply_one(
        self,
        session: Session,
        call: SegmentCall,
        email: str | None,
        source: str,
        received: datetime,
        batch: _Batch,
    ) -> list[_Verdict]:
        """Apply one call; add its event row to the batch; return the decisions it led to."""
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
        event = new_row(
            Event,
            {
                "message_id": call.message_id,
                "type": call.type,
                "name": call.event or call.name,
                "user_id": call.user_id,
                "anonymous_id": call.anonymous_id,
                "contact_id": contact.id if contact else None,
                "source": source,
                "timestamp": call.timestamp,
                "payload": call.raw,
            },
        )
        batch.events.append(event)
        if contact is not None:
            self._record_consent(session, call, contact, batch)
        state_time = min(call.timestamp, received + MAX_CLOCK_SKEW)
        matched = self._match(session, call, contact, created, state_time, batch, event)
        return [self._decide(session, call, event, contact, match, batch) for match in matched]

    def _record_consent(
        self, session: Session, call: SegmentCall, contact: Contact, batch: _Batch
    ) -> None:
        """Record the grants and withdrawals the call carries (its consent preferences, or
        consent traits), when they change the contact's current consent."""
        changes = consent_from_call(
            call, categories=self._consent_categories, traits=self._consent_traits
        )
        if not changes:
            return
        if contact.id is None:
            session.flush()
        assert contact.id is not None
        for record in record_changes(session=session, contact_id=contact.id, changes=changes):
            batch.consent.append((record, call.message_id))

    def _match(
        self,
        session: Session,
        call: SegmentCall,
        contact: Contact | None,
        created: bool,
        state_time: datetime,
        batch: _Batch,
        event: dict[str, Any],
    ) -> list[_Matched]:
        contact_id = contact.id if contact else None
        if call.type == "identify":
            return [_Matched(r, None, None) for r in self.rules.for_identify(created)]
        if call.type != "track" or not call.event:
            return []
        self._cancel(session, call, contact_id, batch)
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
            counts_as_activity=bool(self.rules.for_idle(call.event)),
        )
        if cart is not None and cart.last_activity_at == state_time:
            self._restart_idle(session, call.event, cart, contact_id, event)
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

    def _cancel(
        self, session: Session, call: SegmentCall, contact_id: int | None, batch: _Batch
    ) -> None:
        """Cancel pending steps of rules whose ``cancel_on`` names this event, and their sends
        that a send gate holds: of the cart the event names, or else of the contact."""
        assert call.event is not None
        rules = [rule.name for rule in self.rules.cancelled_by(call.event)]
        if not rules:
            return
        reason = f"cancelled by {call.event} ({call.message_id})"
        cart_id = _cart_id(call)

        def cancel_steps() -> None:
            # The event names its cart: that cart's steps stop, and the contact's steps that
            # name no cart.
            if cart_id is not None:
                timer_repository.cancel_pending(
                    session=session,
                    rules=rules,
                    reason=reason,
                    entity_type="cart",
                    entity_id=cart_id,
                )
            if contact_id is not None:
                timer_repository.cancel_pending(
                    session=session,
                    rules=rules,
                    reason=reason,
                    contact_id=contact_id,
                    only_without_entity=cart_id is not None,
                )

        cancel_steps()
        # So do the sends of those steps that a send gate still holds...
        if cart_id is not None:
            withdraw_held(session, rules=rules, reason=reason, cart_id=cart_id)
        if contact_id is not None:
            withdraw_held(
                session,
                rules=rules,
                reason=reason,
                contact_id=contact_id,
                only_without_entity=cart_id is not None,
            )
        # ...and a retry that a rejection, committed in between, may have scheduled.
        cancel_steps()

        def cancelled(timer: Timer) -> bool:
            if timer.rule not in rules:
                return False
            if cart_id is not None and timer.entity_id == cart_id:
                return True
            same_contact = contact_id is not None and timer.contact_id == contact_id
            return same_contact and (cart_id is None or timer.entity_id is None)

        batch.timers = [(t, m) for t, m in batch.timers if not cancelled(t)]

    def _restart_idle(
        self,
        session: Session,
        event_name: str,
        cart: Cart,
        contact_id: int | None,
        event: dict[str, Any],
    ) -> None:
        """New cart activity: supersede the idle timers of this cart and start new ones."""
        for rule in self.rules.for_idle(event_name):
            assert isinstance(rule.trigger, IdleTrigger)
            key_base = idle_key_base(rule, cart.cart_id, cart.last_activity_at)
            timer_repository.cancel_pending(
                session=session,
                rules=[rule.name],
                reason="newer cart activity",
                entity_type="cart",
                entity_id=cart.cart_id,
                keep_key=f"{key_base}:0",
            )
            schedule_step(
                session,
                rule=rule,
                step_index=0,
                key_base=key_base,
                trigger_at=cart.last_activity_at + rule.trigger.after,
                contact_id=contact_id or cart.contact_id,
                event_id=None,
                entity_type="cart",
                entity_id=cart.cart_id,
            )

    def _decide(
        self,
        session: Session,
        call: SegmentCall,
        event: dict[str, Any],
        contact: Contact | None,
        match: _Matched,
        batch: _Batch,
    ) -> _Verdict:
        rule = match.rule
        contact_id = contact.id if contact else None

        def skip(reason: str) -> _Verdict:
            return _Verdict(rule.name, event, contact_id, reason)

        context: dict[str, Any] = {
            "event": event_data(call),
            "contact": contact_data(contact) if contact else None,
            "order": order_data(match.order),
            "cart": cart_data(match.cart),
        }
        failed = failing_condition(rule.conditions, context)
        if failed is not None:
            return skip(failed)
        if rule.is_timed:
            # Guards are checked when the step is due: consent may change meanwhile.
            trigger_at = min(call.timestamp, now() + MAX_CLOCK_SKEW)
            cart_id = _cart_id(call)
            timer = Timer(
                key=f"{rule.name}:{call.message_id}:0",
                rule=rule.name,
                step=0,
                contact_id=contact_id,
                entity_type="cart" if cart_id is not None else None,
                entity_id=cart_id,
                dedupe_key=_order_dedupe_key(rule, match.order),
                trigger_at=trigger_at,
                due_at=step_due_at(rule, 0, trigger_at),
            )
            batch.timers.append((timer, call.message_id))
            return _Verdict(
                rule.name,
                event,
                contact_id,
                f"scheduled {rule.steps[0].name} for {timer.due_at:%Y-%m-%d %H:%M} UTC",
                outcome=DecisionOutcome.DEFER,
            )
        missing = missing_recipient(rule, contact)
        if missing is not None or contact is None or contact.id is None:
            return skip(missing or "no contact known for this call")
        dedupe_key = _order_dedupe_key(rule, match.order)
        if dedupe_key is not None:
            # Notifications are only written at the end of the batch, so the batch's own
            # sends are checked from memory.
            refusal = order_window_refusal(session, rule=rule, dedupe_key=dedupe_key)
            if refusal is None and (rule.name, dedupe_key) in batch.dedupe_keys:
                refusal = f"already sent for {dedupe_key} earlier in this batch"
            if refusal is not None:
                return skip(refusal)
        unique_key, failed = rule_unique_key(rule, context)
        if failed is not None:
            return skip(failed)
        if unique_key is not None:
            refusal = unique_key_refusal(
                session, rule=rule, contact_id=contact.id, unique_key=unique_key
            )
            if refusal is None and (rule.name, contact.id, unique_key) in batch.unique_keys:
                refusal = f"already sent for dedupe key {unique_key!r} earlier in this batch"
            if refusal is not None:
                return skip(refusal)
        idempotency_key = f"{rule.name}:{call.message_id}"
        verdict = self._policy.check(session, attempt_for(rule, contact, planned=batch.planned))
        if not verdict.allows:
            return self._refused(
                session, call, event, contact, rule, verdict, batch, context, dedupe_key
            )
        if dedupe_key is not None:
            batch.dedupe_keys.add((rule.name, dedupe_key))
        if unique_key is not None:
            batch.unique_keys.add((rule.name, contact.id, unique_key))
        batch.planned.append(PlannedSend(contact.id, rule.name, str(rule.purpose), now()))
        email = {
            "idempotency_key": idempotency_key,
            "dedupe_key": dedupe_key,
            "unique_key": unique_key,
            "rule": rule.name,
            "template": rule.template,
            "purpose": str(rule.purpose),
            "channel": rule.channel,
            "contact_id": contact.id,
            "to_address": contact.email,
            "language": contact.language,
            "context": context,
        }
        first, *others = [new_row(Notification, row) for row in firing_rows(rule, email)]
        reason = send_reason(SEND_REASON, first)
        return _Verdict(rule.name, event, contact_id, reason, first, actions=others)

    @staticmethod
    def _refused(
        session: Session,
        call: SegmentCall,
        event: dict[str, Any],
        contact: Contact,
        rule: Rule,
        verdict: Verdict,
        batch: _Batch,
        context: dict[str, Any],
        dedupe_key: str | None,
    ) -> _Verdict:
        """The decision for a send the guards skipped or deferred; a deferral schedules its
        retry (or joins the digest)."""
        assert contact.id is not None
        if verdict.outcome == DecisionOutcome.DEFER:
            cart_id = _cart_id(call)
            retry = defer_send(
                session,
                rule=rule,
                step_index=0,
                verdict=verdict,
                contact_id=contact.id,
                context=context,
                idempotency_key=f"{rule.name}:{call.message_id}",
                trigger_at=min(call.timestamp, now() + MAX_CLOCK_SKEW),
                event_id=None,  # set once the event is inserted
                entity_type="cart" if cart_id is not None else None,
                entity_id=cart_id,
                dedupe_key=dedupe_key,
            )
            if retry is not None:
                batch.timers.append((retry, call.message_id))
        return _Verdict(
            rule.name,
            event,
            contact.id,
            verdict.reason,
            outcome=verdict.outcome,
            details=verdict.details or None,
        )

    @staticmethod
    def _write(
        session: Session,
        batch: _Batch,
        verdicts: list[_Verdict],
        result: IngestResult,
    ) -> None:
        """Insert the batch's events, then its timers, decisions and notifications."""
        session.flush()  # contacts, orders, carts and timers changed by the batch
        event_ids = insert_rows(session, Event, batch.events, key="message_id")
        for timer, message_id in batch.timers:
            timer.event_id = event_ids.get(message_id)
            timer_repository.schedule_timer(session=session, timer=timer)
        for record, message_id in batch.consent:
            record.event_id = event_ids.get(message_id)
        plans = []
        for verdict in verdicts:
            event_id = event_ids[verdict.event["message_id"]]
            if verdict.notification is not None:
                verdict.notification["event_id"] = event_id
            plans.append(
                repository.PlannedDecision(
                    verdict.rule,
                    event_id,
                    verdict.contact_id,
                    verdict.reason,
                    verdict.notification,
                    verdict.outcome,
                    verdict.details,
                )
            )
            for row in verdict.actions:
                row["event_id"] = event_id
                reason = send_reason(SEND_REASON, row)
                plans.append(
                    repository.PlannedDecision(
                        verdict.rule, event_id, verdict.contact_id, reason, row
                    )
                )
        result.notification_ids += repository.write_decisions(session=session, decisions=plans)
