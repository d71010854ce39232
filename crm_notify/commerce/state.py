"""Keeping order and cart state from Segment ecommerce events.

Rows are read ``FOR UPDATE`` so concurrent events for one order or cart apply in turn. Intake
locks and loads every order and cart a batch names with one query each (:func:`preload_state`);
the events then find them in memory. Changes are written at the transaction's next flush.
Orders are keyed by ``properties.order_id`` on every event whose name starts with ``Order``.
The status is ``properties.status`` when given, otherwise implied by the event name
(:data:`IMPLIED_ORDER_STATUS`). Carts are keyed by ``properties.cart_id``. State changes only
when the event's own ``timestamp`` is not older than the state it would replace, so a late event
cannot roll an order back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from crm_notify.commerce.models import Cart, Order

#: Status an ``Order ...`` event implies when it carries no ``status`` property.
IMPLIED_ORDER_STATUS: dict[str, str] = {
    "Order Completed": "completed",
    "Order Cancelled": "cancelled",
    "Order Refunded": "refunded",
}

#: Cart events and what they do to the cart.
CART_EVENTS = frozenset(
    {"Product Added", "Product Removed", "Cart Viewed", "Checkout Started", "Order Completed"}
)

#: ``Session.info`` keys of the per-transaction caches filled by :func:`preload_state`.
_ORDERS, _CARTS = "crm_notify.orders", "crm_notify.carts"


@dataclass(frozen=True)
class OrderChange:
    """The result of applying an event to an order.

    Parameters:
        order: the order row after the event.
        old_status, new_status: the status before and after.
        applied: ``False`` when the event was older than the stored state and was ignored.
    """

    order: Order
    old_status: str | None
    new_status: str | None
    applied: bool

    @property
    def status_changed(self) -> bool:
        """Whether this event moved the order to a different status."""
        return self.applied and self.new_status is not None and self.old_status != self.new_status


def _as_str(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int, float)):
        text = str(value).strip()
        return text[:255] or None
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, str)):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            return None
        return number if math.isfinite(number) else None
    return None


def order_key(event_name: str, properties: dict[str, Any]) -> str | None:
    """The ``order_id`` an event updates; ``None`` when it is not an ``Order ...`` event or
    names no order."""
    if not event_name.startswith("Order "):
        return None
    return _as_str(properties.get("order_id"))


def cart_key(event_name: str, properties: dict[str, Any]) -> str | None:
    """The ``cart_id`` a cart event (see :data:`CART_EVENTS`) updates, or ``None``."""
    if event_name not in CART_EVENTS:
        return None
    return _as_str(properties.get("cart_id"))


def preload_state(session: Session, *, order_ids: Iterable[str], cart_ids: Iterable[str]) -> None:
    """Lock and load the orders and carts a batch names, with one query per table.

    :func:`apply_order_event` and :func:`apply_cart_event` then take these rows, and the ones
    they create, from memory instead of one ``SELECT ... FOR UPDATE`` each. Rows are locked in
    key order, so two batches naming the same orders wait for each other rather than deadlock.
    The cache lives until :func:`forget_state` (call it before the transaction ends).
    """
    for name, model, attribute, keys in (
        (_ORDERS, Order, "order_id", set(order_ids)),
        (_CARTS, Cart, "cart_id", set(cart_ids)),
    ):
        cache: dict[str, Any] = dict.fromkeys(keys)
        if keys:
            column = col(getattr(model, attribute))
            query = select(model).where(column.in_(sorted(keys))).order_by(column)
            for row in session.exec(query.with_for_update()):
                cache[getattr(row, attribute)] = row
        session.info[name] = cache


def forget_state(session: Session) -> None:
    """Drop the caches of :func:`preload_state`."""
    session.info.pop(_ORDERS, None)
    session.info.pop(_CARTS, None)


def _locked_row(session: Session, cache_name: str, model: Any, column: Any, key: str) -> Any:
    """The row with ``column == key`` from the preloaded cache, else read ``FOR UPDATE``."""
    cache = session.info.get(cache_name)
    if cache is not None and key in cache:
        return cache[key]
    return session.exec(select(model).where(column == key).with_for_update()).first()


def _remember(session: Session, cache_name: str, key: str, row: Any) -> None:
    cache = session.info.get(cache_name)
    if cache is not None:
        cache[key] = row


def apply_order_event(
    *,
    session: Session,
    event_name: str,
    properties: dict[str, Any],
    timestamp: datetime,
    contact_id: int | None,
) -> OrderChange | None:
    """Apply an ``Order ...`` track event to its order; ``None`` when it names no order."""
    order_id = order_key(event_name, properties)
    if order_id is None:
        return None
    status = _as_str(properties.get("status"))
    status = status.lower() if status else IMPLIED_ORDER_STATUS.get(event_name)
    # Lock the row: concurrent events for one order must apply one after the other, or two
    # "shipped" updates could both see the old status and both notify (PostgreSQL).
    order: Order | None = _locked_row(session, _ORDERS, Order, Order.order_id, order_id)
    if order is None:
        order = Order(order_id=order_id, contact_id=contact_id, created_at=timestamp)
        _remember(session, _ORDERS, order_id, order)
        old_status = None
    else:
        old_status = order.status
        if timestamp < order.updated_at:
            return OrderChange(order, old_status, old_status, applied=False)
    if status is not None and status != order.status:
        order.previous_status = order.status
        order.status = status
    if order.contact_id is None:
        order.contact_id = contact_id
    total = _as_number(properties.get("total", properties.get("revenue")))
    if total is not None:
        order.total = total
    currency = _as_str(properties.get("currency"))
    if currency:
        order.currency = currency[:8]
    merged = dict(order.properties or {})
    merged.update(properties)
    order.properties = merged
    order.updated_at = timestamp
    session.add(order)
    return OrderChange(order, old_status, order.status, applied=True)


def apply_cart_event(
    *,
    session: Session,
    event_name: str,
    properties: dict[str, Any],
    timestamp: datetime,
    contact_id: int | None,
    counts_as_activity: bool = False,
) -> Cart | None:
    """Apply a cart event (see :data:`CART_EVENTS`) to its cart; ``None`` when none is named.

    ``counts_as_activity`` makes any other event naming a ``cart_id`` (one a rule lists in
    ``idle_for.activity``) count as activity: it moves the cart's last activity, nothing else.
    """
    cart_id = cart_key(event_name, properties)
    if cart_id is None and counts_as_activity:
        cart_id = _as_str(properties.get("cart_id"))
    if cart_id is None:
        return None
    cart: Cart | None = _locked_row(session, _CARTS, Cart, Cart.cart_id, cart_id)
    if cart is None:
        cart = Cart(cart_id=cart_id, contact_id=contact_id, last_activity_at=timestamp)
        _remember(session, _CARTS, cart_id, cart)
    elif timestamp < cart.last_activity_at:
        return cart
    products = list(cart.products or [])
    if event_name == "Product Added":
        products.append({k: v for k, v in properties.items() if k != "cart_id"})
    elif event_name == "Product Removed":
        product_id = properties.get("product_id")
        products = [p for p in products if p.get("product_id") != product_id]
    elif event_name in {"Cart Viewed", "Checkout Started"} and isinstance(
        properties.get("products"), list
    ):
        products = [p for p in properties["products"] if isinstance(p, dict)]
    elif event_name == "Order Completed":
        cart.status = "converted"
        cart.order_id = _as_str(properties.get("order_id"))
    if cart.status != "converted":
        cart.status = "open" if products else "empty"
    cart.products = products
    total = _as_number(properties.get("total", properties.get("value")))
    if total is not None:
        cart.total = total
    if cart.contact_id is None:
        cart.contact_id = contact_id
    cart.last_activity_at = timestamp
    session.add(cart)
    return cart


def order_data(order: Order | None) -> dict[str, Any] | None:
    """The order as plain data for conditions and templates (its properties, then our fields)."""
    if order is None:
        return None
    data = dict(order.properties or {})
    data.update(
        order_id=order.order_id,
        status=order.status,
        previous_status=order.previous_status,
        total=order.total,
        currency=order.currency,
    )
    return data


def cart_data(cart: Cart | None) -> dict[str, Any] | None:
    """The cart as plain data for conditions and templates."""
    if cart is None:
        return None
    return {
        "cart_id": cart.cart_id,
        "status": cart.status,
        "products": list(cart.products or []),
        "total": cart.total,
        "order_id": cart.order_id,
        "last_activity_at": cart.last_activity_at.isoformat(),
    }
