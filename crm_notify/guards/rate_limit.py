"""Rate limits per contact: a rule's own ``limit``, and the global cap on non-transactional mail.

A cap counts the contact's notifications created within the sliding window before the send
(cancelled and failed ones do not count) plus the sends planned earlier in the same transaction.
It counts rule firings, not channels: the email and the webhook actions of one firing (see
:mod:`crm_notify.actions.rows`) count once.
Exact under concurrency: before counting, the contact's row is locked (``SELECT ... FOR UPDATE``
on PostgreSQL; SQLite lets one writer in at a time already), so two workers deciding for the
same contact take turns, and the second counts what the first wrote.

Over a cap, the rule's ``over_limit`` decides: ``drop`` skips the send, ``defer`` waits until
the window allows it, ``digest`` waits likewise with ``action="digest"`` in the details (the
caller merges such sends into one later message).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from crm_notify.actions.rows import firing_key
from crm_notify.clock import as_utc
from crm_notify.guards._memo import lock_contact
from crm_notify.guards.base import Guard, PlannedSend, SendAttempt, Verdict
from crm_notify.outbox.models import DecisionOutcome, Notification, NotificationStatus
from crm_notify.rules.model import Limit, OverLimit

#: The purpose the global cap does not count.
TRANSACTIONAL = "transactional"
#: Notification statuses that do not count towards a cap: nothing reached the contact.
NOT_COUNTED = (NotificationStatus.CANCELLED, NotificationStatus.FAILED)


def counted_sends(
    session: Session,
    *,
    contact_id: int,
    since: datetime,
    rule: str | None,
    planned: Sequence[PlannedSend] = (),
) -> list[datetime]:
    """When the contact's counted sends were created, oldest first: those after ``since``, of
    ``rule`` when given, else of every purpose but transactional. The notifications of one
    firing (an email and its webhook actions) are one send.

    Parameters:
        session: the transaction (lock the contact first for an exact count).
        contact_id: the contact.
        since: the start of the window (excluded).
        rule: count this rule's sends; ``None`` counts all non-transactional sends.
        planned: sends decided in this transaction but not written yet.

    Returns:
        The creation times, as aware UTC datetimes, sorted.
    """
    query = select(Notification.created_at, Notification.idempotency_key).where(
        Notification.contact_id == contact_id,
        col(Notification.created_at) > since,
        col(Notification.status).not_in([status.value for status in NOT_COUNTED]),
    )
    if rule is not None:
        query = query.where(Notification.rule == rule)
    else:
        query = query.where(Notification.purpose != TRANSACTIONAL)
    firings: dict[str, datetime] = {}
    with session.no_autoflush:  # sends are flushed when written, or passed as ``planned``
        for created_at, key in session.exec(query):
            at = as_utc(created_at)
            firings[firing_key(key)] = min(at, firings.get(firing_key(key), at))
    times = list(firings.values())
    for send in planned:
        matches = send.rule == rule if rule is not None else send.purpose != TRANSACTIONAL
        if send.contact_id == contact_id and matches and as_utc(send.at) > since:
            times.append(as_utc(send.at))
    return sorted(times)


class RateLimitGuard(Guard):
    """Caps sends per contact: per rule (the rule's ``limit``) and across all non-transactional
    purposes (``marketing_limit``). Does not run again at delivery.

    Parameters:
        marketing_limit: the global cap (``CRM_NOTIFY_MARKETING_LIMIT``); ``None``: none.
    """

    name = "rate_limit"
    at_delivery = False

    def __init__(self, *, marketing_limit: Limit | None) -> None:
        self.marketing_limit = marketing_limit

    def check(self, session: Session, attempt: SendAttempt) -> Verdict | None:
        """Skip or defer ``attempt`` when a cap is reached; ``None`` when it may go."""
        rule = attempt.rule
        caps: list[tuple[str, Limit]] = []
        if rule is not None and rule.limit is not None:
            caps.append(("rule", rule.limit))
        if self.marketing_limit is not None and attempt.purpose != TRANSACTIONAL:
            caps.append(("marketing", self.marketing_limit))
        contact_id = attempt.contact.id
        if not caps or contact_id is None:
            return None
        lock_contact(session, contact_id)
        moment = as_utc(attempt.moment)
        over = rule.over_limit if rule is not None else OverLimit.DROP
        for scope, limit in caps:
            times = counted_sends(
                session,
                contact_id=contact_id,
                since=moment - limit.per,
                rule=attempt.rule_name if scope == "rule" else None,
                planned=attempt.planned,
            )
            if len(times) >= limit.count:
                return _over_cap(limit, scope, times, over)
        return None


def _over_cap(limit: Limit, scope: str, times: list[datetime], over: OverLimit) -> Verdict:
    """The verdict for a reached cap: ``times`` (sorted, at least ``limit.count``) counted."""
    what = "limit" if scope == "rule" else "marketing limit"
    last = times[-1]
    details = {
        "limit": str(limit),
        "count": len(times),
        "scope": scope,
        "last_sent_at": last.isoformat(),
        "action": over.value,
    }
    if over is OverLimit.DROP:
        return Verdict.skip(
            f"{what} {limit.describe()} reached, last sent {_when(last)}", **details
        )
    # The window allows one more once enough of the counted sends have left it.
    until = times[len(times) - limit.count] + limit.per
    then = "deferred until" if over is OverLimit.DEFER else "collected into a digest sent at"
    return Verdict(
        DecisionOutcome.DEFER,
        f"{what} {limit.describe()} reached; {then} {_when(until)}",
        {**details, "until": until.isoformat()},
        until,
    )


def _when(moment: datetime) -> str:
    return f"{as_utc(moment):%Y-%m-%d %H:%M} UTC"
