"""The dispatcher: sends due deliveries to their subscribers, records what came of each.

Each pass claims due deliveries of enabled subscriptions (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several processes share the work): it marks them ``sending`` with a lease and
counts the attempt, and commits before any request. A subscriber gets its events in order: a
delivery waiting for its retry (or leased to a process) holds back the later ones of its
subscription. Each subscription's share is sent in order by one thread of a small pool, so a
slow or dead subscriber holds up only itself: after a failure, or once :data:`PASS_BUDGET_S`
has been spent on it, the rest of its share goes back in line uncounted. A process that dies
mid-send leaves its claims to expire; they are sent again under the same ``webhook-id``, which
receivers deduplicate on (Standard Webhooks).

After an attempt:

- 2xx: the delivery is deleted; the subscription's ``sent`` grows, its failure period ends;
- a failure: ``failed`` grows, ``last_status``/``last_error`` say why; the delivery is retried
  after :data:`RETRY_SCHEDULE` (or the subscriber's longer ``Retry-After``), and after the last
  step it is ``failed`` (kept; ``crm-notify webhooks redeliver`` puts it back). When every
  attempt has failed for the subscription's ``disable_after``, it is disabled with the reason;
  its waiting deliveries stay until it is enabled again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from crm_notify._periodic import Periodic
from crm_notify.clock import now
from crm_notify.db import session_scope
from crm_notify.rules.durations import format_duration
from crm_notify.subscriptions.models import (
    DeliveryStatus,
    SubscriptionDelivery,
    WebhookSubscription,
)
from crm_notify.subscriptions.sender import Attempt, SubscriptionSender

logger = logging.getLogger(__name__)

#: Waits before the 2nd, 3rd, ... attempt of a delivery (as Svix's schedule): about 28 hours
#: of retries in all; after the last, the delivery is ``failed``.
RETRY_SCHEDULE = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
#: Longest ``Retry-After`` honoured.
MAX_RETRY_AFTER = timedelta(hours=10)
#: How long a claim holds: a delivery still ``sending`` after it is claimed again.
LEASE = timedelta(minutes=5)
#: Seconds one pass spends on one subscription's share before putting the rest back.
PASS_BUDGET_S = 20.0
#: Deliveries claimed per pass.
DEFAULT_BATCH_SIZE = 200
#: Subscribers sent to at once.
DEFAULT_CONCURRENCY = 8


class SubscriptionDispatcher(Periodic):
    """Sends due deliveries (see the module docstring).

    Parameters:
        engine: the database.
        sender: makes the requests.
        interval_s: seconds between passes.
        batch_size: deliveries claimed per pass.
        concurrency: subscribers sent to at once.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        sender: SubscriptionSender,
        interval_s: float,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        super().__init__(interval_s=interval_s, name="crm-notify-subscriptions")
        self._engine = engine
        self._sender = sender
        self._batch_size = batch_size
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="crm-notify-subscriber")

    def stop(self, timeout_s: float = 60) -> None:
        """Stop after the pass in progress, and close the connections."""
        super().stop(timeout_s)
        self._pool.shutdown(wait=True)
        self._sender.close()

    def run_once(self) -> int:
        """Claim and send the due deliveries; return how many were attempted."""
        claimed = self._claim()
        if not claimed:
            return 0
        shares: dict[int, list[SubscriptionDelivery]] = defaultdict(list)
        subscriptions: dict[int, WebhookSubscription] = {}
        for delivery, subscription in claimed:
            shares[delivery.subscription_id].append(delivery)
            subscriptions[delivery.subscription_id] = subscription
        futures = [
            self._pool.submit(self._send_share, subscriptions[key], share)
            for key, share in shares.items()
        ]
        return sum(future.result() for future in futures)

    def _claim(self) -> list[tuple[SubscriptionDelivery, WebhookSubscription]]:
        moment = now()
        earlier = aliased(SubscriptionDelivery)
        # An earlier delivery of the same subscription that is not due (backing off, or being
        # sent under a lease) holds the later ones back: each subscriber gets its events in order.
        held_back = (
            sa.select(col(earlier.id))
            .where(col(earlier.subscription_id) == col(SubscriptionDelivery.subscription_id))
            .where(col(earlier.id) < col(SubscriptionDelivery.id))
            .where(col(earlier.status) != DeliveryStatus.FAILED.value)
            .where(col(earlier.next_attempt_at) > moment)
            .exists()
        )
        with session_scope(self._engine) as session:
            rows = session.exec(
                select(SubscriptionDelivery, WebhookSubscription)
                .join(
                    WebhookSubscription,
                    col(WebhookSubscription.id) == col(SubscriptionDelivery.subscription_id),
                )
                .where(col(WebhookSubscription.enabled))
                .where(col(SubscriptionDelivery.status) != DeliveryStatus.FAILED.value)
                .where(col(SubscriptionDelivery.next_attempt_at) <= moment)
                .where(~held_back)
                .order_by(col(SubscriptionDelivery.id))
                .limit(self._batch_size)
                # PostgreSQL: a subscription another process is claiming is skipped whole
                .with_for_update(skip_locked=True, of=[SubscriptionDelivery, WebhookSubscription])
            ).all()
            ids = [delivery.id for delivery, _ in rows]
            if ids:
                session.execute(
                    sa.update(SubscriptionDelivery)
                    .where(col(SubscriptionDelivery.id).in_(ids))
                    .values(
                        status=DeliveryStatus.SENDING.value,
                        attempts=SubscriptionDelivery.attempts + 1,
                        next_attempt_at=moment + LEASE,
                    )
                    .execution_options(synchronize_session=False)  # attempts: as read
                )
            session.expunge_all()  # used after the commit, outside the session
        return list(rows)

    def _send_share(
        self, subscription: WebhookSubscription, share: Sequence[SubscriptionDelivery]
    ) -> int:
        """Send one subscription's share in order; put the rest back after a failure or once
        the budget is spent. Returns the deliveries attempted."""
        started = time.monotonic()
        for index, delivery in enumerate(share):
            attempt = self._sender.send(
                subscription, message_id=delivery.message_id, body=delivery.body
            )
            with session_scope(self._engine) as session:
                record_attempt(session, subscription.id, delivery, attempt)
            if not attempt.ok or time.monotonic() - started > PASS_BUDGET_S:
                _put_back(self._engine, share[index + 1 :], due=now())
                return index + 1
        return len(share)


