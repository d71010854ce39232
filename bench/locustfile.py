"""Locust's side of ``python -m bench.soak --generator locust``: the soak's batches on schedule.

Run by :mod:`bench.soak` in a process of its own (locust monkey-patches the standard library
with gevent, so it is never imported by the soak itself)::

    locust -f bench/locustfile.py --headless --users U --spawn-rate U --run-time Ts \\
        --host API --soak-hosts API,API2 --soak-batches batches.jsonl --soak-rate B \\
        --soak-summary summary.json --only-summary

with the write key in ``LOCUST_SOAK_API_KEY`` and the repository root on ``PYTHONPATH``. Each
line of ``--soak-batches`` is one ``/v1/batch`` body (:func:`bench.workload.make_batches`),
posted once with the key as Basic auth (:func:`bench.load.basic_auth`).

The schedule is a fixed rate of ``B`` batches per second, ``B / U`` per user: user ``k`` posts
batches ``k, k + U, k + 2U, ...``, batch ``i`` due ``i / B`` seconds after the start, to API
``i mod len(hosts)`` (a load balancer's round robin). ``wait_time`` waits for the next due time
rather than using ``constant_throughput``, whose pacing counts from a user's start and last run
and so would undo the users' staggered first posts (the users would post in bursts); a user
whose answer came late posts its next batch at once. When every batch is answered the run
quits; ``--run-time`` is only a bound. When locust quits, ``--soak-summary`` gets the
schedule's figures (first and last request, batches posted and accepted, errors, the largest
delay behind schedule) and locust's own from its stats (requests, failures, requests/s,
response-time percentiles) as JSON. Not its ``--csv`` files: it writes them once a second, so
they miss the last second of a run that quits when done.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]  # no stubs; locust brings it
from locust import HttpUser, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.stats import RequestStats

from bench.load import basic_auth

#: The environment variable holding the write key (kept off the command line).
API_KEY_VARIABLE = "LOCUST_SOAK_API_KEY"


@dataclass
class Schedule:
    """The batches, where and when each is due, and what happened to them."""

    bodies: list[bytes]
    hosts: list[str]
    rate: float  # batches per second over all users
    users: int  # locust's --users: each posts every users-th batch
    started: float | None = None  # time.monotonic() of batch 0's due time
    started_at: float | None = None  # the same, wall clock
    finished_at: float | None = None  # wall clock of the last answer
    spawned: int = 0
    posted: list[int] = field(default_factory=list)
    accepted: int = 0
    errors: list[str] = field(default_factory=list)
    lag_s_max: float = 0.0

    def due(self, index: int) -> float:
        """When batch ``index`` is due (``time.monotonic()``)."""
        assert self.started is not None
        return self.started + index / self.rate

    def summary(self, stats: RequestStats) -> dict[str, Any]:
        """What :mod:`bench.soak` reads back: the schedule's figures and, under ``locust``,
        locust's own (times in milliseconds, its percentiles rounded to two digits)."""
        total = stats.total
        return {
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "batches": len(self.bodies),
            "posted": self.posted,
            "accepted": self.accepted,
            "errors": self.errors,
            "lag_s_max": round(self.lag_s_max, 3),
            "locust": {
                "requests": total.num_requests,
                "failures": total.num_failures,
                "requests_per_s": round(total.total_rps, 2),
                "requests_by_name": {e.name: e.num_requests for e in stats.entries.values()},
                "response_time_ms": {
                    "p50": total.get_response_time_percentile(0.50),
                    "p95": total.get_response_time_percentile(0.95),
                    "p99": total.get_response_time_percentile(0.99),
                    "max": round(total.max_response_time, 1),
                    "mean": round(total.avg_response_time, 1),
                },
            },
        }


_schedule: Schedule | None = None


# locust's EventHook.add_listener is untyped, hence the ignores.
@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _add_options(parser: Any) -> None:
    parser.add_argument("--soak-batches", default="", help="file of /v1/batch bodies, one a line")
    parser.add_argument("--soak-hosts", default="", help="API base URLs, comma-separated")
    parser.add_argument("--soak-rate", type=float, default=1.0, help="batches per second")
    parser.add_argument("--soak-summary", default="", help="write the schedule's figures here")


@events.init.add_listener  # type: ignore[untyped-decorator]
def _load(environment: Environment, **_kwargs: Any) -> None:
    global _schedule
    options = environment.parsed_options
    if options is None or not options.soak_batches:
        return
    bodies = Path(options.soak_batches).read_bytes().splitlines()
    hosts = [h for h in options.soak_hosts.split(",") if h] or [str(environment.host)]
    _schedule = Schedule(bodies, hosts, rate=options.soak_rate, users=options.num_users)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _write_summary(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if _schedule is not None and options is not None and options.soak_summary:
        if _schedule.finished_at is None:  # stopped by --run-time or a signal
            _schedule.finished_at = time.time()
        Path(options.soak_summary).write_text(json.dumps(_schedule.summary(environment.stats)))


class SoakUser(HttpUser):
    """Posts every ``users``-th batch of the schedule, each when due."""

    def on_start(self) -> None:
        if _schedule is None:
            raise StopUser()  # no --soak-batches: nothing to post
        self.schedule = _schedule
        if self.schedule.started is None:
            self.schedule.started = time.monotonic()
            self.schedule.started_at = time.time()
        self.next_index = self.schedule.spawned
        self.schedule.spawned += 1
        self.client.headers.update(
            {
                "Authorization": basic_auth(os.environ[API_KEY_VARIABLE]),
                "Content-Type": "application/json",
            }
        )
        time.sleep(max(0.0, self.schedule.due(self.next_index) - time.monotonic()))

    def wait_time(self) -> float:
        return max(0.0, self.schedule.due(self.next_index) - time.monotonic())

    @task
    def post_batch(self) -> None:
        schedule, index = self.schedule, self.next_index
        if index >= len(schedule.bodies):
            raise StopUser()
        self.next_index += schedule.users
        schedule.lag_s_max = max(schedule.lag_s_max, time.monotonic() - schedule.due(index))
        schedule.posted.append(index)
        number = index % len(schedule.hosts)
        with self.client.post(
            f"{schedule.hosts[number]}/v1/batch",
            data=schedule.bodies[index],
            name=f"/v1/batch api-{number}",
            timeout=60,
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                schedule.accepted += 1
            else:
                error = f"{response.status_code} {response.error or response.text[:200]}"
                schedule.errors.append(error)
                response.failure(error)
        if schedule.accepted + len(schedule.errors) == len(schedule.bodies):  # the last answer
            schedule.finished_at = time.time()
            # In a greenlet of its own: runner.quit() in a user's greenlet is cut short when it
            # stops that user (and User.run swallows StopTest), leaving the run to --run-time.
            gevent.spawn(self.environment.runner.quit)
