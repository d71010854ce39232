"""What a timed rule step does: scheduling it, and firing it when due."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from crm_notify.clock import now
from crm_notify.commerce.models import Cart
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import contact_data
from crm_notify.context import current_context, stored_event_data
from crm_notify.decisions import decide_send, failing_condition, holding_exit, skip
from crm_notify.events.models import Event
from crm_notify.guards import SendPolicy
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.model import Rule
from crm_notify.rules.triggers import IdleTrigger
from crm_notify.timers import repository
from crm_notify.timers.models import Timer, TimerKind, TimerStatus


def step_due_at(rule: Rule, step_index: int, trigger_at: datetime) -> datetime:
    """When step ``step_index`` of ``rule`` is due for a trigger at ``trigger_at``."""
    step = rule.steps[step_index]
    offset = max(step.delay, step.not_before or timedelta(0))
    return trigger_at + offset


def schedule_step(
    session: Session,
    *,
    rule: Rule,
    step_index: int,
    key_base: str,
    trigger_at: datetime,
    contact_id: int | None,
    event_id: int | None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    dedupe_key: str | None = None,
) -> Timer | None:
    """Schedule one step (a no-op when that step of that trigger is already scheduled).

    Returns:
        The new timer, or ``None`` when it existed.
    """
    timer = Timer(
        key=f"{key_base}:{step_index}",
        rule=rule.name,
        step=step_index,
        contact_id=contact_id,
        entity_type=entity_type,
        entity_id=entity_id,
        event_id=event_id,
        dedupe_key=dedupe_key,
        trigger_at=trigger_at,
        due_at=step_due_at(rule, step_index, trigger_at),
    )
    return timer if repository.schedule_timer(session=session, timer=timer) else None


def idle_key_base(rule: Rule, cart_id: str, last_activity_at: datetime) -> str:
    """Timer key prefix of one idle period of one cart."""
    return f"{rule.name}:cart:{cart_id}:{last_activity_at.isoformat()}"


class TimerFiring:
    """Fires due timers for the scheduler (see :data:`crm_notify.timers.scheduler.FireTimer`).

    Parameters:
        rules: the loaded rules (a timer whose rule is gone or disabled is cancelled).
        policy: the guards a send passes (default: the standard policy, default options).
    """

    def __init__(self, *, rules: RuleSet, policy: SendPolicy | None = None) -> None:
        self._rules = rules
        self._policy = policy or SendPolicy.standard()

    def __call__(self, session: Session, timer: Timer) -> list[int]:
        """Decide and record what ``timer`` does now; return new notification ids."""
        rule = self._rules.by_name(timer.rule)
        if rule is None or not rule.enabled or timer.step >= len(rule.steps):
            self._finish(session, timer, TimerStatus.CANCELLED, "rule removed or disabled")
            return []
        if timer.kind == TimerKind.DIGEST:
            return self._fire_digest(session, rule, timer)
        step = rule.steps[timer.step]
        contact = session.get(Contact, timer.contact_id) if timer.contact_id else None
        event_row = session.get(Event, timer.event_id) if timer.event_id else None
        event = stored_event_data(event_row) if event_row else None
        cart_id = timer.entity_id if timer.entity_type == "cart" else None
        context = current_context(session, event=event, contact=contact, cart_id=cart_id)
        contact_id = contact.id if contact else None
        # A deferred send (or a gate's retry of one) passed its conditions when it was decided.
        deferred = timer.kind in (TimerKind.DEFERRED, TimerKind.GATE_RETRY)

        def record(status: TimerStatus, reason: str) -> list[int]:
            skip(
                session,
                rule=rule,
                reason=f"{step.name}: {reason}",
                event_id=timer.event_id,
                contact_id=contact_id,
            )
            self._finish(session, timer, status, reason)
            return []

        def then_next(ids: list[int]) -> list[int]:
            if not deferred:  # a deferred send's step already scheduled the next one
                self._schedule_next(session, rule, timer)
            return ids

        if isinstance(rule.trigger, IdleTrigger) and cart_id is not None:
            # Newer qualifying activity already cancelled this timer; only a vanished cart is
            # left to check. An anonymous cart's contact may be known by now.
            cart = session.exec(select(Cart).where(Cart.cart_id == cart_id)).first()
            if cart is None:
                return record(TimerStatus.CANCELLED, "cart no longer exists")
            if contact is None and cart.contact_id is not None:
                contact = session.get(Contact, cart.contact_id)
                contact_id = cart.contact_id
                context = current_context(session, event=event, contact=contact, cart_id=cart_id)
        exit_reason = holding_exit(rule, context)
        if exit_reason is not None:
            return record(TimerStatus.CANCELLED, exit_reason)
        moment = now()
        if step.not_after is not None and moment > timer.trigger_at + step.not_after:
            latest = timer.trigger_at + step.not_after
            return then_next(
                record(TimerStatus.DROPPED, f"send window closed at {latest:%Y-%m-%d %H:%M} UTC")
            )
        if not deferred:  # a deferred send passed its conditions when it was decided
            first_of_idle = isinstance(rule.trigger, IdleTrigger) and timer.step == 0
            conditions = (*rule.conditions, *step.conditions) if first_of_idle else step.conditions
            failed = failing_condition(conditions, context)
            if failed is not None:
                if first_of_idle:
                    # The idle rule's own condition decides whether the sequence starts at all.
                    return record(TimerStatus.CANCELLED, failed)
                return then_next(record(TimerStatus.SKIPPED, failed))
        payload = timer.payload or {}
        notification_ids = decide_send(
            session,
            rule=rule,
            step_index=timer.step,
            contact=contact,
            context=context,
            event_id=timer.event_id,
            idempotency_key=payload.get("idempotency_key") or f"timer:{timer.id}",
            policy=self._policy,
            timer=timer,
        )
        return then_next(self._finish_send(session, timer, notification_ids))

    def _fire_digest(self, session: Session, rule: Rule, timer: Timer) -> list[int]:
        """Send the sends collected over a rate limit as one message."""
        contact = session.get(Contact, timer.contact_id) if timer.contact_id else None
        items = list((timer.payload or {}).get("items", []))
        context: dict[str, Any] = {
            "event": None,
            "contact": contact_data(contact) if contact else None,
            "order": None,
            "cart": None,
            "digest": {"items": items, "count": len(items)},
        }
        notification_ids = decide_send(
            session,
            rule=rule,
            step_index=0,
            contact=contact,
            context=context,
            event_id=None,
            idempotency_key=f"timer:{timer.id}",
            policy=self._policy,
            timer=timer,
            template=rule.digest_template or rule.template,
        )
        return self._finish_send(session, timer, notification_ids)

    def _finish_send(
        self, session: Session, timer: Timer, notification_ids: list[int]
    ) -> list[int]:
        if not notification_ids:
            self._finish(session, timer, TimerStatus.SKIPPED, "not sent now (see decision log)")
            return []
        listed = ", ".join(str(notification_id) for notification_id in notification_ids)
        self._finish(session, timer, TimerStatus.FIRED, f"notification {listed}")
        return notification_ids

    @staticmethod
    def _finish(session: Session, timer: Timer, status: TimerStatus, reason: str) -> None:
        repository.finish_timer(session=session, timer=timer, status=status, reason=reason)

    @staticmethod
    def _schedule_next(session: Session, rule: Rule, timer: Timer) -> None:
        next_index = timer.step + 1
        if next_index >= len(rule.steps):
            return
        schedule_step(
            session,
            rule=rule,
            step_index=next_index,
            key_base=timer.key.rsplit(":", 1)[0],
            trigger_at=timer.trigger_at,
            contact_id=timer.contact_id,
            event_id=timer.event_id,
            entity_type=timer.entity_type,
            entity_id=timer.entity_id,
            dedupe_key=timer.dedupe_key,
        )
