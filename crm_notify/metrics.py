"""``/metrics``: Prometheus metrics, read from the database so that every process counts.

The API, the scheduler and any number of workers on any number of hosts write to the same
database; a scrape reads what they wrote since the previous scrape, so one ``/metrics`` counts
them all. Counters start at zero when the serving process starts (as Prometheus expects of a
restarted target) and grow by the rows written since:

- ``crm_notify_events_received_total{type}``
- ``crm_notify_decisions_total{outcome, reason}``: ``reason`` is the kind of reason (its words
  up to the first detail: ``quiet hours until``, ``no marketing consent recorded``,
  ``rejected by the gate``), so the label stays bounded
- ``crm_notify_sends_total{channel, esp, status}``: status changes to ``sent``, ``retrying``,
  ``failed`` and ``cancelled``
- ``crm_notify_delivery_latency_seconds``: from the first delivery attempt to the ESP's
  acceptance (retries included; time held by a gate or deferred by quiet hours is not)
- ``crm_notify_queue_depth{status}`` (a gauge): notifications ``pending``, ``queued``,
  ``sending``, ``retrying`` and ``gated`` now
- ``crm_notify_fetches_total{rule, fetch, outcome, error}``: the outcomes of rules' fetch steps
  (``ok``, ``cache_hit``, ``fallback``, ``skip``, ``defer``; :mod:`crm_notify.fetch.outcomes`),
  ``error`` the kind of failure (``timeout``, ``status 500``...; empty when none)
- ``crm_notify_webhook_subscription_requests_total{subscription, result}``: requests each
  webhook subscription has made since it was created (``sent``: 2xx; ``failed``), and the
  gauges ``crm_notify_webhook_subscription_enabled``, ``..._last_status`` and
  ``..._deliveries_waiting`` (``{subscription}``)

Rows are read by id; ids a concurrent transaction committed late (PostgreSQL hands them out
before commit) are caught by re-reading the last :data:`LOOKBACK` ids of each table. Every
serving process counts every process's rows: have Prometheus scrape one of them (or aggregate
replicas with ``max``, not ``sum``).
"""

from __future__ import annotations

import hmac
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from crm_notify.clock import as_utc
from crm_notify.events.models import Event
from crm_notify.fetch.outcomes import fetch_entry
from crm_notify.fetch.stats import REASON_PATTERN
from crm_notify.outbox.models import Decision, Notification, NotificationStatusChange
from crm_notify.subscriptions import repository as subscription_repository

#: Ids re-read on each scrape, to catch rows committed after a higher id was seen.
LOOKBACK = 10_000
#: Upper bounds of the latency histogram's buckets, in seconds.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
#: Statuses a notification waits in before it is sent.
QUEUE_STATUSES = ("pending", "queued", "sending", "retrying", "gated")
#: Status changes counted as sends.
SEND_STATUSES = ("sent", "retrying", "failed", "cancelled")
#: Longest reason kind kept.
_REASON_WORDS = 6
_DETAIL = re.compile(r"[\d:'\"(\[{<@/]")


def reason_kind(reason: str) -> str:
    """``reason`` without its details: its words up to the first one holding a digit, quote,
    colon, bracket, ``@`` or ``/``, at most six, lower case (``"quiet hours until 08:00
    Europe/Warsaw"`` -> ``"quiet hours until"``)."""
    words: list[str] = []
    for word in reason.split():
        match = _DETAIL.search(word)
        if match is not None:
            head = word[: match.start()].rstrip(",.;")
            if head:
                words.append(head)
            break
        words.append(word.rstrip(",.;"))
        if len(words) == _REASON_WORDS:
            break
    return " ".join(words).lower() or "other"


class _Table:
    """Which rows of one table have been counted: the highest id, and those of the lookback."""

    def __init__(self, start: int) -> None:
        self.seen: set[int] = set()
        self.start = self.high = start

    def new(self, rows: Iterable[Any]) -> Iterator[Any]:
        """The rows not counted yet (nor written before the start); remember them."""
        for row in rows:
            if row[0] > self.start and row[0] not in self.seen:
                self.seen.add(row[0])
                self.high = max(self.high, row[0])
                yield row
        floor = self.high - LOOKBACK
        self.seen = {i for i in self.seen if i > floor}

    @property
    def floor(self) -> int:
        return max(self.high - LOOKBACK, 0)


