"""Deciding one send: the checks every matched rule step passes, and what it writes.

Shared by intake (immediate sends) and the scheduler (timed steps, deferred sends, digests), so
both record the same decisions for the same reasons. The order of checks is: conditions (by the
caller), an email address, dedupe (the order-status window, the rule's ``dedupe_key``), then the
guards of :class:`~crm_notify.guards.SendPolicy`; a deferral becomes a timer.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from crm_notify.actions.rows import firing_rows, send_reason
from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.errors import ConditionError
from crm_notify.guards import PlannedSend, SendAttempt, SendPolicy, Verdict
from crm_notify.outbox import repository
from crm_notify.outbox.models import DecisionOutcome, Notification
from crm_notify.rules.conditions import Condition
from crm_notify.rules.durations import format_duration
from crm_notify.rules.model import Rule
from crm_notify.timers.models import Timer, TimerKind, TimerStatus


def failing_condition(conditions: Sequence[Condition], context: dict[str, Any]) -> str | None:
    """Why the first condition that does not hold fails, or ``None`` when all hold."""
    for condition in conditions:
        try:
            if not condition.evaluate(context):
                return f"condition not met: {condition.source}"
        except ConditionError as exc:
            return f"condition failed: {condition.source}: {exc}"
    return None


def holding_exit(rule: Rule, context: dict[str, Any]) -> str | None:
    """The first ``exit_when`` condition that holds (an error counts as holding), or ``None``."""
    for condition in rule.exit_conditions:
        try:
            if condition.evaluate(context):
                return f"exit condition holds: {condition.source}"
        except ConditionError as exc:
            return f"exit condition failed: {condition.source}: {exc}"
    return None


def missing_recipient(rule: Rule, contact: Contact | None) -> str | None:
    """Why a firing of ``rule`` has nobody to go to, or ``None``: a rule that emails needs the
    contact's address; one with only webhook actions needs a known contact."""
    if rule.sends_email and (contact is None or not contact.email):
        return "no email address known for this contact"
    if contact is None or contact.id is None:
        return "no contact known for this call"
    return None


def skip(
    session: Session,
    *,
    rule: Rule,
    reason: str,
    event_id: int | None,
    contact_id: int | None,
    outcome: DecisionOutcome = DecisionOutcome.SKIP,
    details: dict[str, Any] | None = None,
) -> None:
    """Record a decision not to send (now): a skip, or with ``outcome`` a deferral."""
    decision = repository.record_decision(
        session=session,
        rule=rule.name,
        outcome=outcome,
        reason=reason,
        event_id=event_id,
        contact_id=contact_id,
    )
    decision.details = details or None


def recently_sent(
    session: Session, *, rule: Rule, dedupe_key: str, window: timedelta
) -> Notification | None:
    """A notification of ``rule`` with ``dedupe_key`` created within ``window``, if any."""
    return session.exec(
        select(Notification)
        .where(Notification.rule == rule.name)
        .where(Notification.dedupe_key == dedupe_key)
        .where(col(Notification.created_at) >= now() - window)
        .order_by(col(Notification.created_at).desc())
    ).first()


def order_window_refusal(session: Session, *, rule: Rule, dedupe_key: str) -> str | None:
    """Why an order-status send repeats one within the rule's dedupe window, or ``None``."""
    with session.no_autoflush:
        earlier = recently_sent(
            session, rule=rule, dedupe_key=dedupe_key, window=rule.dedupe_window
        )
    if earlier is None:
        return None
    return (
        f"already sent for {dedupe_key} within the dedupe window "
        f"({format_duration(rule.dedupe_window)})"
    )


def rule_unique_key(rule: Rule, context: dict[str, Any]) -> tuple[str | None, str | None]:
    """The rule's ``dedupe_key`` rendered for ``context``: ``(key, None)``, or ``(None, why)``
    when it fails to render (the send is then skipped: a broken key must not bypass dedupe)."""
    if rule.dedupe_key is None:
        return None, None
    try:
        return rule.dedupe_key.render(context), None
    except ConditionError as exc:
        return None, f"dedupe_key failed: {exc}"


def unique_key_refusal(
    session: Session, *, rule: Rule, contact_id: int, unique_key: str
) -> str | None:
    """Why a send repeats the rule's notification for ``unique_key``, or ``None``."""
    with session.no_autoflush:
        earlier = session.exec(
            select(Notification)
            .where(Notification.rule == rule.name)
            .where(Notification.contact_id == contact_id)
            .where(Notification.unique_key == unique_key)
        ).first()
    if earlier is None:
        return None
    return (
        f"already sent for dedupe key {unique_key!r} "
        f"(notification {earlier.id}, {earlier.created_at:%Y-%m-%d %H:%M} UTC)"
    )


