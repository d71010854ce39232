"""The gate runner: tells integrations about new gates and times out the expired ones.

A pass (:meth:`GateRunner.run_once`) does two things:

1. Deliveries: it claims the open gates whose notification is due (``delivery`` ``pending``,
   ``next_delivery_at`` passed, deadline not), counts the attempt and moves
   ``next_delivery_at`` a lease ahead, builds their requests, and commits; then it sends
   them, no transaction open (the integration may call the gate's URIs while it answers),
   and records each outcome (:func:`~crm_notify.gates.notify.record_attempt`). A runner that
   dies mid-send leaves the gate to be tried again once the lease has passed.
2. Timeouts: it claims the open gates past their deadline and applies their policy
   (:func:`~crm_notify.gates.release.time_out`) in one transaction, then enqueues what that
   released.

Rows are claimed ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several runners (one per
process) take different gates; SQLite has one writer at a time. :meth:`GateRunner.wake`
starts a pass at once (called when a gate opens), otherwise passes run every ``interval_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.db import session_scope
from crm_notify.errors import GateClosedError
from crm_notify.gates.model import Gate, GateDelivery, GateStatus
from crm_notify.gates.notify import GateAttempt, GateNotifier, GateRequest, record_attempt
from crm_notify.gates.release import time_out

logger = logging.getLogger(__name__)

#: Gates claimed per transaction. Their notifications are sent one after another, each
#: bounded by the notifier's timeouts (15 s to connect, 15 s to answer), so the batch must fit
#: in the lease: 5 x 30 s < 5 min.
DEFAULT_BATCH_SIZE = 5
#: How long a claimed delivery is left to its runner before another may try it.
DEFAULT_LEASE = timedelta(minutes=5)


@dataclass
class RunnerPass:
    """What one pass did: gates notified, delivery attempts that will be retried, deliveries
    that failed for good, gates timed out."""

    notified: int = 0
    retrying: int = 0
    failed: int = 0
    timed_out: int = 0


class GateRunner:
    """Sends due gate notifications and times out expired gates (see the module docstring).

    Parameters:
        engine: the database.
        notifier: sends the gate notifications.
        enqueue: hands notifications released by a timeout to the broker, after the commit
            (``None``: the outbox relay finds them).
        interval_s: seconds between passes.
        batch_size: gates per transaction.
        lease: how long a claimed delivery is left to this runner.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        notifier: GateNotifier,
        enqueue: Callable[[Sequence[int]], None] | None,
        interval_s: float,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lease: timedelta = DEFAULT_LEASE,
    ) -> None:
        self._engine = engine
        self._notifier = notifier
        self._enqueue = enqueue
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._lease = lease
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, *, max_batches: int = 100) -> RunnerPass:
        """Send the due notifications and time out the expired gates (each up to
        ``max_batches`` batches)."""
        result = RunnerPass()
        for _ in range(max_batches):  # deadlines first: slow endpoints must not delay them
            count = self._time_out_batch()
            result.timed_out += count
            if count < self._batch_size:
                break
        for _ in range(max_batches):
            claimed = self._deliver_batch(result)
            if claimed < self._batch_size:
                break
        return result

    def _deliver_batch(self, result: RunnerPass) -> int:
        prepared: list[GateRequest] = []
        with session_scope(self._engine) as session:
            moment = now()
            gates = self._claim(
                session,
                sa.and_(
                    col(Gate.delivery) == GateDelivery.PENDING.value,
                    sa.or_(
                        col(Gate.next_delivery_at).is_(None), col(Gate.next_delivery_at) <= moment
                    ),
                    col(Gate.deadline) > moment,
                ),
            )
            for gate in gates:
                assert gate.id is not None
                gate.delivery_attempts += 1
                gate.next_delivery_at = moment + self._lease
                session.add(gate)
                request = self._notifier.prepare(session, gate)
                if isinstance(request, GateAttempt):  # its credentials cannot be resolved
                    session.flush()
                    self._record(session, gate.id, gate.public_id, request, result)
                else:
                    prepared.append(request)
        for request in prepared:
            attempt = self._notifier.send(request)
            try:
                with session_scope(self._engine) as session:
                    self._record(session, request.gate_id, request.public_id, attempt, result)
            except Exception:  # the lease runs out and the gate is tried again
                logger.exception("could not record the delivery of gate %s", request.public_id)
        return len(gates)

    def _record(
        self,
        session: Session,
        gate_id: int,
        public_id: str,
        attempt: GateAttempt,
        result: RunnerPass,
    ) -> None:
        delivery = record_attempt(session=session, gate_id=gate_id, attempt=attempt)
        if delivery is GateDelivery.NOTIFIED:
            result.notified += 1
        elif delivery is GateDelivery.PENDING:
            result.retrying += 1
        elif delivery is GateDelivery.FAILED:
            result.failed += 1
            logger.warning(
                "gate %s: the integration could not be notified; its timeout policy decides "
                "the items at the deadline",
                public_id,
            )

    def _time_out_batch(self) -> int:
        with session_scope(self._engine) as session:
            gates = self._claim(session, col(Gate.deadline) <= now())
            notification_ids: list[int] = []
            for gate in gates:
                try:
                    notification_ids += time_out(session, gate)
                except GateClosedError:  # closed meanwhile (SQLite has no SKIP LOCKED)
                    continue
                logger.info("gate %s of rule %s timed out", gate.public_id, gate.rule)
        if notification_ids and self._enqueue is not None:
            try:
                self._enqueue(notification_ids)
            except Exception:  # the outbox relay requeues them
                logger.exception("enqueue after gate timeouts failed")
        return len(gates)

    def _claim(self, session: Session, condition: sa.ColumnElement[bool]) -> list[Gate]:
        """Lock and return up to a batch of open gates meeting ``condition``, oldest first."""
        query = (
            select(Gate)
            .where(col(Gate.status) == GateStatus.OPEN.value)
            .where(condition)
            .order_by(col(Gate.deadline), col(Gate.id))
            .limit(self._batch_size)
            .with_for_update(skip_locked=True)
        )
        return list(session.exec(query))

    def wake(self) -> None:
        """Start a pass now (a gate opened); does nothing unless :meth:`start` was called."""
        self._wake.set()

    def start(self) -> None:
        """Run passes in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="crm-notify-gates", daemon=True)
        self._thread.start()

    def run_forever(self) -> None:
        """Run passes in this thread until :meth:`stop`."""
        self._loop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:
                logger.exception("gate pass failed; trying again in %.1fs", self._interval_s)
            self._wake.wait(self._interval_s)

    def stop(self) -> None:
        """Stop after the pass in progress."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
