"""Recording fetch outcomes at delivery: decision-log entries, and how long a deferred email
may wait.

``ok``, ``cache_hit`` and ``fallback`` are ``send`` entries (the email goes on); a ``skip``
is the cancellation's own entry and a ``defer`` the deferral's (written by
:func:`crm_notify.outbox.repository.mark_cancelled` and ``mark_deferred``), each with the
step's :meth:`~crm_notify.fetch.outcomes.FetchResult.details`, so one query counts them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlmodel import Session

from crm_notify.events.models import Event
from crm_notify.fetch.outcomes import FetchResult
from crm_notify.outbox import repository
from crm_notify.outbox.models import DecisionOutcome, Notification
from crm_notify.rules.model import Rule
from crm_notify.timers.models import Timer


def log_results(session: Session, row: Notification, results: Sequence[FetchResult]) -> None:
    """One ``send`` decision-log entry per result (in the caller's transaction)."""
    for result in results:
        repository.log_decisions(
            session,
            [row],
            outcome=DecisionOutcome.SEND,
            reason=result.reason,
            details=result.details(),
        )


def retry_deadline(
    session: Session, row: Notification, rule: Rule, *, max_age: timedelta
) -> datetime:
    """The latest moment a deferred email of ``rule`` may be tried again: its step's
    ``not_after`` counted from the trigger time (the timer's, else the event's, else when the
    notification was written), and ``max_age`` from its first delivery attempt."""
    started = row.first_attempt_at or row.created_at
    deadline = started + max_age
    step = rule.steps[row.step] if 0 <= row.step < len(rule.steps) else None
    if step is None or step.not_after is None:
        return deadline
    timer = session.get(Timer, row.timer_id) if row.timer_id is not None else None
    event = session.get(Event, row.event_id) if row.event_id is not None else None
    if timer is not None:
        trigger_at = timer.trigger_at
    elif event is not None:
        trigger_at = event.timestamp
    else:
        trigger_at = row.created_at
    return min(deadline, trigger_at + step.not_after)
