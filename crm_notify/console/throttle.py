"""Throttles of the console (this process's): sign-in attempts per client address, with a cap on
how many Argon2 hashes run at once (each takes 64 MiB and tens of milliseconds), so a flood of
sign-in attempts can neither guess passwords quickly nor exhaust the service's memory; and test
copies per user, so the ESP is not used to flood an agent's mailbox."""

from __future__ import annotations

import threading
import time
from collections import deque

#: Sign-in attempts one client address may make per window, and the window.
MAX_ATTEMPTS = 20
WINDOW_S = 15 * 60
#: Test copies one user may send per window, and the window.
MAX_TEST_COPIES = 10
TEST_COPY_WINDOW_S = 10 * 60
#: Password hashes verified at once in this process.
MAX_CONCURRENT_HASHES = 2
#: Client addresses remembered at most (the oldest are forgotten first).
MAX_CLIENTS = 10_000


class SlidingWindowLimit:
    """Counts attempts per key (a client address, a user) in a sliding window.

    Parameters:
        max_attempts: attempts allowed per window.
        window_s: the window, in seconds.
    """

    def __init__(self, *, max_attempts: int = MAX_ATTEMPTS, window_s: float = WINDOW_S) -> None:
        self.max_attempts = max_attempts
        self.window_s = window_s
        self._attempts: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        """Count an attempt of ``client``; ``False`` when it has made too many lately."""
        moment = time.monotonic()
        with self._lock:
            attempts = self._attempts.pop(client, None) or deque()
            while attempts and attempts[0] <= moment - self.window_s:
                attempts.popleft()
            allowed = len(attempts) < self.max_attempts
            if allowed:
                attempts.append(moment)
            self._attempts[client] = attempts  # most recent last
            while len(self._attempts) > MAX_CLIENTS:
                del self._attempts[next(iter(self._attempts))]
            return allowed


class SignInThrottle(SlidingWindowLimit):
    """Sign-in attempts per client address, and the hashes running at once (``hashing``)."""

    def __init__(self) -> None:
        super().__init__(max_attempts=MAX_ATTEMPTS, window_s=WINDOW_S)
        self.hashing = threading.BoundedSemaphore(MAX_CONCURRENT_HASHES)