def record_attempt(
    session: Session, subscription_id: int | None, delivery: SubscriptionDelivery, attempt: Attempt
) -> None:
    """Record what ``attempt`` of ``delivery`` came to (see the module docstring)."""
    moment = now()
    attempts = delivery.attempts + 1  # the claim counted it in the database
    subscription = session.get(WebhookSubscription, subscription_id, with_for_update=True)
    if attempt.ok:
        session.execute(
            sa.delete(SubscriptionDelivery).where(col(SubscriptionDelivery.id) == delivery.id)
        )
    else:
        if attempts > len(RETRY_SCHEDULE):
            values: dict[str, object] = {"status": DeliveryStatus.FAILED.value}
        else:
            wait = RETRY_SCHEDULE[attempts - 1]
            if attempt.retry_after_s:
                wait = max(wait, min(timedelta(seconds=attempt.retry_after_s), MAX_RETRY_AFTER))
            values = {"status": DeliveryStatus.PENDING.value, "next_attempt_at": moment + wait}
        session.execute(
            sa.update(SubscriptionDelivery)
            .where(col(SubscriptionDelivery.id) == delivery.id)
            .values(last_status=attempt.status, last_error=(attempt.error or "")[:1000], **values)
        )
    if subscription is None:  # removed meanwhile: its deliveries went with it
        return
    record_outcome(session, subscription, attempt, moment=moment)
    if not attempt.ok:
        logger.warning(
            "webhook subscription %s: delivery %s attempt %s failed (status %s)",
            subscription.name,
            delivery.id,
            attempts,
            attempt.status,
        )


def record_outcome(
    session: Session,
    subscription: WebhookSubscription,
    attempt: Attempt,
    *,
    moment: datetime | None = None,
) -> None:
    """Count ``attempt`` on ``subscription`` and disable it when its failure period is over."""
    moment = moment or now()
    subscription.last_status = attempt.status
    subscription.last_attempt_at = moment
    if attempt.ok:
        subscription.sent_count += 1
        subscription.last_success_at = moment
        subscription.failing_since = None
        subscription.last_error = None
    else:
        subscription.failed_count += 1
        subscription.last_error = (attempt.error or "")[:1000]
        subscription.failing_since = subscription.failing_since or moment
        failing_for = moment - subscription.failing_since
        if subscription.enabled and failing_for >= timedelta(seconds=subscription.disable_after_s):
            subscription.enabled = False
            subscription.disabled_at = moment
            subscription.disabled_reason = (
                f"disabled automatically: every attempt failed for "
                f"{format_duration(timedelta(seconds=int(failing_for.total_seconds())))} since "
                f"{subscription.failing_since:%Y-%m-%d %H:%M} UTC; last: {subscription.last_error}"
            )[:1000]
            logger.warning("webhook subscription %s disabled (failing)", subscription.name)
    session.add(subscription)


def _put_back(engine: Engine, deliveries: Sequence[SubscriptionDelivery], *, due: datetime) -> None:
    """Return claimed deliveries to the line uncounted, due at ``due``."""
    if not deliveries:
        return
    with session_scope(engine) as session:
        for delivery in deliveries:
            session.execute(
                sa.update(SubscriptionDelivery)
                .where(col(SubscriptionDelivery.id) == delivery.id)
                .where(col(SubscriptionDelivery.status) == DeliveryStatus.SENDING.value)
                .values(
                    status=DeliveryStatus.PENDING.value,
                    attempts=SubscriptionDelivery.attempts - 1,
                    next_attempt_at=due,
                )
            )
