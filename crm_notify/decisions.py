"""Deciding one send: the checks every matched rule step passes, and the outbox row it writes.

Shared by intake (immediate sends) and the scheduler (timed steps), so both record the same
decisions for the same reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.errors import ConditionError
from crm_notify.guards.policy import SendPolicy
from crm_notify.outbox import repository
from crm_notify.outbox.models import DecisionOutcome, Notification
from crm_notify.rules.conditions import Condition
from crm_notify.rules.model import Rule


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


def skip(
    session: Session,
    *,
    rule: Rule,
    reason: str,
    event_id: int | None,
    contact_id: int | None,
    outcome: DecisionOutcome = DecisionOutcome.SKIP,
) -> None:
    """Record a decision not to send (now)."""
    repository.record_decision(
        session=session,
        rule=rule.name,
        outcome=outcome,
        reason=reason,
        event_id=event_id,
        contact_id=contact_id,
    )


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
    dedupe_key: str | None = None,
    timer_id: int | None = None,
) -> int | None:
    """Write the send of one rule step, or a skip decision saying why not.

    The caller has already checked the rule's and the step's conditions.

    Returns:
        The new notification's id, or ``None`` when skipped or already decided.
    """
    contact_id = contact.id if contact else None
    if contact is None or not contact.email:
        skip(
            session,
            rule=rule,
            reason="no email address known for this contact",
            event_id=event_id,
            contact_id=contact_id,
        )
        return None
    verdict = policy.check(rule=rule, contact=contact)
    if verdict is not None:
        skip(session, rule=rule, reason=verdict, event_id=event_id, contact_id=contact_id)
        return None
    if dedupe_key is not None:
        earlier = recently_sent(
            session, rule=rule, dedupe_key=dedupe_key, window=rule.dedupe_window
        )
        if earlier is not None:
            skip(
                session,
                rule=rule,
                reason=(
                    f"already sent for {dedupe_key} at {earlier.created_at:%Y-%m-%d %H:%M} UTC"
                    f" (dedupe window {rule.dedupe_window})"
                ),
                event_id=event_id,
                contact_id=contact_id,
            )
            return None
    step = rule.steps[step_index]
    notification = Notification(
        idempotency_key=idempotency_key,
        rule=rule.name,
        step=step_index,
        template=step.template,
        purpose=str(rule.purpose),
        channel=rule.channel,
        contact_id=contact.id,
        event_id=event_id,
        to_address=contact.email,
        language=contact.language,
        context=context,
        dedupe_key=dedupe_key,
        timer_id=timer_id,
    )
    reason = "rule matched" if len(rule.steps) == 1 else f"rule matched ({step.name})"
    if repository.create_notification(session=session, notification=notification, reason=reason):
        return notification.id
    return None
