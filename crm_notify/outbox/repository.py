"""Outbox operations: write decisions and sends together, claim and move sends through states.

Every transition is a single conditional ``UPDATE`` (``WHERE status IN ...``), so two workers
holding the same id cannot both claim it, and a redelivered broker message for a notification
that was already sent does nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.db import UTCDateTime, insert_rows, new_row
from crm_notify.lifecycle.emit import NOTIFICATION_EVENT_COLUMNS, emit_notification_event
from crm_notify.lifecycle.models import LifecycleName
from crm_notify.outbox.models import (
    CLAIMABLE,
    Decision,
    DecisionOutcome,
    Notification,
    NotificationStatus,
    NotificationStatusChange,
)

if TYPE_CHECKING:
    from crm_notify.guards.base import Verdict

#: The notification table, for statements that need no ORM bookkeeping.
_NOTIFICATION = cast(sa.Table, sa.inspect(Notification).local_table)


def record_decision(
    *,
    session: Session,
    rule: str,
    outcome: DecisionOutcome,
    reason: str,
    event_id: int | None,
    contact_id: int | None,
    notification_id: int | None = None,
) -> Decision:
    """Append one entry to the decision log (in the caller's transaction)."""
    decision = Decision(
        rule=rule,
        outcome=outcome,
        reason=reason,
        event_id=event_id,
        contact_id=contact_id,
        notification_id=notification_id,
    )
    session.add(decision)
    return decision


@dataclass
class PlannedDecision:
    """A decision taken at ingest, for :func:`write_decisions`.

    ``notification`` holds the column values of the notification a send creates (made with
    :func:`crm_notify.db.new_row`); it is ``None`` for a skip, and ``reason`` says why.
    """

    rule: str
    event_id: int | None
    contact_id: int | None
    reason: str
    notification: dict[str, Any] | None = None
    outcome: DecisionOutcome | None = None
    details: dict[str, Any] | None = None


def write_decisions(*, session: Session, decisions: Sequence[PlannedDecision]) -> list[int]:
    """Insert a batch's decisions, and for its sends the notifications and their ``pending``
    entries, in call order, as a few multi-row statements.

    ``outcome`` overrides the outcome implied by ``notification`` (``defer`` for a step that
    was scheduled). A send whose idempotency key already has a notification writes nothing, as
    :func:`create_notification` does.

    Returns:
        The ids of the new notifications, in order.
    """
    sends = [d.notification for d in decisions if d.notification is not None]
    taken = existing_idempotency_keys(session=session, keys=[n["idempotency_key"] for n in sends])
    written: list[PlannedDecision] = []
    for decision in decisions:
        if decision.notification is not None:
            key = decision.notification["idempotency_key"]
            if key in taken:
                continue
            taken.add(key)
        written.append(decision)
    ids = insert_rows(
        session,
        Notification,
        [d.notification for d in written if d.notification is not None],
        key="idempotency_key",
    )
    created: list[int] = []
    changes: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    for decision in written:
        notification_id = None
        if decision.notification is not None:
            notification_id = ids[decision.notification["idempotency_key"]]
            created.append(notification_id)
            changes.append(
                new_row(
                    NotificationStatusChange,
                    {
                        "notification_id": notification_id,
                        "status": NotificationStatus.PENDING,
                        "detail": decision.reason,
                    },
                )
            )
        log.append(
            new_row(
                Decision,
                {
                    "rule": decision.rule,
                    "outcome": decision.outcome
                    or (DecisionOutcome.SKIP if notification_id is None else DecisionOutcome.SEND),
                    "reason": decision.reason,
                    "event_id": decision.event_id,
                    "contact_id": decision.contact_id,
                    "notification_id": notification_id,
                    "details": decision.details,
                },
            )
        )
    insert_rows(session, NotificationStatusChange, changes)
    insert_rows(session, Decision, log)
    return created


def create_notification(*, session: Session, notification: Notification, reason: str) -> bool:
    """Insert ``notification`` with its ``send`` decision, unless its idempotency key exists.

    Returns:
        ``True`` when inserted; ``False`` when a notification with the same key already exists
        (nothing is written then).
    """
    if existing_idempotency_keys(session=session, keys=[notification.idempotency_key]):
        return False
    session.add(notification)
    session.flush()
    record_send(session=session, notification=notification, reason=reason)
    return True


def existing_idempotency_keys(*, session: Session, keys: Sequence[str]) -> set[str]:
    """Those of ``keys`` that a notification already has (one query for a whole batch)."""
    if not keys:
        return set()
    query = select(Notification.idempotency_key).where(
        col(Notification.idempotency_key).in_(list(keys))
    )
    return set(session.exec(query).all())


def record_send(*, session: Session, notification: Notification, reason: str) -> None:
    """Add the ``pending`` status entry and the ``send`` decision of a just-inserted
    ``notification`` (it must have its id: flush first)."""
    assert notification.id is not None
    session.add(
        NotificationStatusChange(
            notification_id=notification.id, status=NotificationStatus.PENDING, detail=reason
        )
    )
    record_decision(
        session=session,
        rule=notification.rule,
        outcome=DecisionOutcome.SEND,
        reason=reason,
        event_id=notification.event_id,
        contact_id=notification.contact_id,
        notification_id=notification.id,
    )


@functools.cache
def _transition_statement(
    from_statuses: tuple[NotificationStatus, ...],
    to_status: NotificationStatus,
    columns: tuple[str, ...],
    returning: tuple[str, ...],
) -> sa.Update:
    """The conditional ``UPDATE`` moving one notification (``:p_id``) from ``from_statuses`` to
    ``to_status`` at ``:p_moment``, setting ``columns`` (from ``:v_<column>``) and returning
    its id and ``returning``.

    Built once per shape: SQLAlchemy then finds its compiled form without rebuilding the
    statement and its cache key for every transition.
    """
    table = _NOTIFICATION
    values: dict[str, Any] = {
        name: sa.bindparam(f"v_{name}", type_=table.c[name].type) for name in columns
    }
    return (
        sa.update(table)
        .where(table.c.id == sa.bindparam("p_id", type_=table.c.id.type))
        .where(table.c.status.in_([s.value for s in from_statuses]))
        .values(
            status=to_status.value,
            updated_at=sa.bindparam("p_moment", type_=table.c.updated_at.type),
            **values,
        )
        .returning(table.c.id, *(table.c[name] for name in returning))
    )


def _claim_statement() -> Any:
    """The claim of :func:`claim_for_delivery` (``:p_id`` at ``:p_moment``), on the entity so
    the row comes back as an object."""
    moment = sa.bindparam("p_moment", type_=UTCDateTime())
    return (
        sa.update(Notification)
        .where(col(Notification.id) == sa.bindparam("p_id", type_=_NOTIFICATION.c.id.type))
        .where(col(Notification.status).in_([s.value for s in CLAIMABLE]))
        .where(
            sa.or_(
                col(Notification.next_attempt_at).is_(None),
                col(Notification.next_attempt_at) <= moment,
            )
        )
        .values(
            status=NotificationStatus.SENDING.value,
            updated_at=moment,
            attempts=Notification.attempts + 1,
            # The first claim starts the dead-letter age clock (see DeliveryService).
            first_attempt_at=sa.func.coalesce(Notification.first_attempt_at, moment),
        )
        .returning(Notification)
        # The returned row refreshes any copy of it in the session (populate_existing), so
        # the session needs no evaluation of the statement against the objects it holds.
        .execution_options(populate_existing=True, synchronize_session=False)
    )


#: The claim, built once (see :func:`_transition_statement`).
_CLAIM = _claim_statement()
#: :func:`store_message`'s ``UPDATE``, built once.
_STORE_MESSAGE = (
    sa.update(_NOTIFICATION)
    .where(_NOTIFICATION.c.id == sa.bindparam("p_id", type_=_NOTIFICATION.c.id.type))
    .values(
        message=sa.bindparam("v_message", type_=_NOTIFICATION.c.message.type),
        message_id=sa.bindparam("v_message_id", type_=_NOTIFICATION.c.message_id.type),
        subject=sa.bindparam("v_subject", type_=_NOTIFICATION.c.subject.type),
        language=sa.bindparam("v_language", type_=_NOTIFICATION.c.language.type),
    )
)


def _record_change(
    session: Session,
    notification_id: int,
    status: NotificationStatus,
    detail: str | None,
    moment: datetime,
) -> None:
    values = {"notification_id": notification_id, "status": status, "detail": detail, "at": moment}
    insert_rows(session, NotificationStatusChange, [new_row(NotificationStatusChange, values)])


def _transition(session: Session, notification_id: int, **move: Any) -> bool:
    """:func:`_move` (the same arguments): whether the notification moved."""
    return _move(session, notification_id, **move) is not None


def _move(
    session: Session,
    notification_id: int,
    *,
    from_statuses: Sequence[NotificationStatus],
    to_status: NotificationStatus,
    detail: str | None,
    values: dict[str, Any] | None = None,
    extra_where: Any = None,
    returning: tuple[str, ...] = (),
) -> sa.Row[Any] | None:
    """Move one notification from ``from_statuses`` to ``to_status`` with one conditional
    ``UPDATE`` and record the change.

    Returns:
        Its id and ``returning`` columns as the ``UPDATE`` left them, or ``None`` when it was
        in another status (nothing is written then).
    """
    moment = now()
    values = values or {}
    stmt = _transition_statement(tuple(from_statuses), to_status, tuple(values), returning)
    if extra_where is not None:
        stmt = stmt.where(extra_where)
    params = {"p_id": notification_id, "p_moment": moment}
    params.update((f"v_{name}", value) for name, value in values.items())
    row = session.execute(stmt, params).first()
    if row is None:
        return None
    _record_change(session, notification_id, to_status, detail, moment)
    return row


def claim_for_delivery(*, session: Session, notification_id: int) -> Notification | None:
    """Claim a notification for one delivery attempt.

    One conditional ``UPDATE ... RETURNING`` both claims the row and reads it.

    Returns:
        The claimed row (status ``sending``, attempts incremented, ``first_attempt_at`` set
        if it was not), or ``None`` when it is already sent, failed, being sent by another
        worker, or not yet due.
    """
    moment = now()
    row: Notification | None = (
        session.execute(_CLAIM, {"p_id": notification_id, "p_moment": moment}).scalars().first()
    )
    if row is None:
        return None
    _record_change(session, notification_id, NotificationStatus.SENDING, None, moment)
    return row


def store_message(
    *,
    session: Session,
    notification_id: int,
    message: str,
    message_id: str,
    subject: str,
    language: str,
) -> None:
    """Keep the rendered message of a claimed notification: every attempt sends it as is."""
    session.execute(
        _STORE_MESSAGE,
        {
            "p_id": notification_id,
            "v_message": message,
            "v_message_id": message_id,
            "v_subject": subject,
            "v_language": language,
        },
    )


def store_context(*, session: Session, notification_id: int, context: dict[str, Any]) -> None:
    """Replace a notification's template data (fetch steps add what they fetched)."""
    session.execute(
        sa.update(_NOTIFICATION)
        .where(_NOTIFICATION.c.id == notification_id)
        .values(context=context)
    )


def still_claimed(*, session: Session, notification_id: int, attempts: int) -> bool:
    """Whether the claim that made attempt ``attempts`` still holds the notification (it is
    ``sending`` and nobody claimed it since, say after its lease ran out)."""
    status = session.execute(
        sa.select(_NOTIFICATION.c.status).where(
            _NOTIFICATION.c.id == notification_id, _NOTIFICATION.c.attempts == attempts
        )
    ).scalar()
    return status == NotificationStatus.SENDING.value


def mark_sent(
    *, session: Session, notification_id: int, esp: str, esp_message_id: str | None
) -> bool:
    """Move a ``sending`` notification to ``sent`` (and emit ``notification.sent``)."""
    moved = _move(
        session,
        notification_id,
        from_statuses=(NotificationStatus.SENDING,),
        to_status=NotificationStatus.SENT,
        detail=f"accepted by {esp}",
        values={"esp": esp, "esp_message_id": esp_message_id, "sent_at": now(), "last_error": None},
        returning=NOTIFICATION_EVENT_COLUMNS,  # what notification.sent reports, read by the UPDATE
    )
    if moved is None:
        return False
    emit_notification_event(
        session, notification_id, moved, LifecycleName.NOTIFICATION_SENT, esp=esp
    )
    return True


def pin_esp(*, session: Session, notification_id: int, esp: str) -> None:
    """Record that ``esp`` may have the notification's message (see ``esp/failover.py``)."""
    session.execute(
        sa.update(Notification)
        .where(Notification.id == notification_id)  # type: ignore[arg-type]
        .values(esp=esp)
    )


def mark_retrying(
    *, session: Session, notification_id: int, error: str, next_attempt_at: datetime
) -> bool:
    """Move a ``sending`` notification to ``retrying`` until ``next_attempt_at``."""
    return _transition(
        session,
        notification_id,
        from_statuses=(NotificationStatus.SENDING,),
        to_status=NotificationStatus.RETRYING,
        detail=error,
        values={"last_error": error, "next_attempt_at": next_attempt_at},
    )


def mark_deferred(
    *, session: Session, notification: Notification, verdict: Verdict, until: datetime
) -> bool:
    """Move a claimed (``sending``) notification to ``retrying`` until ``until``: a guard
    deferred it at delivery (quiet hours, for a send a gate held). The decision log records
    why, with the verdict's details."""
    assert notification.id is not None
    reason = f"deferred at delivery: {verdict.reason}"
    if not mark_retrying(
        session=session, notification_id=notification.id, error=reason, next_attempt_at=until
    ):
        return False
    log_decisions(
        session,
        [notification],
        outcome=DecisionOutcome.DEFER,
        reason=reason,
        details=verdict.details,
    )
    return True


def mark_failed(*, session: Session, notification_id: int, error: str) -> bool:
    """Move a ``sending`` notification to ``failed`` for good."""
    return _transition(
        session,
        notification_id,
        from_statuses=(NotificationStatus.SENDING,),
        to_status=NotificationStatus.FAILED,
        detail=error,
        values={"last_error": error},
    )


def mark_cancelled(
    *,
    session: Session,
    notification: Notification,
    reason: str,
    details: dict[str, Any] | None = None,
) -> bool:
    """Move a claimed (``sending``) notification to ``cancelled``: the guards said no at
    delivery time. The decision log records why, with ``details``."""
    assert notification.id is not None
    if not _transition(
        session,
        notification.id,
        from_statuses=(NotificationStatus.SENDING,),
        to_status=NotificationStatus.CANCELLED,
        detail=reason,
        values={"last_error": None},
    ):
        return False
    log_decisions(
        session,
        [notification],
        outcome=DecisionOutcome.SKIP,
        reason=f"cancelled at delivery: {reason}",
        details=details,
    )
    return True


class NotificationFacts(Protocol):
    """What a decision-log entry about a notification needs (a row, or a moved item)."""

    @property
    def id(self) -> int | None: ...
    @property
    def rule(self) -> str: ...
    @property
    def event_id(self) -> int | None: ...
    @property
    def contact_id(self) -> int | None: ...


def log_decisions(
    session: Session,
    notifications: Sequence[NotificationFacts],
    *,
    outcome: DecisionOutcome,
    reason: str,
    details: dict[str, Any] | None,
    moment: datetime | None = None,
) -> None:
    """One decision-log entry about each of ``notifications`` (in the caller's transaction)."""
    at = moment or now()
    insert_rows(
        session,
        Decision,
        [
            new_row(
                Decision,
                {
                    "rule": row.rule,
                    "outcome": outcome.value,
                    "reason": reason,
                    "event_id": row.event_id,
                    "contact_id": row.contact_id,
                    "notification_id": row.id,
                    "details": details,
                    "at": at,
                },
            )
            for row in notifications
        ],
    )


def mark_queued(*, session: Session, notification_ids: Sequence[int]) -> None:
    """Record that notifications were handed to the broker (just now).

    ``pending`` and ``queued`` rows become ``queued``; ``retrying`` rows keep their status.
    Either way ``updated_at`` moves on, so the relay leaves them alone for a while.
    """
    if not notification_ids:
        return
    ids = list(notification_ids)
    moment = now()
    session.execute(
        sa.update(Notification)
        .where(col(Notification.id).in_(ids))
        .where(
            col(Notification.status).in_(
                [NotificationStatus.PENDING.value, NotificationStatus.QUEUED.value]
            )
        )
        .values(status=NotificationStatus.QUEUED.value, updated_at=moment)
    )
    session.execute(
        sa.update(Notification)
        .where(col(Notification.id).in_(ids))
        .where(col(Notification.status) == NotificationStatus.RETRYING.value)
        .values(updated_at=moment)
    )


def find_stranded(
    *, session: Session, pending_grace: timedelta, lease: timedelta, limit: int = 1000
) -> list[int]:
    """Ids of notifications that should be on the broker but may not be.

    - ``pending`` for longer than ``pending_grace`` (crash between commit and enqueue);
    - ``retrying``, due for longer than ``pending_grace`` and not requeued within it (the
      delayed message was lost, or went to an in-process broker that is gone);
    - ``queued`` for longer than ``lease`` (the broker lost the message);
    - ``sending`` for longer than ``lease`` (a worker died mid-send): moved back to
      ``retrying`` here, so the next claim retries it.
    """
    moment = now()
    stale_sending = session.exec(
        select(Notification.id)
        .where(col(Notification.status) == NotificationStatus.SENDING.value)
        .where(col(Notification.updated_at) < moment - lease)
        .limit(limit)
    ).all()
    for notification_id in stale_sending:
        assert notification_id is not None
        _transition(
            session,
            notification_id,
            from_statuses=(NotificationStatus.SENDING,),
            to_status=NotificationStatus.RETRYING,
            detail="delivery attempt did not finish within the lease; retrying",
            values={"next_attempt_at": moment - pending_grace},
            extra_where=col(Notification.updated_at) < moment - lease,
        )
    session.flush()
    rows = session.exec(
        select(Notification.id)
        .where(
            sa.or_(
                sa.and_(
                    col(Notification.status) == NotificationStatus.PENDING.value,
                    col(Notification.created_at) < moment - pending_grace,
                ),
                sa.and_(
                    col(Notification.status) == NotificationStatus.QUEUED.value,
                    col(Notification.updated_at) < moment - lease,
                ),
                sa.and_(
                    col(Notification.status) == NotificationStatus.RETRYING.value,
                    sa.or_(
                        col(Notification.id).in_(list(stale_sending) or [-1]),
                        sa.and_(
                            sa.or_(
                                col(Notification.next_attempt_at).is_(None),
                                col(Notification.next_attempt_at) < moment - pending_grace,
                            ),
                            col(Notification.updated_at) < moment - pending_grace,
                        ),
                    ),
                ),
            )
        )
        .order_by(col(Notification.id))
        .limit(limit)
    ).all()
    return [r for r in rows if r is not None]


def find_undelivered(*, session: Session, limit: int = 10000) -> list[int]:
    """Ids of every notification not yet finished (used at start-up of the embedded broker)."""
    rows = session.exec(
        select(Notification.id)
        .where(col(Notification.status).in_([s.value for s in CLAIMABLE]))
        .order_by(col(Notification.id))
        .limit(limit)
    ).all()
    return [r for r in rows if r is not None]


#: Statuses a notification can be replayed from (``crm-notify outbox retry``): only sends that
#: were given up on. ``cancelled`` ones were refused by consent or suppression: never replayed.
REPLAYABLE = (NotificationStatus.FAILED,)


def list_notifications(
    *,
    session: Session,
    status: NotificationStatus | str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[Notification]:
    """Notifications, the most recently changed first (``updated_at``, then id).

    Parameters:
        status: only those in this status.
        rule: only this rule's.
        since: only those changed at or after this moment.
        limit: at most this many.
    """
    query = select(Notification)
    if status is not None:
        query = query.where(col(Notification.status) == NotificationStatus(status).value)
    if rule is not None:
        query = query.where(col(Notification.rule) == rule)
    if since is not None:
        query = query.where(col(Notification.updated_at) >= since)
    query = query.order_by(col(Notification.updated_at).desc(), col(Notification.id).desc())
    return list(session.exec(query.limit(limit)).all())


def failed_ids(*, session: Session, rule: str | None = None) -> list[int]:
    """Ids of every ``failed`` notification (of ``rule`` when given), oldest first."""
    query = select(Notification.id).where(
        col(Notification.status) == NotificationStatus.FAILED.value
    )
    if rule is not None:
        query = query.where(col(Notification.rule) == rule)
    rows = session.exec(query.order_by(col(Notification.id))).all()
    return [r for r in rows if r is not None]


@dataclass
class ReplayResult:
    """What :func:`replay_failed` did: the ids it moved back to ``pending``, and those it left
    alone with their status (``None``: no such notification)."""

    replayed: list[int]
    refused: dict[int, str | None]


def replay_failed(*, session: Session, notification_ids: Sequence[int], by: str) -> ReplayResult:
    """Move ``failed`` notifications back to ``pending`` for a new round of delivery.

    Each is reset as if never attempted (``attempts`` 0; ``first_attempt_at``,
    ``next_attempt_at`` and ``last_error`` cleared) and keeps its stored message (the same
    bytes and Message-ID) and its ESP pin; the status history records ``replayed by <by>``.
    Notifications in any other status are left alone (one conditional ``UPDATE`` each, so a
    concurrent change cannot be overwritten). The caller commits, then hands the replayed ids
    to delivery, where the guards run again.

    Parameters:
        notification_ids: the notifications (repeats count once).
        by: who replays them (recorded).

    Returns:
        The replayed ids in call order and the refused ones with their status.
    """
    result = ReplayResult(replayed=[], refused={})
    for notification_id in dict.fromkeys(notification_ids):
        replayed = _transition(
            session,
            notification_id,
            from_statuses=REPLAYABLE,
            to_status=NotificationStatus.PENDING,
            detail=f"replayed by {by}",
            values={
                "attempts": 0,
                "first_attempt_at": None,
                "next_attempt_at": None,
                "last_error": None,
            },
        )
        if replayed:
            result.replayed.append(notification_id)
            continue
        status = session.exec(
            select(Notification.status).where(col(Notification.id) == notification_id)
        ).first()
        result.refused[notification_id] = None if status is None else str(status)
    return result


#: Columns :func:`notification_json` leaves out: the rendered MIME message and the template
#: data (large, and personal).
JSON_OMITTED = frozenset({"message", "context"})


def notification_json(row: Notification) -> dict[str, Any]:
    """A notification as the API and ``outbox list --json`` show it: every column but
    :data:`JSON_OMITTED`, dates in ISO 8601."""
    data: dict[str, Any] = {}
    for name in Notification.model_fields:
        if name in JSON_OMITTED:
            continue
        value = getattr(row, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, NotificationStatus):
            value = value.value
        data[name] = value
    return data
