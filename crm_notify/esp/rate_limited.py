"""The ESP sending rate: an adapter that waits for a limiter before each message it hands over.

A limiter allows at most N messages in any sliding window of W seconds: for a rate of 1/s or
more, N is the rate's whole part and W one second (2.5/s sends 2 per second); below 1/s, one
message per ``1 / rate`` seconds. :class:`RedisSendRateLimiter` holds the window in Redis, so it
is exact across every worker process (Redis's clock decides, not the workers'); the in-process
:class:`LocalSendRateLimiter` serves the embedded default, where one process sends everything.
"""

from __future__ import annotations

import collections
import math
import threading
import time
import uuid
from email.message import EmailMessage

import redis

from crm_notify.errors import EspTransientError
from crm_notify.esp.base import EspAdapter, SendResult

#: Longest a send waits for the rate limiter before it is retried later instead.
DEFAULT_MAX_WAIT_S = 60.0


def window_for(rate_per_s: float) -> tuple[int, float]:
    """The (messages, seconds) sliding window enforcing ``rate_per_s``.

    Raises:
        ValueError: the rate is not a positive, finite number.
    """
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise ValueError(f"the sending rate must be a positive number, got {rate_per_s!r}")
    if rate_per_s >= 1:
        return int(rate_per_s), 1.0
    return 1, 1 / rate_per_s


class SendRateLimiter:
    """Base class of sending-rate limiters; subclasses implement :meth:`acquire`."""

    def acquire(self, max_wait_s: float) -> bool:
        """Block until one more message may be sent, and count it; ``False`` (nothing counted)
        when that would take longer than ``max_wait_s``."""
        raise NotImplementedError(f"{type(self).__name__}.acquire")

    def close(self) -> None:
        """Release what the limiter holds (default: nothing)."""


class LocalSendRateLimiter(SendRateLimiter):
    """A thread-safe limiter for one process (a sliding log of the last window's sends).

    Parameters:
        rate_per_s: messages per second.
    """

    def __init__(self, rate_per_s: float) -> None:
        self.limit, self.window_s = window_for(rate_per_s)
        self._sent: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def acquire(self, max_wait_s: float) -> bool:
        """Block until the window has room, then take a slot (see the base class)."""
        deadline = time.monotonic() + max_wait_s
        while True:
            with self._lock:
                moment = time.monotonic()
                while self._sent and self._sent[0] <= moment - self.window_s:
                    self._sent.popleft()
                if len(self._sent) < self.limit:
                    self._sent.append(moment)
                    return True
                wait_s = self._sent[0] + self.window_s - moment
            if moment + wait_s > deadline:
                return False
            time.sleep(max(wait_s, 0.001))


#: Takes a slot in the sliding window (a sorted set of send times in microseconds, Redis's
#: clock) when there is one and returns 0, else returns the microseconds until the oldest
#: send leaves the window. KEYS[1]: the set; ARGV: slots, window (us), a unique member.
_ACQUIRE_SCRIPT = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local limit = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_us - window_us)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now_us, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window_us / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(tonumber(oldest[2]) + window_us - now_us, 1)
"""


class RedisSendRateLimiter(SendRateLimiter):
    """A limiter shared by every process using the same Redis ``key``.

    Parameters:
        client: the Redis client (not closed by the limiter).
        key: the key of the window, e.g. ``"crm-notify:esp-rate"``.
        rate_per_s: messages per second, across all processes.
    """

    def __init__(self, client: redis.Redis, key: str, rate_per_s: float) -> None:
        self.limit, self.window_s = window_for(rate_per_s)
        self.key = key
        self._client = client
        self._script = client.register_script(_ACQUIRE_SCRIPT)

    def acquire(self, max_wait_s: float) -> bool:
        """Block until the shared window has room, then take a slot (see the base class).

        Raises:
            redis.RedisError: Redis cannot be reached.
        """
        window_us = round(self.window_s * 1_000_000)
        deadline = time.monotonic() + max_wait_s
        while True:
            member = uuid.uuid4().hex
            wait_us = int(self._script(keys=[self.key], args=[self.limit, window_us, member]))
            if wait_us == 0:
                return True
            if time.monotonic() + wait_us / 1_000_000 > deadline:
                return False
            time.sleep(wait_us / 1_000_000)


class RateLimitedAdapter(EspAdapter):
    """Wraps an adapter so messages reach it no faster than the limiter allows.

    Parameters:
        inner: the adapter that delivers.
        rate_per_s: messages per second (``CRM_NOTIFY_ESP_RATE``).
        limiter: the shared limiter; a :class:`LocalSendRateLimiter` when ``None``.
        max_wait_s: longest wait for a slot; then the attempt fails as transient and is
            retried later. It must stay well below the sending lease, or a message waiting
            here could be claimed and sent by another worker meanwhile.
    """

    def __init__(
        self,
        inner: EspAdapter,
        *,
        rate_per_s: float,
        limiter: SendRateLimiter | None = None,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        self.inner = inner
        self.max_wait_s = max_wait_s
        self.name = inner.name
        self.rate_per_s = rate_per_s
        self.limiter = limiter or LocalSendRateLimiter(rate_per_s)

    def send(self, message: EmailMessage) -> SendResult:
        """Wait for the limiter, then hand ``message`` to the inner adapter.

        Raises:
            EspTransientError: the inner adapter's, or the limiter's store is unreachable.
            EspPermanentError: the inner adapter's.
        """
        self._acquire()
        return self.inner.send(message)

    def send_text(self, text: str) -> SendResult:
        """Wait for the limiter, then hand ``text`` to the inner adapter (see
        :meth:`EspAdapter.send_text`)."""
        self._acquire()
        return self.inner.send_text(text)

    def close(self) -> None:
        """Close the inner adapter and the limiter."""
        try:
            self.inner.close()
        finally:
            self.limiter.close()

    def _acquire(self) -> None:
        try:
            acquired = self.limiter.acquire(self.max_wait_s)
        except redis.RedisError as exc:
            raise EspTransientError(self.name, f"sending-rate limiter unavailable: {exc}") from exc
        if not acquired:
            raise EspTransientError(
                self.name,
                f"sending rate {self.rate_per_s}/s: no slot within {self.max_wait_s:g} s",
                retry_after_s=self.max_wait_s,
            )
