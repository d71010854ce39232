"""Failover: an ordered list of ESPs, each behind a circuit breaker.

A send goes to the first ESP whose breaker is closed. A transient failure counts against that
ESP; after ``threshold`` in a row its breaker opens and sends go to the next ESP at once, until
``cooldown_s`` has passed and one trial send (half-open) shows whether it is back. A permanent
failure does not fail over: the next ESP would refuse the same message.

A message is never accepted by two ESPs: failover happens only after failures that prove the
ESP did not take the message (refused connection, an error answer). When the outcome is unknown
(the request went out and no answer came back, see ``EspTransientError.maybe_accepted``), the
notification is pinned to that ESP and only ever retried there.

Breakers are per process: each worker process learns an ESP's outage from its own sends. A
lone ESP has no breaker: with nothing to fail over to, resting it would only delay its mail.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from crm_notify.errors import EspPermanentError, EspTransientError
from crm_notify.esp.base import EspAdapter, SendResult

logger = logging.getLogger(__name__)


class CircuitBreaker:
    """Counts transient failures of one ESP in a row; open means "skip it for now".

    Parameters:
        threshold: failures in a row that open the breaker.
        cooldown_s: seconds it stays open before one trial send is let through.
        clock: monotonic seconds (a seam for tests).
    """

    def __init__(
        self,
        *,
        threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        """Whether sends skip this ESP now (a finished cooldown lets one trial through)."""
        with self._lock:
            return self._opened_at is not None and not self._trial_due()

    def allow(self) -> bool:
        """Whether a send may go to this ESP now; takes the trial slot when half-open."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial_due():
                self._trial_running = True
                return True
            return False

    def record_success(self) -> None:
        """The ESP took a message: close the breaker."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def release_trial(self) -> None:
        """A trial send ended without telling whether the ESP is back: let another try."""
        with self._lock:
            self._trial_running = False

    def record_failure(self) -> bool:
        """The ESP failed transiently; return whether the breaker is (now) open."""
        with self._lock:
            self._failures += 1
            self._trial_running = False
            if self._opened_at is not None or self._failures >= self.threshold:
                self._opened_at = self._clock()
                return True
            return False

    def _trial_due(self) -> bool:
        assert self._opened_at is not None
        return not self._trial_running and self._clock() - self._opened_at >= self.cooldown_s


@dataclass(frozen=True)
class NamedEsp:
    """One ESP of the failover list: its configured name, adapter and breaker."""

    name: str
    adapter: EspAdapter
    breaker: CircuitBreaker


class EspChain:
    """The ESPs a process delivers through, in failover order.

    Parameters:
        esps: (name, adapter) pairs, first the primary.
        threshold: transient failures in a row after which an ESP is skipped.
        cooldown_s: seconds a skipped ESP rests before a trial send.
    """

    def __init__(
        self,
        esps: Sequence[tuple[str, EspAdapter]],
        *,
        threshold: int = 5,
        cooldown_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not esps:
            raise ValueError("EspChain needs at least one ESP")
        if len(esps) == 1:  # nothing to fail over to: resting the only ESP would only delay
            threshold = sys.maxsize
        self.esps = [
            NamedEsp(
                name,
                adapter,
                CircuitBreaker(threshold=threshold, cooldown_s=cooldown_s, clock=clock),
            )
            for name, adapter in esps
        ]
        self._by_name = {esp.name: esp for esp in self.esps}

    @classmethod
    def single(cls, adapter: EspAdapter) -> EspChain:
        """A chain of one ESP, named after its adapter (no failover)."""
        return cls([(adapter.name, adapter)])

    @property
    def names(self) -> list[str]:
        """The ESP names, in order."""
        return [esp.name for esp in self.esps]

    def send_text(self, text: str, *, pinned: str | None = None) -> SendResult:
        """Deliver a stored message through the first available ESP.

        Parameters:
            pinned: the ESP that may already have this message: only it is tried.

        Returns:
            The result, with ``esp`` set to the configured name of the ESP that took it.

        Raises:
            EspTransientError: no ESP took it (``esp`` names the last one tried; with
                ``maybe_accepted`` the notification must be pinned to it).
            EspPermanentError: the ESP refused it for good.
        """
        if pinned is not None:
            if pinned not in self._by_name:  # removed from the configuration since
                raise EspTransientError(
                    pinned,
                    f"the message may already be with ESP {pinned!r}, which is no longer "
                    f"configured ({', '.join(self.names)}); it is not sent through another: "
                    "configure that ESP again, or cancel the notification",
                )
            return self._send_via(self._by_name[pinned], text)
        last_error: EspTransientError | None = None
        for esp in self.esps:
            if not esp.breaker.allow():
                continue
            try:
                return self._send_via(esp, text)
            except EspTransientError as exc:
                if exc.maybe_accepted or not esp.breaker.is_open:
                    raise
                last_error = exc
                logger.warning("ESP %s is failing; sends go to the next ESP", esp.name)
        if last_error is not None:
            raise last_error
        raise EspTransientError(
            self.esps[0].name,
            f"every ESP is resting after failures ({', '.join(self.names)})",
        )

    def _send_via(self, esp: NamedEsp, text: str) -> SendResult:
        try:
            result = esp.adapter.send_text(text)
        except EspTransientError as exc:
            esp.breaker.record_failure()
            exc.esp = esp.name
            raise
        except EspPermanentError as exc:  # the ESP answered: it is up, the message is bad
            esp.breaker.record_success()
            exc.esp = esp.name
            raise
        except BaseException:
            esp.breaker.release_trial()
            raise
        esp.breaker.record_success()
        return SendResult(esp=esp.name, provider_message_id=result.provider_message_id)

    def close(self) -> None:
        """Close every adapter."""
        for esp in self.esps:
            esp.adapter.close()
