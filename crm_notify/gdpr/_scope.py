"""Which rows hold a contact's personal data: shared by export and erasure.

Beyond rows linked by ``contact_id``, a person's data can sit in rows not linked to them:
events stored before they were identified (their ``userId`` or ``anonymousId``, no contact),
events and contacts that mention their address (an address moved from an anonymous contact
keeps it in that contact's traits and events), and notifications sent to the address.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, and_, col, or_, select
from sqlmodel.sql.expression import SelectOfScalar

from crm_notify._json import jsonable
from crm_notify.commerce.models import Cart, Order
from crm_notify.contacts.models import Contact
from crm_notify.events.models import Event
from crm_notify.outbox.models import Notification


def _needles(address: str) -> list[str]:
    """The address as stored in JSON text, lower-cased, escaped for ``LIKE``: plain, and as
    ``json.dumps`` writes non-ASCII characters (``\\u00e9``)."""
    forms = {address.lower(), json.dumps(address.lower())[1:-1]}
    return [
        "%" + f.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        for f in sorted(forms)
    ]


def mentions(column: Any, address: str | None) -> Any:
    """A condition: ``column`` (JSON or text) mentions ``address`` in any case."""
    if not address:
        return sa.false()
    text = sa.func.lower(sa.cast(column, sa.Text))
    return or_(*(text.like(needle, escape="\\") for needle in _needles(address)))


def event_ids(contact: Contact) -> SelectOfScalar[int | None]:
    """Ids of the events holding ``contact``'s data: theirs, unlinked ones with their
    ``userId`` or ``anonymousId``, and any that mention their address."""
    unlinked: list[Any] = []
    if contact.user_id:
        unlinked.append(Event.user_id == contact.user_id)
    if contact.anonymous_id:
        unlinked.append(Event.anonymous_id == contact.anonymous_id)
    conditions: list[Any] = [
        Event.contact_id == contact.id,
        mentions(Event.payload, contact.email),
    ]
    if unlinked:
        conditions.append(and_(col(Event.contact_id).is_(None), or_(*unlinked)))
    return select(col(Event.id)).where(or_(*conditions))


def notification_ids(contact: Contact) -> SelectOfScalar[int | None]:
    """Ids of the notifications for ``contact`` or to their address."""
    conditions: list[Any] = [Notification.contact_id == contact.id]
    if contact.email:
        conditions.append(sa.func.lower(Notification.to_address) == contact.email.lower())
    return select(col(Notification.id)).where(or_(*conditions))


def commerce_keys(session: Session, event_ids: Sequence[int]) -> tuple[set[str], set[str]]:
    """The order and cart ids (``properties.order_id`` / ``cart_id``) the events name."""
    orders: set[str] = set()
    carts: set[str] = set()
    for payload in session.exec(select(Event.payload).where(col(Event.id).in_(event_ids))):
        properties = (payload or {}).get("properties") or {}
        for key, found in (("order_id", orders), ("cart_id", carts)):
            value = properties.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                found.add(str(value))
    return orders, carts


def orders_of(contact: Contact, order_keys: set[str]) -> Any:
    """A condition on ``order``: the contact's orders, unlinked ones their events name (a guest
    checkout before sign-up), and any that mention their address."""
    return or_(
        Order.contact_id == contact.id,
        and_(col(Order.contact_id).is_(None), col(Order.order_id).in_(sorted(order_keys))),
        mentions(Order.properties, contact.email),
    )


def carts_of(contact: Contact, cart_keys: set[str]) -> Any:
    """A condition on ``cart``, as :func:`orders_of`."""
    return or_(
        Cart.contact_id == contact.id,
        and_(col(Cart.contact_id).is_(None), col(Cart.cart_id).in_(sorted(cart_keys))),
        mentions(Cart.products, contact.email),
    )


def other_contacts_mentioning(contact: Contact) -> SelectOfScalar[Contact]:
    """Other contacts whose traits mention ``contact``'s address."""
    return select(Contact).where(Contact.id != contact.id, mentions(Contact.traits, contact.email))


def row_data(row: SQLModel) -> dict[str, Any]:
    """Every column of ``row`` as JSON-able data (timestamps in ISO 8601)."""
    table = sa.inspect(type(row)).local_table
    return {column.name: jsonable(getattr(row, column.name)) for column in table.columns}


def scrub(value: Any, address: str) -> Any:
    """``value`` without any string that mentions ``address`` (any case), recursively."""
    lowered = address.lower()
    if isinstance(value, str):
        return None if lowered in value.lower() else value
    if isinstance(value, dict):
        return {k: scrub(v, address) for k, v in value.items() if not _hit(v, lowered)}
    if isinstance(value, list):
        return [scrub(v, address) for v in value if not _hit(v, lowered)]
    return value


def _hit(value: Any, lowered: str) -> bool:
    return isinstance(value, str) and lowered in value.lower()


def ids(values: Iterable[int | None]) -> list[int]:
    """The non-null ids, sorted."""
    return sorted(v for v in values if v is not None)
