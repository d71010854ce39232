"""The relay: finds notifications that should be on the broker but may not be, and requeues them.

Requeueing is always safe: a delivery first claims its row, so a duplicate message is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy.engine import Engine

from crm_notify._periodic import Periodic
from crm_notify.db import session_scope
from crm_notify.outbox import repository

logger = logging.getLogger(__name__)


class Relay(Periodic):
    """Periodically re-enqueues stranded notifications.

    Parameters:
        engine: the database.
        enqueue: hands ids to the broker and marks them ``queued``.
        interval_s: seconds between passes; ``pending`` rows older than twice this are requeued.
        lease_s: seconds after which ``queued``/``sending`` rows count as lost.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        enqueue: Callable[[Sequence[int]], None],
        interval_s: float,
        lease_s: float,
    ) -> None:
        super().__init__(interval_s=interval_s, name="crm-notify-relay")
        self._engine = engine
        self._enqueue = enqueue
        self._lease = timedelta(seconds=lease_s)

    def run_once(self) -> int:
        """Do one pass; return how many notifications were requeued."""
        with session_scope(self._engine) as session:
            ids = repository.find_stranded(
                session=session,
                pending_grace=timedelta(seconds=2 * self._interval_s),
                lease=self._lease,
            )
        return self._requeue(ids)

    def requeue_all_undelivered(self) -> int:
        """Requeue every unfinished notification (start-up of the in-process broker)."""
        with session_scope(self._engine) as session:
            ids = repository.find_undelivered(session=session)
        return self._requeue(ids)

    def _requeue(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        self._enqueue(ids)
        logger.info("relay requeued %d notifications", len(ids))
        return len(ids)

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the thread and wait for the pass in progress."""
        super().stop(timeout_s)