class DatabaseMetrics(Collector):
    """A Prometheus collector reading the database (see the module docstring).

    Parameters:
        engine: the database.
    """

    def __init__(self, *, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._events: Counter[str] = Counter()
        self._decisions: Counter[tuple[str, str]] = Counter()
        self._sends: Counter[tuple[str, str, str]] = Counter()
        self._fetches: Counter[tuple[str, str, str, str]] = Counter()
        self._latency: list[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        with Session(engine) as session:  # count from now on
            self._tables = {
                name: _Table(int(session.exec(select(func.max(column))).one() or 0))
                for name, column in (
                    ("event", Event.id),
                    ("decision", Decision.id),
                    ("fetch", Decision.id),
                    ("change", NotificationStatusChange.id),
                )
            }

    def collect(self) -> Iterator[Metric]:
        """Read what was written since the last scrape, and yield the metrics."""
        with self._lock, Session(self._engine) as session:
            self._read(session)
            depth = dict(
                session.exec(
                    select(Notification.status, func.count())
                    .where(col(Notification.status).in_(QUEUE_STATUSES))
                    .group_by(Notification.status)
                ).all()
            )
            yield from self._families(depth)
            yield from _subscription_families(session)

    def _read(self, session: Session) -> None:
        events = self._tables["event"]
        for _id, kind in events.new(
            session.exec(select(Event.id, Event.type).where(col(Event.id) > events.floor)).all()
        ):
            self._events[str(kind)] += 1
        decisions = self._tables["decision"]
        query = select(Decision.id, Decision.outcome, Decision.reason).where(
            col(Decision.id) > decisions.floor
        )
        for _id, outcome, reason in decisions.new(session.exec(query).all()):
            self._decisions[(str(outcome), reason_kind(str(reason)))] += 1
        fetches = self._tables["fetch"]
        query3 = select(Decision.id, Decision.rule, Decision.details).where(
            col(Decision.id) > fetches.floor, col(Decision.reason).like(REASON_PATTERN)
        )
        for _id, rule, details in fetches.new(session.exec(query3).all()):
            entry = fetch_entry(details)
            if entry is not None:
                key = (
                    rule,
                    entry["name"],
                    str(entry.get("outcome")),
                    str(entry.get("error") or ""),
                )
                self._fetches[key] += 1
        changes = self._tables["change"]
        change, notification = NotificationStatusChange, Notification
        query2 = (
            sa.select(
                col(change.id),
                col(change.status),
                col(change.at),
                col(notification.channel),
                col(notification.esp),
                sa.func.coalesce(col(notification.first_attempt_at), col(notification.created_at)),
            )
            .join(notification, col(notification.id) == col(change.notification_id))
            .where(col(change.id) > changes.floor)
            .where(col(change.status).in_(SEND_STATUSES))
        )
        for row in changes.new(session.execute(query2).all()):
            _id, status, at, channel, esp, created = row
            self._sends[(str(channel), str(esp or ""), str(status))] += 1
            if status == "sent":
                self._observe(at, created)

    def _observe(self, at: datetime, created: datetime) -> None:
        seconds = max((as_utc(at) - as_utc(created)).total_seconds(), 0.0)
        self._latency_sum += seconds
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self._latency[index] += 1
                return
        self._latency[-1] += 1

    def _families(self, depth: dict[str, int]) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "crm_notify_events_received", "Events received, by type.", labels=["type"]
        )
        for kind, count in sorted(self._events.items()):
            events.add_metric([kind], count)
        yield events
        decisions = CounterMetricFamily(
            "crm_notify_decisions",
            "Decisions taken, by outcome and kind of reason.",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), count in sorted(self._decisions.items()):
            decisions.add_metric([outcome, reason], count)
        yield decisions
        sends = CounterMetricFamily(
            "crm_notify_sends",
            "Delivery outcomes (status changes), by channel, ESP and status.",
            labels=["channel", "esp", "status"],
        )
        for (channel, esp, status), count in sorted(self._sends.items()):
            sends.add_metric([channel, esp, status], count)
        yield sends
        fetches = CounterMetricFamily(
            "crm_notify_fetches",
            "Outcomes of rules' fetch steps, by rule, step, outcome and kind of failure.",
            labels=["rule", "fetch", "outcome", "error"],
        )
        for labels, count in sorted(self._fetches.items()):
            fetches.add_metric(list(labels), count)
        yield fetches
        buckets, running = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self._latency, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
        latency = HistogramMetricFamily(
            "crm_notify_delivery_latency_seconds",
            "Seconds from the first delivery attempt to the ESP's acceptance.",
        )
        latency.add_metric([], buckets, sum_value=self._latency_sum)
        yield latency
        queue = GaugeMetricFamily(
            "crm_notify_queue_depth",
            "Notifications waiting to be sent, by status.",
            labels=["status"],
        )
        for status in QUEUE_STATUSES:
            queue.add_metric([status], depth.get(status, 0))
        yield queue


def _subscription_families(session: Session) -> Iterator[Metric]:
    """The webhook subscriptions' counters and state, as stored (see the module docstring)."""
    requests = CounterMetricFamily(
        "crm_notify_webhook_subscription_requests",
        "Requests each webhook subscription made, by result (sent: 2xx answers).",
        labels=["subscription", "result"],
    )
    enabled = GaugeMetricFamily(
        "crm_notify_webhook_subscription_enabled",
        "1 when the subscription is enabled, 0 when disabled.",
        labels=["subscription"],
    )
    last_status = GaugeMetricFamily(
        "crm_notify_webhook_subscription_last_status",
        "HTTP status of the subscription's last request (0: none came back).",
        labels=["subscription"],
    )
    waiting = GaugeMetricFamily(
        "crm_notify_webhook_subscription_deliveries_waiting",
        "Deliveries waiting to be sent to the subscription.",
        labels=["subscription"],
    )
    counts = subscription_repository.delivery_counts(session=session)
    for row in subscription_repository.all_subscriptions(session=session):
        requests.add_metric([row.name, "sent"], row.sent_count)
        requests.add_metric([row.name, "failed"], row.failed_count)
        enabled.add_metric([row.name], 1 if row.enabled else 0)
        last_status.add_metric([row.name], row.last_status or 0)
        waiting.add_metric([row.name], counts.get(row.id or 0, {}).get("waiting", 0))
    yield from (requests, enabled, last_status, waiting)


def make_router(*, engine: Engine, token: str | None) -> APIRouter:
    """``GET /metrics`` in Prometheus's text format.

    Parameters:
        engine: the database the metrics are read from.
        token: when set, the scrape must send ``Authorization: Bearer <token>`` (else 401).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseMetrics(engine=engine))
    router = APIRouter(tags=["health"])
    expected = f"Bearer {token}".encode() if token else None

    @router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return PlainTextResponse(
                    "metrics need Authorization: Bearer <CRM_NOTIFY_METRICS_TOKEN>",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
