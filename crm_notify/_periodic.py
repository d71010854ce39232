"""A pass run every few seconds in a daemon thread, until stopped: the base of the background
services that poll the database (the outbox relay, the lifecycle relay, the subscription
dispatcher). A pass failing because the broker or the database is down logs one line."""

from __future__ import annotations

import logging
import threading
from typing import Any

from crm_notify._outages import outage

logger = logging.getLogger(__name__)


class Periodic:
    """Runs :meth:`run_once` every ``interval_s`` seconds in a daemon thread; a failed pass is
    logged and the next one runs on time. Subclasses implement :meth:`run_once`.

    Parameters:
        interval_s: seconds between passes.
        name: the thread's name.
    """

    def __init__(self, *, interval_s: float, name: str) -> None:
        self._interval_s = interval_s
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> Any:
        """Do one pass."""
        raise NotImplementedError(f"{type(self).__name__}.run_once")

    def start(self) -> None:
        """Run passes in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.run_once()
            except Exception as exc:
                down = outage(exc)
                if down is not None:  # one line per pass, not a traceback, while it lasts
                    logger.warning(
                        "%s pass failed, %s; trying again in %.1fs",
                        self._name,
                        down,
                        self._interval_s,
                    )
                else:
                    logger.exception(
                        "%s pass failed; trying again in %.1fs", self._name, self._interval_s
                    )

    def stop(self, timeout_s: float = 60) -> None:
        """Stop, after the pass in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
