"""What happens to a gate's rejected and timed-out items: a follow-up template, or a retry.

A rule names one of two follow-up paths per outcome (``on_rejected``, ``on_timed_out``):

- ``{template: NAME}``: a new ``pending`` notification of the same rule, contact and data with
  that template, made once per e-mail item (its idempotency key is the item's with
  ``#gate-rejected`` or ``#gate-timed-out`` appended); it belongs to the same gate, so its
  template sees ``gate`` and quiet hours are checked before it goes out.
- ``{retry_after: DURATION, retries: N}``: the send is tried again that much later, once per
  firing (the email and the rule's webhook actions together), by a durable timer
  (kind ``gate_retry``). When due, the send is decided again (guards included), under the key
  ``<original key>#gate-retry-<n>``, and held by a new gate. A send is retried at most ``N``
  times; after that a rejection or timeout is final. A ``cancel_on`` event cancels a pending
  retry like any step of the rule.

Each function works in the caller's session (and transaction) and returns the ids of the
notifications to hand to the broker after the commit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.actions.rows import firing_key
from crm_notify.clock import now
from crm_notify.db import insert_rows, new_row
from crm_notify.gates._rows import NOTIFICATION
from crm_notify.gates.model import Gate, GateConfig, GateRetry
from crm_notify.outbox.models import (
    Decision,
    DecisionOutcome,
    Notification,
    NotificationStatus,
)
from crm_notify.outbox.repository import PlannedDecision, write_decisions
from crm_notify.timers import repository as timer_repository
from crm_notify.timers.models import Timer, TimerKind

#: Idempotency-key suffixes of the template follow-ups.
REJECTED_SUFFIX = "#gate-rejected"
TIMED_OUT_SUFFIX = "#gate-timed-out"
#: What a retry's idempotency key ends with, before its number.
RETRY_MARK = "#gate-retry-"
#: ``Notification.idempotency_key`` length.
_KEY_CHARS = 512
#: ``Timer.key`` length.
_TIMER_KEY_CHARS = 767
#: The channel template follow-ups are made for.
_EMAIL = "email"
#: Ids per query.
_ID_CHUNK = 500
_RETRY_KEY = re.compile(re.escape(RETRY_MARK) + r"(\d+)$")


def after_rejected(
    session: Session, gate: Gate, config: GateConfig, ids: Sequence[int]
) -> list[int]:
    """Carry out ``on_rejected`` for the rejected items ``ids`` (a template or a retry).

    Returns:
        The follow-up notifications to enqueue (none for a retry: its timer decides later).
    """
    return _follow_up(
        session,
        gate,
        ids,
        template=config.on_rejected,
        retry=config.retry_rejected,
        suffix=REJECTED_SUFFIX,
        key="on_rejected",
        why=f"rejected by gate {gate.public_id}",
    )


def after_timed_out(
    session: Session, gate: Gate, config: GateConfig, ids: Sequence[int]
) -> list[int]:
    """Carry out ``on_timed_out`` for the items ``ids`` dropped at the deadline.

    Returns:
        The follow-up notifications to enqueue (none for a retry).
    """
    return _follow_up(
        session,
        gate,
        ids,
        template=config.on_timed_out,
        retry=config.retry_timed_out,
        suffix=TIMED_OUT_SUFFIX,
        key="on_timed_out",
        why=f"dropped when gate {gate.public_id} timed out",
    )


def _follow_up(
    session: Session,
    gate: Gate,
    ids: Sequence[int],
    *,
    template: str | None,
    retry: GateRetry | None,
    suffix: str,
    key: str,
    why: str,
) -> list[int]:
    """A template follow-up, or retries, as the rule's ``key`` says (nothing when unset)."""
    if template is not None:
        reason = f"follow-up of an item {why} ({key})"
        return _template_follow_ups(
            session, gate, ids, template=template, suffix=suffix, reason=reason
        )
    if retry is not None:
        schedule_retries(session, gate, ids, retry=retry, why=why)
    return []


def retry_number(idempotency_key: str) -> int:
    """How many times the send of ``idempotency_key`` has been retried (0: the original)."""
    match = _RETRY_KEY.search(firing_key(idempotency_key))
    return int(match.group(1)) if match else 0


def retry_key(idempotency_key: str, number: int) -> str:
    """The idempotency key of retry ``number`` of the send of ``idempotency_key``."""
    origin = _RETRY_KEY.sub("", firing_key(idempotency_key))
    mark = f"{RETRY_MARK}{number}"
    return origin[: _KEY_CHARS - len(mark)] + mark