def attempt_for(
    rule: Rule, contact: Contact, *, planned: Sequence[PlannedSend] = ()
) -> SendAttempt:
    """The guards' view of a send of ``rule`` to ``contact`` now."""
    return SendAttempt(
        rule_name=rule.name,
        purpose=str(rule.purpose),
        contact=contact,
        moment=now(),
        rule=rule,
        planned=planned,
    )


def is_digest(verdict: Verdict) -> bool:
    """Whether a deferral asks for the send to join a digest (``over_limit: digest``)."""
    return verdict.outcome == DecisionOutcome.DEFER and verdict.details.get("action") == "digest"


def deferred_timer(
    *,
    rule: Rule,
    step_index: int,
    until: datetime,
    idempotency_key: str,
    contact_id: int | None,
    trigger_at: datetime,
    event_id: int | None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    dedupe_key: str | None = None,
) -> Timer:
    """A timer that retries a deferred send at ``until`` with the same idempotency key, so the
    send happens once however often it is deferred (not inserted: the caller does)."""
    return Timer(
        key=f"defer:{idempotency_key}:{until.isoformat()}",
        kind=TimerKind.DEFERRED,
        rule=rule.name,
        step=step_index,
        contact_id=contact_id,
        entity_type=entity_type,
        entity_id=entity_id,
        event_id=event_id,
        dedupe_key=dedupe_key,
        trigger_at=trigger_at,
        due_at=until,
        payload={"idempotency_key": idempotency_key},
    )


def add_to_digest(
    session: Session,
    *,
    rule: Rule,
    contact_id: int,
    until: datetime,
    item: dict[str, Any],
) -> Timer:
    """Add ``item`` (a send's template data) to the contact's pending digest of ``rule``, or
    start one due at ``until``. The caller holds the contact's lock (the rate-limit guard took
    it), so two transactions cannot start two digests."""
    pending = session.exec(
        select(Timer)
        .where(Timer.rule == rule.name)
        .where(Timer.contact_id == contact_id)
        .where(Timer.kind == TimerKind.DIGEST.value)
        .where(Timer.status == TimerStatus.PENDING.value)
    ).first()
    if pending is not None:
        payload = dict(pending.payload or {})
        payload["items"] = [*payload.get("items", []), item]
        pending.payload = payload
        pending.updated_at = now()
        session.add(pending)
        return pending
    timer = Timer(
        key=f"digest:{rule.name}:{contact_id}:{uuid.uuid4().hex}",
        kind=TimerKind.DIGEST,
        rule=rule.name,
        step=0,
        contact_id=contact_id,
        trigger_at=now(),
        due_at=until,
        payload={"items": [item]},
    )
    session.add(timer)
    return timer


def defer_send(
    session: Session,
    *,
    rule: Rule,
    step_index: int,
    verdict: Verdict,
    contact_id: int,
    context: dict[str, Any],
    idempotency_key: str,
    trigger_at: datetime,
    event_id: int | None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    dedupe_key: str | None = None,
) -> Timer | None:
    """Carry out a ``defer`` verdict: join the contact's digest (``over_limit: digest``), or
    return the timer that retries the send at ``verdict.until`` (the caller inserts it)."""
    assert verdict.until is not None
    if is_digest(verdict):
        add_to_digest(
            session,
            rule=rule,
            contact_id=contact_id,
            until=verdict.until,
            item=digest_item(context),
        )
        return None
    return deferred_timer(
        rule=rule,
        step_index=step_index,
        until=verdict.until,
        idempotency_key=idempotency_key,
        contact_id=contact_id,
        trigger_at=trigger_at,
        event_id=event_id,
        entity_type=entity_type,
        entity_id=entity_id,
        dedupe_key=dedupe_key,
    )


def _postpone_digest(session: Session, digest: Timer, verdict: Verdict) -> None:
    """A digest the guards deferred again goes out later as a new digest timer with the same
    items (later sends over the cap join it)."""
    assert verdict.until is not None
    session.add(
        Timer(
            key=f"digest:{digest.rule}:{digest.contact_id}:{uuid.uuid4().hex}",
            kind=TimerKind.DIGEST,
            rule=digest.rule,
            step=0,
            contact_id=digest.contact_id,
            trigger_at=digest.trigger_at,
            due_at=verdict.until,
            payload=digest.payload,
        )
    )


