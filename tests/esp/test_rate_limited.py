"""The ESP sending rate: exact across processes with Redis, and across threads in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis

from crm_notify.errors import EspTransientError
from crm_notify.esp.base import EspAdapter
from crm_notify.esp.file import FileAdapter
from crm_notify.esp.rate_limited import (
    LocalSendRateLimiter,
    RateLimitedAdapter,
    RedisSendRateLimiter,
    SendRateLimiter,
    window_for,
)

ROOT = Path(__file__).resolve().parents[2]
#: Scheduling slack: a send is timed just after the limiter lets it go, not at that instant.
SLACK_S = 0.05


class RecordingAdapter(EspAdapter):
    """Records when each message reached it."""

    name = "recording"

    def __init__(self) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()

    def _deliver(self, message: EmailMessage) -> str | None:
        with self._lock:
            self.times.append(time.time())
        return None


def message(index: int) -> EmailMessage:
    mail = EmailMessage()
    mail["To"] = "someone@example.com"
    mail["From"] = "shop@example.com"
    mail["Subject"] = f"message {index}"
    mail["Message-ID"] = f"<m{index}-{time.monotonic_ns()}@example.com>"
    mail.set_content("hello")
    return mail


def busiest_window(times: list[float], window_s: float) -> int:
    """The most sends in any half-open window ``[t, t + window_s)`` starting at a send."""
    ordered = sorted(times)
    return max(
        sum(1 for other in ordered if start <= other < start + window_s) for start in ordered
    )


def test_window_for_rates() -> None:
    assert window_for(10) == (10, 1.0)
    assert window_for(2.5) == (2, 1.0)
    assert window_for(1) == (1, 1.0)
    assert window_for(0.5) == (1, 2.0)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive"):
            window_for(bad)


# -- across processes (Redis) -----------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from email.message import EmailMessage

    import redis

    from crm_notify.esp.base import EspAdapter
    from crm_notify.esp.rate_limited import RateLimitedAdapter, RedisSendRateLimiter

    url, key, rate, count, out, go = sys.argv[1:]
    times = []

    class Recording(EspAdapter):
        name = "recording"

        def _deliver(self, message):
            times.append(time.time())
            return None

    client = redis.Redis.from_url(url)
    limiter = RedisSendRateLimiter(client, key, float(rate))
    adapter = RateLimitedAdapter(Recording(), rate_per_s=float(rate), limiter=limiter)
    while time.time() < float(go):
        time.sleep(0.001)
    for index in range(int(count)):
        mail = EmailMessage()
        mail["To"] = "someone@example.com"
        mail.set_content("hello")
        adapter.send(mail)
    with open(out, "w") as handle:
        json.dump(times, handle)
    """
)


def test_two_processes_share_the_redis_rate(
    redis_server_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    # Given two worker processes sending 10 messages each through one Redis window of 5/s,
    # both starting at the same instant
    rate, count = 5, 10
    go = time.time() + 1.5
    outputs = [tmp_path / f"times-{index}.json" for index in range(2)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                redis_server_url,
                f"{redis_namespace}:esp-rate",
                str(rate),
                str(count),
                str(output),
                str(go),
            ],
            env=env,
        )
        for output in outputs
    ]

    # When both have finished
    for child in children:
        assert child.wait(timeout=60) == 0

    # Then each sent all of its messages, and no second held more than 5 of the 20
    times = [json.loads(output.read_text()) for output in outputs]
    assert [len(part) for part in times] == [count, count]
    merged = times[0] + times[1]
    assert busiest_window(merged, 1.0 - SLACK_S) <= rate
    # And the two shared the rate (each alone at 5/s would have finished within 2 seconds)
    assert max(merged) - min(merged) >= (2 * count / rate - 1) - SLACK_S
    assert min(times[0]) < max(times[1]) and min(times[1]) < max(times[0])


