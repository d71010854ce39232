"""The plain data that conditions and templates see: ``event``, ``contact``, ``order``, ``cart``."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from crm_notify.commerce.models import Cart, Order
from crm_notify.commerce.state import cart_data, order_data
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import contact_data
from crm_notify.events.models import Event


def stored_event_data(event: Event) -> dict[str, Any]:
    """A stored event as plain data, in the same shape as a live call's."""
    payload = event.payload or {}
    return {
        "type": event.type,
        "event": payload.get("event"),
        "name": payload.get("name"),
        "message_id": event.message_id,
        "user_id": event.user_id,
        "anonymous_id": event.anonymous_id,
        "properties": payload.get("properties") or {},
        "traits": payload.get("traits") or {},
        "context": payload.get("context") or {},
        "timestamp": event.timestamp.isoformat(),
    }


def current_context(
    session: Session,
    *,
    event: dict[str, Any] | None,
    contact: Contact | None,
    cart_id: str | None = None,
) -> dict[str, Any]:
    """Build the context from current state: the order and cart named by the event (or
    ``cart_id``) as they are now."""
    properties = (event or {}).get("properties") or {}
    order = cart = None
    order_id = properties.get("order_id")
    if isinstance(order_id, (str, int)) and not isinstance(order_id, bool):
        order = session.exec(select(Order).where(Order.order_id == str(order_id))).first()
    wanted_cart = cart_id or properties.get("cart_id")
    if isinstance(wanted_cart, (str, int)) and not isinstance(wanted_cart, bool):
        cart = session.exec(select(Cart).where(Cart.cart_id == str(wanted_cart))).first()
    return {
        "event": event,
        "contact": contact_data(contact) if contact else None,
        "order": order_data(order),
        "cart": cart_data(cart),
    }
