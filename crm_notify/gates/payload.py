"""What the integration sees: the gate notification, the items and their URIs.

Every URI is absolute (under the service's public base URL) and carries its own
``?token=`` (:mod:`crm_notify.gates.tokens`)::

    {base}/v1/gates/{gateId}/items?token=...                 download the items (batch)
    {base}/v1/gates/{gateId}/finish?token=...                release the rest
    {base}/v1/gates/{gateId}/items/{id}/cancel?token=...     reject one item (batch)
    {base}/v1/gates/{gateId}/items/{id}/reject?token=...     reject one item (single send)

The gate notification (``type`` ``gate.opened``) names the gate, its rule and send, its
deadline and timeout policy, the merged ``actions``, the number of items and the finish URI;
a batch's items are downloaded from ``itemDownloadUri``, a single send's are inline. An item
is ``{"id", "contactId", "email", "data", "cancelUri" | "rejectUri"}``: ``data`` is the
template data the notification renders with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify._json import jsonable
from crm_notify.gates.model import Gate, GateConfig
from crm_notify.gates.tokens import GateAction, gate_token
from crm_notify.outbox.models import Notification, NotificationStatus

#: ``type`` of the gate notification.
GATE_OPENED = "gate.opened"
#: Path prefix of the gate routes.
GATES_PATH = "/v1/gates"


def gate_uri(
    base_url: str,
    secret_key: bytes,
    *,
    public_id: str,
    action: GateAction,
    item_id: int | None = None,
) -> str:
    """The absolute URI of one gate action, with its token.

    Parameters:
        base_url: the service's public base URL.
        secret_key: the key that signs the token.
        public_id: the gate.
        action: what the URI does; ``cancel`` and ``reject`` need ``item_id``.
        item_id: the item (notification id) of an item URI.
    """
    token = gate_token(secret_key, public_id=public_id, action=action, item_id=item_id)
    base = f"{base_url.rstrip('/')}{GATES_PATH}/{public_id}"
    if action in (GateAction.CANCEL, GateAction.REJECT):
        assert item_id is not None, "an item URI needs the item"
        path = f"{base}/items/{item_id}/{action.value}"
    elif action is GateAction.ITEMS:
        path = f"{base}/items"
    else:
        path = f"{base}/{action.value}"
    return f"{path}?token={token}"


def item_json(
    row: Notification, *, public_id: str, batch: bool, base_url: str, secret_key: bytes
) -> dict[str, Any]:
    """One held notification of gate ``public_id`` as the integration sees it (with
    ``cancelUri`` in a batch, ``rejectUri`` for a single send)."""
    assert row.id is not None
    action = GateAction.CANCEL if batch else GateAction.REJECT
    uri = gate_uri(base_url, secret_key, public_id=public_id, action=action, item_id=row.id)
    return {
        "id": str(row.id),
        "contactId": row.contact_id,
        "channel": row.channel,
        # a webhook action's row holds its URL there, not an address
        "email": row.to_address if row.channel == "email" else None,
        "data": jsonable(row.context),
        "cancelUri" if batch else "rejectUri": uri,
    }


def held_items(
    session: Session, gate: Gate, *, after: int | None = None, limit: int | None = None
) -> list[Notification]:
    """The notifications ``gate`` still holds (status ``gated``), by id.

    Parameters:
        after: only those with a larger id (paging).
        limit: at most this many.
    """
    assert gate.id is not None
    query = (
        select(Notification)
        .where(col(Notification.gate_id) == gate.id)
        .where(col(Notification.status) == NotificationStatus.GATED.value)
        .order_by(col(Notification.id))
    )
    if after is not None:
        query = query.where(col(Notification.id) > after)
    if limit is not None:
        query = query.limit(limit)
    return list(session.exec(query))


def held_count(session: Session, gate: Gate) -> int:
    """How many notifications ``gate`` still holds."""
    query = (
        sa.select(sa.func.count())
        .select_from(Notification)
        .where(col(Notification.gate_id) == gate.id)
        .where(col(Notification.status) == NotificationStatus.GATED.value)
    )
    return int(session.execute(query).scalar_one())


def gate_payload(
    gate: Gate,
    config: GateConfig,
    *,
    items: Sequence[Notification],
    item_count: int,
    base_url: str,
    secret_key: bytes,
) -> dict[str, Any]:
    """The body of the gate notification.

    Parameters:
        gate: the gate.
        config: its configuration (``gate.config`` read back).
        items: its held items, for a single send (inline); ignored for a batch.
        item_count: how many items it holds.
        base_url: the service's public base URL.
        secret_key: the key that signs the URIs' tokens.
    """
    public_id = gate.public_id
    payload: dict[str, Any] = {
        "type": GATE_OPENED,
        "gateId": gate.public_id,
        "rule": gate.rule,
        "send": gate.send_name,
        "batch": gate.batch,
        "deadline": gate.deadline.isoformat(),
        "onTimeout": config.on_timeout.value,
        "actions": [jsonable(action) for action in config.actions],
        "itemCount": item_count,
        "finishUri": gate_uri(base_url, secret_key, public_id=public_id, action=GateAction.FINISH),
    }
    if gate.batch:
        payload["itemDownloadUri"] = gate_uri(
            base_url, secret_key, public_id=public_id, action=GateAction.ITEMS
        )
    else:
        payload["items"] = [
            item_json(
                row, public_id=public_id, batch=False, base_url=base_url, secret_key=secret_key
            )
            for row in items
        ]
    return payload