def digest_item(context: dict[str, Any]) -> dict[str, Any]:
    """What a digest keeps of one send: its template data without the contact (the digest
    renders with the contact as it is when it goes out), and of the event only its name,
    properties and time (not the context's IP and user agent, nor traits)."""
    item = {key: value for key, value in context.items() if key not in ("contact", "event")}
    event = context.get("event")
    if isinstance(event, dict):
        item["event"] = {
            key: event.get(key) for key in ("type", "event", "name", "properties", "timestamp")
        }
    return item


def decide_send(
    session: Session,
    *,
    rule: Rule,
    step_index: int,
    contact: Contact | None,
    context: dict[str, Any],
    event_id: int | None,
    idempotency_key: str,
    policy: SendPolicy,
    timer: Timer | None = None,
    template: str | None = None,
) -> list[int]:
    """Write the send of one rule step (or of a digest), or a decision saying why not.

    The caller has already checked the rule's and the step's conditions. A deferral schedules a
    timer (or joins the digest) and records a ``defer`` decision. A send writes the step's
    email and, for a rule with ``actions``, one notification per webhook action (a digest is
    an email only), each with its ``send`` decision.

    Returns:
        The new notifications' ids; empty when skipped, deferred or already decided.
    """
    contact_id = contact.id if contact else None

    def refuse(reason: str, verdict: Verdict | None = None) -> None:
        skip(
            session,
            rule=rule,
            reason=reason,
            event_id=event_id,
            contact_id=contact_id,
            outcome=verdict.outcome if verdict else DecisionOutcome.SKIP,
            details=verdict.details if verdict else None,
        )

    missing = missing_recipient(rule, contact)
    if missing is not None or contact is None or contact.id is None:
        refuse(missing or "no contact known for this call")
        return []
    dedupe_key = timer.dedupe_key if timer is not None else None
    if dedupe_key is not None:
        refusal = order_window_refusal(session, rule=rule, dedupe_key=dedupe_key)
        if refusal is not None:
            refuse(refusal)
            return []
    unique_key, failed = (None, None) if template else rule_unique_key(rule, context)
    if failed is not None:
        refuse(failed)
        return []
    if unique_key is not None:
        refusal = unique_key_refusal(
            session, rule=rule, contact_id=contact.id, unique_key=unique_key
        )
        if refusal is not None:
            refuse(refusal)
            return []
    verdict = policy.check(session, attempt_for(rule, contact))
    if verdict.outcome == DecisionOutcome.SKIP:
        refuse(verdict.reason, verdict)
        return []
    if verdict.outcome == DecisionOutcome.DEFER:
        if timer is not None and timer.kind == TimerKind.DIGEST:
            _postpone_digest(session, timer, verdict)
        else:
            retry = defer_send(
                session,
                rule=rule,
                step_index=step_index,
                verdict=verdict,
                contact_id=contact.id,
                context=context,
                idempotency_key=idempotency_key,
                trigger_at=timer.trigger_at if timer is not None else now(),
                event_id=event_id,
                entity_type=timer.entity_type if timer is not None else None,
                entity_id=timer.entity_id if timer is not None else None,
                dedupe_key=dedupe_key,
            )
            if retry is not None:
                session.add(retry)
        refuse(verdict.reason, verdict)
        return []
    step = rule.steps[step_index]
    email: dict[str, Any] = {
        "idempotency_key": idempotency_key,
        "rule": rule.name,
        "step": step_index,
        "template": template or step.template,
        "purpose": str(rule.purpose),
        "channel": rule.channel,
        "contact_id": contact.id,
        "event_id": event_id,
        "to_address": contact.email,
        "language": contact.language,
        "context": context,
        "dedupe_key": dedupe_key,
        "unique_key": unique_key,
        "timer_id": timer.id if timer is not None else None,
    }
    if template is not None:
        reason = f"digest of {len(context.get('digest', {}).get('items', []))} sends"
    else:
        reason = "rule matched" if len(rule.steps) == 1 else f"rule matched ({step.name})"
    created = []
    for values in [email] if template is not None else firing_rows(rule, email):
        notification = Notification(**values)
        if repository.create_notification(
            session=session, notification=notification, reason=send_reason(reason, values)
        ):
            assert notification.id is not None
            created.append(notification.id)
    return created