def schedule_retries(
    session: Session, gate: Gate, ids: Sequence[int], *, retry: GateRetry, why: str
) -> list[Timer]:
    """Schedule one retry per firing of the items ``ids`` (see the module docstring), each
    recorded in the decision log; a send out of retries is recorded as final.

    Returns:
        The new timers.
    """
    firings: dict[str, list[Notification]] = {}
    for row in _rows(session, ids):
        firings.setdefault(firing_key(row.idempotency_key), []).append(row)
    moment = now()
    due = moment + retry.after
    timers: list[Timer] = []
    entries: list[dict[str, object]] = []
    for key, members in firings.items():
        row = members[0]
        number = retry_number(key) + 1
        entry = {
            "rule": row.rule,
            "event_id": row.event_id,
            "contact_id": row.contact_id,
            "notification_id": row.id,
            "at": moment,
        }
        final = _no_retry(session, row, number, retry)
        if final is not None:
            entries.append(
                entry
                | {
                    "outcome": DecisionOutcome.SKIP.value,
                    "reason": f"{why}: {final}",
                    "details": {"gate": gate.public_id, "retries": retry.times},
                }
            )
            continue
        timer = _retry_timer(session, gate, row, retry_key(key, number), due=due, moment=moment)
        if not timer_repository.schedule_timer(session=session, timer=timer):
            continue  # already scheduled (and logged) for this firing
        timers.append(timer)
        _free_unique_key(session, [member.id for member in members if member.id is not None])
        entries.append(
            entry
            | {
                "outcome": DecisionOutcome.DEFER.value,
                "reason": f"{why}: tried again at {due:%Y-%m-%d %H:%M} UTC "
                f"(retry {number} of {retry.times})",
                "details": {"gate": gate.public_id, "retry": number, "until": due.isoformat()},
            }
        )
    insert_rows(session, Decision, [new_row(Decision, entry) for entry in entries])
    return timers


def _retry_timer(
    session: Session, gate: Gate, row: Notification, key: str, *, due: datetime, moment: datetime
) -> Timer:
    """The ``gate_retry`` timer of ``row``'s firing: the entity (a cart) and the trigger time
    of the timer that made it, so the retry sees the cart as it is then and the step's send
    window still applies."""
    origin = session.get(Timer, row.timer_id) if row.timer_id is not None else None
    return Timer(
        key=f"gate-retry:{key}"[:_TIMER_KEY_CHARS],
        kind=TimerKind.GATE_RETRY,
        rule=row.rule,
        step=row.step,
        contact_id=row.contact_id,
        entity_type=origin.entity_type if origin is not None else None,
        entity_id=origin.entity_id if origin is not None else None,
        event_id=row.event_id,
        trigger_at=origin.trigger_at if origin is not None else moment,
        due_at=due,
        payload={"idempotency_key": key, "follows": row.id, "gate": gate.public_id},
    )


def _no_retry(session: Session, row: Notification, number: int, retry: GateRetry) -> str | None:
    """Why the firing of ``row`` gets no retry ``number``, or ``None`` when it gets one."""
    if number > retry.times:
        return f"no retry left (retries: {retry.times})"
    origin = session.get(Timer, row.timer_id) if row.timer_id is not None else None
    if origin is not None and origin.kind == TimerKind.DIGEST:
        return "a digest is not retried"
    return None


def _free_unique_key(session: Session, ids: Sequence[int]) -> None:
    """Let the retry take the rule's ``dedupe_key`` that the firing's cancelled rows held (the
    email row, or the first webhook action's when the rule sends no email)."""
    session.execute(
        sa.update(NOTIFICATION)
        .where(NOTIFICATION.c.id.in_(list(ids)))
        .where(NOTIFICATION.c.status == NotificationStatus.CANCELLED.value)
        .values(unique_key=None)
    )


def _rows(
    session: Session, ids: Sequence[int], *, channel: str | None = None
) -> list[Notification]:
    """The notifications ``ids`` (of ``channel`` only, when given), by id, read in chunks so a
    large gate stays within the database's bound-parameter limits."""
    found: list[Notification] = []
    unique = sorted(set(ids))
    for start in range(0, len(unique), _ID_CHUNK):
        query = select(Notification).where(
            col(Notification.id).in_(unique[start : start + _ID_CHUNK])
        )
        if channel is not None:
            query = query.where(col(Notification.channel) == channel)
        found += session.exec(query).all()
    return sorted(found, key=lambda row: row.id or 0)


def _template_follow_ups(
    session: Session,
    gate: Gate,
    notification_ids: Sequence[int],
    *,
    template: str,
    suffix: str,
    reason: str,
) -> list[int]:
    """A ``pending`` notification with ``template`` for each e-mail item of
    ``notification_ids`` (once per item: see the module docstring); return their ids."""
    rows = _rows(session, notification_ids, channel=_EMAIL)
    planned = [
        PlannedDecision(
            rule=row.rule,
            event_id=row.event_id,
            contact_id=row.contact_id,
            reason=reason,
            details={"follows": row.id},
            notification=new_row(
                Notification,
                {
                    "idempotency_key": row.idempotency_key[: _KEY_CHARS - len(suffix)] + suffix,
                    "rule": row.rule,
                    "dedupe_key": row.dedupe_key,
                    "step": row.step,
                    "timer_id": row.timer_id,
                    "template": template,
                    "purpose": row.purpose,
                    "channel": row.channel,
                    "contact_id": row.contact_id,
                    "event_id": row.event_id,
                    "to_address": row.to_address,
                    "language": row.language,
                    "context": row.context,
                    "status": NotificationStatus.PENDING,
                    "gate_id": gate.id,
                },
            ),
        )
        for row in rows
    ]
    return write_decisions(session=session, decisions=planned)