def test_redis_limiter_in_threads(redis_server_url: str, redis_namespace: str) -> None:
    # Given one Redis limiter of 1 message per 0.5 s (2/s) shared by 3 threads
    client = redis.Redis.from_url(redis_server_url)
    limiter = RedisSendRateLimiter(client, f"{redis_namespace}:esp-rate", 2)
    inner = RecordingAdapter()
    adapter = RateLimitedAdapter(inner, rate_per_s=2, limiter=limiter)

    def send(offset: int) -> None:
        for index in range(2):
            adapter.send(message(offset + index))

    threads = [threading.Thread(target=send, args=(10 * n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then the 6 messages took 2 seconds at least, never more than 2 in a second
    assert len(inner.times) == 6
    assert busiest_window(inner.times, 1.0 - SLACK_S) <= 2
    assert max(inner.times) - min(inner.times) >= 2 - SLACK_S
    # And the window's key expires by itself
    assert 0 < client.pttl(f"{redis_namespace}:esp-rate") <= 2000
    client.close()


def test_redis_unreachable_is_a_transient_failure() -> None:
    # Given a limiter whose Redis does not answer (nothing listens on port 1)
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    adapter = RateLimitedAdapter(
        RecordingAdapter(),
        rate_per_s=5,
        limiter=RedisSendRateLimiter(client, "crm-notify-test:esp-rate", 5),
    )

    # When sending, then the failure is worth retrying, and nothing was delivered
    with pytest.raises(EspTransientError, match="sending-rate limiter unavailable"):
        adapter.send(message(1))
    assert adapter.inner.times == []  # type: ignore[attr-defined]


# -- in-process -------------------------------------------------------------------------------


def test_local_limiter_across_threads() -> None:
    # Given 4 threads sending 6 messages each through an adapter limited to 8/s
    inner = RecordingAdapter()
    adapter = RateLimitedAdapter(inner, rate_per_s=8)

    def send(offset: int) -> None:
        for index in range(6):
            adapter.send(message(offset + index))

    threads = [threading.Thread(target=send, args=(100 * n,)) for n in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then all 24 went, never more than 8 in a second, so it took 2 seconds at least
    assert len(inner.times) == 24
    assert busiest_window(inner.times, 1.0 - SLACK_S) <= 8
    assert time.monotonic() - started >= 2 - SLACK_S


def test_local_limiter_waits_for_the_oldest_send_to_leave() -> None:
    limiter = LocalSendRateLimiter(4)
    taken = []
    for _ in range(5):
        assert limiter.acquire(max_wait_s=5)
        taken.append(time.monotonic())
    # The 5th of 4/s waits for the first to leave its second
    assert taken[4] - taken[0] >= 1 - SLACK_S
    assert taken[3] - taken[0] < 0.5
    slow = LocalSendRateLimiter(0.5)
    assert (slow.limit, slow.window_s) == (1, 2.0)


def test_a_send_that_would_wait_too_long_is_retried_later_instead(tmp_path: Path) -> None:
    # Given one message per 10 s, already taken
    adapter = RateLimitedAdapter(FileAdapter(tmp_path / "outbox"), rate_per_s=0.1, max_wait_s=0.2)
    adapter.send(message(1))
    # When the next would wait longer than max_wait_s, Then it fails as transient at once
    started = time.monotonic()
    with pytest.raises(EspTransientError, match=r"no slot within 0\.2 s") as excinfo:
        adapter.send(message(2))
    assert time.monotonic() - started < 0.2
    assert excinfo.value.retry_after_s == 0.2
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_adapter_delegates_to_the_inner_adapter(tmp_path: Path) -> None:
    # Given a file adapter behind the rate limit
    inner = FileAdapter(tmp_path / "outbox")
    adapter = RateLimitedAdapter(inner, rate_per_s=100)

    # Then it has the inner adapter's name and writes through it, text or message
    assert adapter.name == "file"
    result = adapter.send(message(1))
    assert result.esp == "file"
    text = message(2).as_string().replace("\n", "\r\n")
    assert adapter.send_text(text).esp == "file"
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 2

    # And closing closes the limiter too
    closed: list[str] = []

    class ClosingLimiter(LocalSendRateLimiter):
        def close(self) -> None:
            closed.append("limiter")

    RateLimitedAdapter(inner, rate_per_s=1, limiter=ClosingLimiter(1)).close()
    assert closed == ["limiter"]


def test_base_limiter_names_the_missing_hook() -> None:
    class Unfinished(SendRateLimiter):
        pass

    with pytest.raises(NotImplementedError, match=r"Unfinished\.acquire"):
        Unfinished().acquire(1)
