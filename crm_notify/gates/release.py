"""Deciding a gate's items: release them, cancel one, or apply the timeout policy.

Each function works in the caller's session (and transaction) on a gate the caller has
locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has one writer at a time), writes the
status history and the decision log, and returns the ids of the notifications to hand to the
broker once the transaction has committed:

- :func:`release` (the finish URI): attached data goes to ``gate_data``, every item still
  ``gated`` becomes ``pending``, the gate ``finished``;
- :func:`cancel_item` (a cancel or reject URI): that item (and the rest of its firing) becomes
  ``cancelled``, the reason in the decision log, followed up as ``on_rejected`` says;
- :func:`time_out` (the gate runner, at the deadline): the gate ``timed_out``; the items still
  ``gated`` become ``pending`` (``on_timeout: release``) or ``cancelled`` (``drop``, followed
  up as ``on_timed_out`` says).

Follow-ups of rejected and dropped items (another template, or a retry later) are in
:mod:`crm_notify.gates.follow_up`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.actions.rows import firing_key
from crm_notify.clock import now
from crm_notify.errors import GateClosedError
from crm_notify.gates._rows import NOTIFICATION, move_items
from crm_notify.gates.follow_up import after_rejected, after_timed_out
from crm_notify.gates.model import Gate, GateDelivery, GateStatus, OnTimeout, gate_config_from_json
from crm_notify.outbox.models import DecisionOutcome, Notification, NotificationStatus
from crm_notify.outbox.repository import log_decisions

logger = logging.getLogger(__name__)

#: Characters of a rejection reason kept.
MAX_REASON_CHARS = 1000


@dataclass
class CancelResult:
    """What :func:`cancel_item` did.

    Parameters:
        changed: the item was ``gated`` and is now ``cancelled``.
        status: the item's status now (``None``: the gate has no such item).
        notification_ids: follow-ups to enqueue.
    """

    changed: bool
    status: str | None
    notification_ids: list[int] = field(default_factory=list)


def release(
    session: Session, gate: Gate, items_data: Mapping[int, Mapping[str, Any]] | None = None
) -> list[int]:
    """Finish ``gate``: store the data attached to items, release every item still held.

    Parameters:
        session: the caller's session; the gate row is locked by the caller.
        gate: an open gate.
        items_data: template data per notification id, stored in ``gate_data`` (rendered
            under ``gate``); ids of items no longer held are ignored.

    Raises:
        GateClosedError: the gate is not open (nothing changed).

    Returns:
        The released notification ids (now ``pending``), to enqueue after the commit.
    """
    moment = now()
    _close(session, gate, GateStatus.FINISHED)
    if items_data:  # one statement, executed for every item
        session.execute(
            sa.update(NOTIFICATION)
            .where(NOTIFICATION.c.id == sa.bindparam("item_id"))
            .where(NOTIFICATION.c.gate_id == gate.id)
            .where(NOTIFICATION.c.status == NotificationStatus.GATED.value)
            .values(gate_data=sa.bindparam("item_data", type_=NOTIFICATION.c.gate_data.type)),
            [{"item_id": key, "item_data": dict(data)} for key, data in items_data.items()],
        )
    moved = move_items(
        session,
        gate_id=gate.id,
        to_status=NotificationStatus.PENDING,
        detail=f"released by gate {gate.public_id}",
        moment=moment,
    )
    return [row.id for row in moved]


def _same_firing(session: Session, gate: Gate, notification_id: int) -> list[int]:
    """``notification_id`` and the other held rows of its firing (a rule's email and its
    webhook actions): rejecting a contact rejects all that one firing would send them. The
    siblings are looked up among the contact's rows (indexed), not the whole gate's."""
    item = session.exec(
        select(Notification.idempotency_key, Notification.contact_id)
        .where(col(Notification.id) == notification_id)
        .where(col(Notification.gate_id) == gate.id)
    ).first()
    if item is None:
        return [notification_id]
    key, contact_id = item
    rows = session.exec(
        select(Notification.id, Notification.idempotency_key)
        .where(col(Notification.contact_id) == contact_id)
        .where(col(Notification.gate_id) == gate.id)
        .where(col(Notification.status) == NotificationStatus.GATED.value)
    ).all()
    firing = firing_key(key)
    siblings = {row_id for row_id, row_key in rows if firing_key(row_key) == firing}
    return sorted({notification_id, *(i for i in siblings if i is not None)})


def cancel_item(
    session: Session, gate: Gate, notification_id: int, *, reason: str, action: str = "reject"
) -> CancelResult:
    """Cancel one held item of ``gate`` (idempotent: a cancelled item stays as it is).

    Parameters:
        session: the caller's session; the gate row is locked by the caller.
        gate: an open gate.
        notification_id: the item.
        reason: why, as the integration said (kept in the decision log, cut to
            :data:`MAX_REASON_CHARS`).
        action: the URI used (``cancel`` or ``reject``), recorded in the entry's details.

    Raises:
        GateClosedError: the gate is not open (nothing changed).

    Returns:
        Whether it changed, the item's status, and the follow-up to enqueue.
    """
    if gate.status != GateStatus.OPEN:
        raise GateClosedError(gate.public_id, gate.status)
    why = clean_reason(reason)
    moment = now()
    moved = move_items(
        session,
        gate_id=gate.id,
        to_status=NotificationStatus.CANCELLED,
        detail=f"rejected by gate {gate.public_id}: {why}",
        moment=moment,
        ids=_same_firing(session, gate, notification_id),
    )
    if not moved:
        status = session.exec(
            select(Notification.status)
            .where(col(Notification.id) == notification_id)
            .where(col(Notification.gate_id) == gate.id)
        ).first()
        return CancelResult(changed=False, status=None if status is None else str(status))
    log_decisions(
        session,
        moved,
        outcome=DecisionOutcome.SKIP,
        reason=f"rejected by the gate: {why}",
        details={"gate": gate.public_id, "action": action},
        moment=moment,
    )
    follow_ups = after_rejected(
        session, gate, gate_config_from_json(gate.config), [row.id for row in moved]
    )
    return CancelResult(
        changed=True, status=NotificationStatus.CANCELLED.value, notification_ids=follow_ups
    )


def time_out(session: Session, gate: Gate) -> list[int]:
    """Apply ``gate``'s timeout policy: the gate ``timed_out``, its held items released or
    dropped (with the follow-up ``on_timed_out`` names). A delivery still ``pending`` becomes
    ``failed``; when the integration was never reached, nothing is released, whatever
    ``on_timeout`` says (they are dropped). The caller decides that the deadline has passed.

    Parameters:
        session: the caller's session; the gate row is locked by the caller.
        gate: an open gate.

    Raises:
        GateClosedError: the gate is not open (nothing changed).

    Returns:
        The notifications to enqueue: the released items, or the follow-ups.
    """
    config = gate_config_from_json(gate.config)
    moment = now()
    _close(session, gate, GateStatus.TIMED_OUT)
    reached = gate.delivery == GateDelivery.NOTIFIED
    if gate.delivery == GateDelivery.PENDING:
        gate.delivery = GateDelivery.FAILED
        gate.next_delivery_at = None
        gate.last_error = gate.last_error or "the deadline passed before the integration answered"
        session.add(gate)
    if not reached and config.on_timeout is OnTimeout.RELEASE:
        # Fail closed: nobody approved these sends, not even by letting the deadline pass.
        moved = move_items(
            session,
            gate_id=gate.id,
            to_status=NotificationStatus.CANCELLED,
            detail=f"gate {gate.public_id} timed out; the integration was never reached",
            moment=moment,
        )
        log_decisions(
            session,
            moved,
            outcome=DecisionOutcome.SKIP,
            reason="gate timed out: the integration was never reached, so nothing is released",
            details={"gate": gate.public_id, "delivery": gate.delivery},
            moment=moment,
        )
        logger.warning("gate %s timed out unreached: %d items dropped", gate.public_id, len(moved))
        return []
    if config.on_timeout is OnTimeout.RELEASE:
        moved = move_items(
            session,
            gate_id=gate.id,
            to_status=NotificationStatus.PENDING,
            detail=f"released: gate {gate.public_id} timed out (on_timeout: release)",
            moment=moment,
        )
        log_decisions(
            session,
            moved,
            outcome=DecisionOutcome.SEND,
            reason="gate timed out: released (on_timeout: release)",
            details={"gate": gate.public_id},
            moment=moment,
        )
        return [row.id for row in moved]
    moved = move_items(
        session,
        gate_id=gate.id,
        to_status=NotificationStatus.CANCELLED,
        detail=f"gate {gate.public_id} timed out (on_timeout: drop)",
        moment=moment,
    )
    log_decisions(
        session,
        moved,
        outcome=DecisionOutcome.SKIP,
        reason="gate timed out",
        details={"gate": gate.public_id, "on_timeout": "drop"},
        moment=moment,
    )
    return after_timed_out(session, gate, config, [row.id for row in moved]) if moved else []


def clean_reason(reason: str | None) -> str:
    """``reason`` on one line (control characters and runs of white space become one space),
    cut to :data:`MAX_REASON_CHARS`; ``"no reason given"`` when empty."""
    text = " ".join("".join(c if c.isprintable() else " " for c in reason or "").split())
    return text[:MAX_REASON_CHARS] or "no reason given"


def _close(session: Session, gate: Gate, status: GateStatus) -> None:
    """Move ``gate`` from ``open`` to ``status`` (a conditional ``UPDATE``)."""
    moment = now()
    result = session.execute(
        sa.update(Gate)
        .where(col(Gate.id) == gate.id)
        .where(col(Gate.status) == GateStatus.OPEN.value)
        .values(status=status.value, finished_at=moment)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(gate)
        raise GateClosedError(gate.public_id, gate.status)
    gate.status = status.value
    gate.finished_at = moment
