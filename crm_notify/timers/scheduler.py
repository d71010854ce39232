"""The scheduler: claims due timers and fires them, each exactly once.

A pass claims a batch of due timers and fires each inside the same transaction that marks it
done, so a crash mid-fire rolls back and the timer fires again on a later pass; the send it
decides is an outbox row in that transaction too, so it is never sent twice. Several
schedulers may run against PostgreSQL (rows are claimed ``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from crm_notify.clock import now
from crm_notify.db import session_scope
from crm_notify.gates.hold import GateHold, HoldResult, PassGates
from crm_notify.timers import repository
from crm_notify.timers.models import Timer, TimerStatus

logger = logging.getLogger(__name__)

#: Timers claimed and fired per transaction.
DEFAULT_BATCH_SIZE = 200

#: A fire function: decides what a due timer does, writes it, and returns new notification ids.
FireTimer = Callable[[Session, Timer], list[int]]


class Scheduler:
    """Fires due timers, in passes every ``interval_s`` seconds.

    Parameters:
        engine: the database.
        fire: decides and records what a due timer does (see :data:`FireTimer`); it must set
            the timer's final status.
        enqueue: hands the notifications created by a pass to the broker, after the commit.
        interval_s: seconds between passes.
        batch_size: timers per transaction.
        hold: puts the sends of gated rules of each pass on hold (one gate per rule and step
            for the whole pass, handed to the gate runner when the pass ends).
    """

    def __init__(
        self,
        *,
        engine: Engine,
        fire: FireTimer,
        enqueue: Callable[[Sequence[int]], None] | None,
        interval_s: float,
        batch_size: int = DEFAULT_BATCH_SIZE,
        hold: GateHold | None = None,
    ) -> None:
        self._engine = engine
        self._hold = hold
        self._pass_gates: PassGates = {}
        self._fire = fire
        self._enqueue = enqueue
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, *, max_batches: int = 50) -> int:
        """Fire every timer due now (up to ``max_batches`` batches); return how many fired."""
        fired = 0
        self._pass_gates = {}
        try:
            for _ in range(max_batches):
                count, notification_ids = self._run_batch()
                fired += count
                if notification_ids and self._enqueue is not None:
                    try:
                        self._enqueue(notification_ids)
                    except Exception:  # the outbox relay requeues them
                        logger.exception("enqueue after a scheduler pass failed")
                if count < self._batch_size:
                    break
        finally:
            self._gates_ready()
        return fired

    def _gates_ready(self) -> None:
        """The pass has ended: its gates go to the integration, with all they hold."""
        gate_ids = list(self._pass_gates.values())
        self._pass_gates = {}
        if not gate_ids or self._hold is None:
            return
        try:
            with session_scope(self._engine) as session:
                self._hold.ready(session, gate_ids)
        except Exception:  # the runner notifies them once their pass lease has passed
            logger.exception("could not release the gates of a scheduler pass to the runner")
            return
        self._hold.after_commit(HoldResult(gate_ids=gate_ids))

    def _run_batch(self) -> tuple[int, list[int]]:
        # Fast path: the whole batch in one transaction. Should any timer fail, the batch is
        # rolled back and fired again timer by timer, each in a savepoint.
        gates = dict(self._pass_gates)  # kept only once the batch has committed
        try:
            with session_scope(self._engine) as session:
                timers = repository.claim_due(session=session, moment=now(), limit=self._batch_size)
                notification_ids: list[int] = []
                for timer in timers:
                    notification_ids += self._fire(session, timer)
                released = self._held(session, notification_ids, gates)
            self._pass_gates = gates
            return len(timers), released
        except Exception:
            logger.warning("a timer failed to fire; firing the batch one timer at a time")
        return self._run_batch_isolated()

    def _run_batch_isolated(self) -> tuple[int, list[int]]:
        notification_ids: list[int] = []
        gates = dict(self._pass_gates)
        with session_scope(self._engine) as session:
            timers = repository.claim_due(session=session, moment=now(), limit=self._batch_size)
            for timer in timers:
                savepoint = session.begin_nested()
                try:
                    notification_ids += self._fire(session, timer)
                    savepoint.commit()
                except OperationalError:
                    # The database itself failed (locked, connection lost): leave the timers
                    # pending for the next pass.
                    savepoint.rollback()
                    raise
                except Exception as exc:
                    # A timer that cannot fire (a bug, bad data) must not block the others or
                    # be retried forever: it is closed with the error as its reason.
                    savepoint.rollback()
                    logger.exception("timer %s could not fire", timer.id)
                    session.refresh(timer)
                    repository.finish_timer(
                        session=session,
                        timer=timer,
                        status=TimerStatus.SKIPPED,
                        reason=f"error while firing: {type(exc).__name__}",
                    )
            released = self._held(session, notification_ids, gates)
        self._pass_gates = gates
        return len(timers), released

    def _held(self, session: Session, notification_ids: list[int], gates: PassGates) -> list[int]:
        """The ids to enqueue once the gated rules' sends of this batch are put on hold (in
        ``gates``, the pass's gates)."""
        if self._hold is None:
            return notification_ids
        return self._hold.hold(session, notification_ids, batch=True, pass_gates=gates).released

    def start(self) -> None:
        """Run passes in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="crm-notify-scheduler", daemon=True)
        self._thread.start()

    def run_forever(self) -> None:
        """Run passes in this thread until :meth:`stop` (the standalone scheduler)."""
        self._loop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                logger.exception("scheduler pass failed; trying again in %.1fs", self._interval_s)
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        """Stop after the pass in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
