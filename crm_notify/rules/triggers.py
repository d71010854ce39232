"""What starts a rule: a track event, an order status change, an identify call, or idleness."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

#: The track events that count as cart activity for ``idle_for`` when a rule lists none.
CART_ACTIVITY_EVENTS = frozenset(
    {"Product Added", "Product Removed", "Cart Viewed", "Checkout Started"}
)


@dataclass(frozen=True, slots=True)
class EventTrigger:
    """A Segment ``track`` call with this exact event name, e.g. ``"Order Completed"``."""

    event: str


@dataclass(frozen=True, slots=True)
class OrderStatusTrigger:
    """An order's status changed to one of ``to``, from one of ``from_`` (any when ``None``)."""

    to: frozenset[str]
    from_: frozenset[str] | None = None

    def matches(self, old: str | None, new: str) -> bool:
        """Return whether a change from ``old`` to ``new`` fires this trigger.

        Parameters:
            old: the previous status, ``None`` for a new order.
            new: the status now.

        Returns:
            ``True`` for a real change (``old != new``) to a ``to`` status from a ``from_`` one.
        """
        if old == new or new not in self.to:
            return False
        return self.from_ is None or (old is not None and old in self.from_)


@dataclass(frozen=True, slots=True)
class IdentifyTrigger:
    """A Segment ``identify`` call; with ``first`` only the one that created the contact."""

    first: bool = False


@dataclass(frozen=True, slots=True)
class IdleTrigger:
    """An entity (``"cart"``) had none of the ``activity`` track events for ``after``.

    The trigger time is the moment the idle period ends: the last activity plus ``after``
    (elapsed time). Each ``activity`` event restarts the period.
    """

    entity: str
    after: timedelta
    activity: frozenset[str] = CART_ACTIVITY_EVENTS


#: Any trigger a rule can have.
Trigger = EventTrigger | OrderStatusTrigger | IdentifyTrigger | IdleTrigger
