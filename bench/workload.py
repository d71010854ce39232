"""The benchmark's traffic: Segment batches as a shop backend sends them.

Each customer makes :data:`CALLS_PER_CUSTOMER` calls, always in one batch and in this order:

1. ``identify`` of a new customer (fires ``welcome``)
2. ``page`` (fires nothing), 3. ``Product Viewed``, 4. and 5. ``Product Added`` (cart state),
6. ``Checkout Started``, 7. ``Order Completed`` (order state, cart converted),
8. ``Order Updated`` with ``status: shipped`` (fires ``order-shipped``),
9. ``page``, 10. ``identify`` again with new traits (an update: fires nothing).

So a batch of 100 calls is 10 customers and 20 notifications, and the expected number of
notifications is known exactly. One customer in five has ``language: de`` (the German
``order_shipped`` variant).

The guarded workload (``guards=True``, the ``*-guards`` modes) is the same calls, each carrying
the customer's marketing consent as Segment's consent management sends it (with every call):
``context.consent.categoryPreferences: {"Marketing": true}``. A marketing rule,
:data:`GUARDED_RULE` (``cart-offer``, on ``Product Added``, ``limit: 1/7d``, quiet hours off),
fires on call 4 and is dropped by its limit on call 5. So every customer is 3 notifications
(welcome, cart-offer, order-shipped) and 4 decisions, and every marketing decision runs the
suppression lookup, the consent lookup and the rate-limit count (transactional ones the
suppression lookup).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

#: Calls each customer makes (see the module docstring).
CALLS_PER_CUSTOMER = 10
#: Notifications each customer's calls produce (welcome, order-shipped).
NOTIFICATIONS_PER_CUSTOMER = 2
#: The same with ``guards=True`` (welcome, cart-offer, order-shipped).
GUARDED_NOTIFICATIONS_PER_CUSTOMER = 3
#: What Segment's consent management adds to every call's context in the guarded workload.
CONSENT = {"categoryPreferences": {"Marketing": True, "Analytics": True}, "version": "signup-v2"}
#: The guarded workload's marketing rule, written next to the sample rules: one send per
#: contact per week (the second ``Product Added`` is dropped), no quiet hours (so the run does
#: not depend on the time of day), the ``abandoned_cart`` template (with unsubscribe links).
GUARDED_RULE = """\
name: cart-offer
description: Bench - a marketing mail when something is put in the cart, once a week.
trigger: {event: Product Added}
when: cart.products
template: abandoned_cart
purpose: marketing
limit: {count: 1, per: 7d}
over_limit: drop
quiet_hours: false
"""
#: What Segment's Python SDK puts in every call's context.
LIBRARY = {"name": "analytics-python", "version": "2.3.2"}


@dataclass(frozen=True)
class Batch:
    """One ``/v1/batch`` body, already encoded, and what it should produce."""

    body: bytes
    calls: int
    notifications: int


def customer_calls(
    tag: str, number: int, start: datetime, *, guards: bool = False
) -> list[dict[str, Any]]:
    """The calls of customer ``number`` of run ``tag``, timestamped from ``start``; with
    ``guards``, each carries the customer's marketing consent (:data:`CONSENT`)."""
    user = f"{tag}-c{number}"
    order = f"{tag}-SO{number}"
    cart = f"{tag}-cart{number}"
    context: dict[str, Any] = {
        "library": LIBRARY,
        "ip": "203.0.113.7",
        "userAgent": "shop-backend/4.2",
    }
    if guards:
        context["consent"] = CONSENT
    products = [
        {"product_id": f"P{number % 50}", "sku": f"SKU-{number % 50}", "name": "Mug", "price": 12.5,
         "quantity": 1},
        {"product_id": f"P{number % 70 + 100}", "sku": f"SKU-{number % 70 + 100}",
         "name": "Tea, 250 g", "price": 7.9, "quantity": 2},
    ]  # fmt: skip
    traits = {
        "email": f"{user}@Shop-Customers.example",
        "first_name": "Alice" if number % 2 else "Bob",
        "last_name": f"Tester{number}",
        "language": "de" if number % 5 == 0 else "en",
        "address": {"city": "Berlin", "country": "DE"},
        "plan": "free",
    }
    bodies: list[dict[str, Any]] = [
        {"type": "identify", "traits": traits},
        {"type": "page", "name": "Home", "properties": {"path": "/", "url": "https://shop.example/"}},
        {"type": "track", "event": "Product Viewed", "properties": products[0]},
        {"type": "track", "event": "Product Added", "properties": {"cart_id": cart, **products[0]}},
        {"type": "track", "event": "Product Added", "properties": {"cart_id": cart, **products[1]}},
        {"type": "track", "event": "Checkout Started",
         "properties": {"cart_id": cart, "order_id": order, "value": 28.3, "products": products}},
        {"type": "track", "event": "Order Completed",
         "properties": {"order_id": order, "cart_id": cart, "total": 28.3, "revenue": 23.78,
                        "currency": "EUR", "products": products}},
        {"type": "track", "event": "Order Updated",
         "properties": {"order_id": order, "status": "shipped", "carrier": "DHL",
                        "tracking_number": f"00340434{number:010d}"}},
        {"type": "page", "name": "Order status", "properties": {"path": f"/orders/{order}"}},
        {"type": "identify", "traits": {"phone": "+49 30 1234567", "plan": "plus"}},
    ]  # fmt: skip
    calls = []
    for index, body in enumerate(bodies):
        moment = start + timedelta(seconds=index)
        calls.append(
            {
                **body,
                "userId": user,
                "messageId": f"{user}-m{index}",
                "timestamp": moment.isoformat(),
                "context": context,
                "integrations": {},
            }
        )
    return calls


def make_batches(
    tag: str, count: int, *, customers_per_batch: int = 10, guards: bool = False
) -> list[Batch]:
    """``count`` encoded batches of ``customers_per_batch`` customers each, unique to ``tag``
    (the guarded workload with ``guards``)."""
    start = datetime.now(UTC) - timedelta(hours=1)
    batches = []
    for batch_number in range(count):
        calls: list[dict[str, Any]] = []
        for offset in range(customers_per_batch):
            number = batch_number * customers_per_batch + offset
            calls += customer_calls(tag, number, start, guards=guards)
        body = {"batch": calls, "sentAt": datetime.now(UTC).isoformat(), "context": {}}
        batches.append(
            Batch(
                body=json.dumps(body).encode("utf-8"),
                calls=len(calls),
                notifications=customers_per_batch * notifications_per_customer(guards),
            )
        )
    return batches


def notifications_per_customer(guards: bool) -> int:
    """Notifications one customer's calls produce in the plain or the guarded workload."""
    return GUARDED_NOTIFICATIONS_PER_CUSTOMER if guards else NOTIFICATIONS_PER_CUSTOMER
