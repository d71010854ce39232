"""Dramatiq actors. Thin: they take ids and call the services that do the work."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dramatiq

#: Queue every crm-notify actor uses (the default of ``CRM_NOTIFY_QUEUE_NAME``).
QUEUE_NAME = "crm_notify"

#: Name of the delivery actor (stable: it is stored in queued messages).
DELIVER_ACTOR = "deliver_notification"


@dataclass(frozen=True)
class Actors:
    """The actors declared on one broker, with helpers to enqueue work."""

    deliver_notification: dramatiq.Actor[[int], None]

    def enqueue_deliveries(self, notification_ids: Sequence[int]) -> None:
        """Queue one delivery message per id."""
        for notification_id in notification_ids:
            self.deliver_notification.send(notification_id)

    def schedule_delivery(self, notification_id: int, delay: timedelta) -> None:
        """Queue a delivery to run after ``delay``."""
        self.deliver_notification.send_with_options(
            args=(notification_id,), delay=int(delay.total_seconds() * 1000)
        )


def declare_actors(
    broker: dramatiq.Broker, *, deliver: Callable[[int], Any], queue_name: str = QUEUE_NAME
) -> Actors:
    """Declare crm-notify's actors on ``broker``.

    Parameters:
        queue_name: the queue they use (several deployments may share a broker).
        deliver: does one delivery attempt for a notification id; an exception it raises
            (database unreachable, say) is retried by Dramatiq with backoff, which is safe
            because delivery claims the row first.
    """

    def deliver_notification(notification_id: int) -> None:
        deliver(notification_id)

    decorate = dramatiq.actor(broker=broker, actor_name=DELIVER_ACTOR, queue_name=queue_name)
    return Actors(deliver_notification=decorate(deliver_notification))
