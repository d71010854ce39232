"""Withdrawing held sends that a later event makes pointless (a rule's ``cancel_on``).

A purchase during the hold must stop the abandoned-cart mail the gate still holds, as it stops
the rule's pending steps: :func:`withdraw_held` cancels the ``gated`` items of the rules named,
for the cart the event names (items made by that cart's timers), or else for the contact, in the
intake's transaction. Each is recorded in its status history and in the decision log; no
follow-up is made (the integration did not reject them), and the gate's finish later releases
only what is left.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.gates._rows import move_items
from crm_notify.outbox.models import DecisionOutcome, Notification, NotificationStatus
from crm_notify.outbox.repository import log_decisions
from crm_notify.timers.models import Timer


def withdraw_held(
    session: Session,
    *,
    rules: Sequence[str],
    reason: str,
    cart_id: str | None = None,
    contact_id: int | None = None,
    only_without_entity: bool = False,
) -> list[int]:
    """Cancel the held items of ``rules`` for one cart, or for one contact.

    Parameters:
        rules: the names of the rules whose ``cancel_on`` names the event.
        reason: why, as the decision log shows it (``cancelled by Order Completed (m-1)``).
        cart_id: the cart the event names: its timers' items are cancelled.
        contact_id: the contact: their items are cancelled (with ``only_without_entity``,
            only those made for no cart, as for the rule's pending steps).

    Returns:
        The ids of the cancelled items.
    """
    if not rules or (cart_id is None and contact_id is None):
        return []
    query = (
        select(Notification.id)
        .where(col(Notification.status) == NotificationStatus.GATED.value)
        .where(col(Notification.rule).in_(list(rules)))
    )
    made_by = select(Timer.id)
    if cart_id is not None:
        made_by = made_by.where(col(Timer.entity_type) == "cart", col(Timer.entity_id) == cart_id)
        query = query.where(col(Notification.timer_id).in_(made_by))
    else:
        query = query.where(col(Notification.contact_id) == contact_id)
        if only_without_entity:
            with_entity = made_by.where(col(Timer.entity_id).is_not(None))
            timer_id = col(Notification.timer_id)
            query = query.where(sa.or_(timer_id.is_(None), timer_id.not_in(with_entity)))
    ids = [row_id for row_id in session.exec(query).all() if row_id is not None]
    if not ids:
        return []
    moment = now()
    moved = move_items(
        session,
        gate_id=None,
        to_status=NotificationStatus.CANCELLED,
        detail=f"withdrawn from its gate: {reason}",
        moment=moment,
        ids=ids,
    )
    log_decisions(
        session,
        moved,
        outcome=DecisionOutcome.SKIP,
        reason=f"withdrawn from its gate: {reason}",
        details={"cancel_on": reason},
        moment=moment,
    )
    return [row.id for row in moved]
