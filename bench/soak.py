"""``python -m bench.soak``: events at a fixed rate for minutes, several workers, end-to-end
latency and memory over time.

The production shape on one machine: PostgreSQL and Redis (this machine's), ``--api`` processes
of ``crm-notify serve``, ``crm-notify worker`` with ``--workers`` processes, and the SMTP sink in
its own process. Batches of 100 calls (10 customers, 20 notifications: :mod:`bench.workload`)
are posted on a fixed schedule for ``--rate`` events per second for ``--duration`` seconds,
spread over the API processes in turn (as a load balancer would); then the run waits for the
backlog to drain. The load generator (``--generator``) is one of:

- ``builtin`` (the default): a pool of ``--users`` threads in this process; batch ``i`` goes
  out ``i * 100 / rate`` seconds after the start, open loop (a slow answer does not slow the
  schedule down). No extra dependency; the soak figures of 2026-12-06 came from it.
- ``locust``: ``locust --headless`` with :mod:`bench.locustfile`, in its own process (so
  gevent's monkey-patching stays out of this one): the same batches on the same schedule from
  a standard tool (``make bench`` uses it; the figures of 2026-12-07 came from it),
  ``--users`` users each posting every ``--users``-th batch when due. Nearly open loop: a
  user waits for its answer, and posts its next batch at once if that came late, so the
  schedule holds while answers take under ``users * 100 / rate`` seconds. Needs the
  ``bench`` extra (``pip install -e '.[bench]'``); its log is ``locust.log`` in the results.

Reported: events accepted per second; messages arriving at the sink per second (over the
load, and overall); end-to-end latency of each notification from its event's arrival
(``event.received_at``) to the sink accepting the message, as p50/p95/p99/max; the resident
memory of the API and worker process groups every ``--sample`` seconds; and the exactly-once
check (each notification ``sent`` and received once). With locust also its own figures, under
``generator``: requests, failures, requests/s, HTTP response-time percentiles (milliseconds)
and the largest delay of a batch behind its schedule. Everything started is stopped and the
throw-away database and Redis keys are removed at the end (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench import services
from bench.load import basic_auth
from bench.scenarios import MAIL_FROM, copy_rules
from bench.workload import Batch, make_batches
from crm_notify.db import make_engine

#: Calls per batch (10 customers of :mod:`bench.workload`).
CALLS_PER_BATCH = 100
#: The load generators: this module's thread pool, or locust (the ``bench`` extra).
GENERATORS = ("builtin", "locust")
#: The ``locust`` console script of this virtual environment.
LOCUST = str(Path(sys.executable).parent / "locust")
#: Where :mod:`bench.locustfile` finds the write key (its ``API_KEY_VARIABLE``; not imported
#: from there, as importing locust would monkey-patch this process with gevent).
LOCUST_API_KEY_VARIABLE = "LOCUST_SOAK_API_KEY"


@dataclass
class Sample:
    """Memory (MiB, resident) of each process group at one moment of the run."""

    at_s: float
    rss_mib: dict[str, float]


@dataclass
class Load:
    """What the load generator did."""

    started_at: float  # wall clock of the first request
    seconds: float  # from the first request to the last answer
    posted: list[int]  # indexes of the batches posted
    accepted: int  # calls answered 200
    errors: list[str]
    figures: dict[str, Any] = field(default_factory=dict)  # the generator's own (locust's)


@dataclass
class SoakResult:
    """The figures of one run."""

    settings: dict[str, Any]
    posted: int = 0
    accepted: int = 0
    errors: list[str] = field(default_factory=list)
    load_seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=" ".join(__doc__.split("\n\n")[0].split()) if __doc__ else None,
        epilog="Example: python -m bench.soak --rate 200 --duration 300 --workers 2 --api 1 "
        "--generator locust. Needs PostgreSQL and Redis on this machine (see --postgres-url, "
        "--redis-url); --generator locust needs the bench extra (pip install -e '.[bench]').",
    )
    parser.add_argument("--rate", type=float, default=200, help="events per second (200)")
    parser.add_argument("--duration", type=float, default=300, help="seconds of load (300)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes (2); 0: none, to measure ingest alone (nothing is delivered)",
    )
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process (4)")
    parser.add_argument("--api", type=int, default=1, help="crm-notify serve processes (1)")
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="builtin",
        help="builtin (default): a thread pool in this process posts on an exact schedule; "
        "locust: locust --headless in its own process posts the same batches at the same rate "
        "and reports its own request figures too",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=16,
        help="concurrent clients: locust users, each posting every USERS-th batch, or the "
        "built-in generator's threads (16)",
    )
    parser.add_argument("--sample", type=float, default=10, help="seconds between memory samples")
    parser.add_argument("--drain", type=float, default=180, help="seconds to wait for the backlog")
    parser.add_argument(
        "--settle", type=float, default=10, help="seconds the workers get to start (10)"
    )
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--results-dir", type=Path, default=services.ROOT / "bench" / "results" / "soak"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def group_rss_mib(leader_pid: int) -> float:
    """Resident memory of every process in the process group led by ``leader_pid``, in MiB."""
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) != leader_pid:  # field 5 of stat: the process group
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return round(total_kib / 1024, 1)


def post_at_rate(
    urls: Sequence[str], api_key: str, bodies: Sequence[bytes], *, rate: float, clients: int
) -> Load:
    """POST each body to ``/v1/batch`` on schedule (``rate`` events per second) from ``clients``
    threads, spread over ``urls`` in turn."""
    interval_s = CALLS_PER_BATCH / rate
    accepted, errors, lock = 0, [], threading.Lock()
    headers = {"Authorization": basic_auth(api_key), "Content-Type": "application/json"}
    local = threading.local()
    opened: list[httpx.Client] = []
    targets = itertools.cycle(urls)

    def post(body: bytes, url: str) -> None:
        nonlocal accepted
        clients = getattr(local, "clients", None)
        if clients is None:  # one keep-alive client per thread and API process
            clients = local.clients = {u: httpx.Client(headers=headers, timeout=60) for u in urls}
            with lock:
                opened.extend(clients.values())
        try:
            response = clients[url].post(f"{url}/v1/batch", content=body)
            error = None if response.status_code == 200 else f"{response.status_code}"
        except httpx.HTTPError as exc:
            error = repr(exc)
        with lock:
            if error is None:
                accepted += CALLS_PER_BATCH
            else:
                errors.append(error)

    started, started_at = time.monotonic(), time.time()
    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="soak-client") as pool:
        for index, body in enumerate(bodies):
            wait = started + index * interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            pool.submit(post, body, next(targets))
    seconds = time.monotonic() - started
    for client in opened:
        client.close()
    return Load(started_at, seconds, list(range(len(bodies))), accepted, errors)


def post_with_locust(
    urls: Sequence[str],
    api_key: str,
    batches: Sequence[Batch],
    *,
    rate: float,
    users: int,
    log_dir: Path,
) -> Load:
    """Run ``locust --headless`` with :mod:`bench.locustfile` in its own process: the same
    batches at ``rate`` events per second, spread over ``urls``.

    Returns:
        The schedule's figures from the locustfile's summary, with locust's own (requests,
        failures, requests/s, response-time percentiles from its stats) in ``figures``.

    Raises:
        RuntimeError: locust posted nothing (the end of its log is in the message).
    """
    users = max(1, min(users, len(batches)))
    batch_rate = rate / CALLS_PER_BATCH
    run_time_s = math.ceil(len(batches) / batch_rate) + 60  # a bound: the run quits when done
    batches_file, summary_file = log_dir / "locust-batches.jsonl", log_dir / "locust-summary.json"
    batches_file.write_bytes(b"".join(b.body + b"\n" for b in batches))
    summary_file.unlink(missing_ok=True)
    argv = [
        LOCUST, "-f", str(services.ROOT / "bench" / "locustfile.py"), "--headless",
        "--users", str(users), "--spawn-rate", str(min(users, 100)),
        "--run-time", f"{run_time_s}s", "--stop-timeout", "30", "--host", urls[0],
        "--soak-hosts", ",".join(urls), "--soak-batches", str(batches_file),
        "--soak-rate", repr(batch_rate), "--soak-summary", str(summary_file), "--only-summary",
    ]  # fmt: skip
    pythonpath = os.pathsep.join(filter(None, [str(services.ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, LOCUST_API_KEY_VARIABLE: api_key}
    try:
        # A locust past its bound is stopped on leaving the block; it writes its summary then.
        with (
            services.process("locust", argv, env, log_dir) as proc,
            contextlib.suppress(subprocess.TimeoutExpired),
        ):
            proc.popen.wait(timeout=run_time_s + 60)
    finally:
        batches_file.unlink(missing_ok=True)
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    if summary.get("started_at") is None:
        tail = proc.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"locust posted nothing (exit {proc.popen.returncode}):\n{tail}")
    figures = {
        "users": users,
        "exit_code": proc.popen.returncode,
        "schedule_lag_s_max": summary["lag_s_max"],
        **summary["locust"],
    }
    return Load(
        started_at=summary["started_at"],
        seconds=summary["finished_at"] - summary["started_at"],
        posted=summary["posted"],
        accepted=summary["accepted"] * CALLS_PER_BATCH,
        errors=summary["errors"],
        figures=figures,
    )


def run(args: argparse.Namespace) -> SoakResult:
    """One soak run (see the module docstring)."""
    tag = f"soak{int(time.time()) % 100000}"
    log_dir = args.results_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    result = SoakResult(settings={k: str(v) for k, v in vars(args).items()})
    batches = make_batches(tag, max(1, round(args.rate * args.duration / CALLS_PER_BATCH)))
    with ExitStack() as stack:
        database_url = stack.enter_context(
            services.postgres_database(args.postgres_url, f"crm_bench_{tag}")
        )
        namespace = stack.enter_context(
            services.redis_namespace(args.redis_url, f"crm-notify-bench-{tag}")
        )
        sink = stack.enter_context(services.smtp_sink(log_dir))
        env = services.service_env(
            {
                "CRM_NOTIFY_DATABASE_URL": database_url,
                "CRM_NOTIFY_REDIS_URL": args.redis_url,
                "CRM_NOTIFY_REDIS_NAMESPACE": namespace,
                "CRM_NOTIFY_RULES_DIR": str(copy_rules(log_dir / "rules")),
                "CRM_NOTIFY_TEMPLATES_DIR": str(services.ROOT / "templates"),
                "CRM_NOTIFY_VAR_DIR": str(log_dir / "var"),
                "CRM_NOTIFY_MAIL_FROM": MAIL_FROM,
                "CRM_NOTIFY_ESP_URL": sink.url,
            }
        )
        services.cli(env, "db", "upgrade")
        api_key = services.cli(env, "api-keys", "create", "soak").strip().splitlines()[-1]
        apis = [
            stack.enter_context(services.serve(env, log_dir, f"serve-{n}")) for n in range(args.api)
        ]
        groups = {f"api-{n}": proc.popen.pid for n, (_url, proc) in enumerate(apis)}
        worker = None
        if args.workers:
            worker = stack.enter_context(
                services.worker(env, log_dir, processes=args.workers, threads=args.threads)
            )
            groups["workers"] = worker.popen.pid
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        if worker is not None:
            time.sleep(args.settle)  # the workers import and connect before the clock starts
            worker.check_alive()
        started = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss = {name: group_rss_mib(pid) for name, pid in groups.items()}
                result.samples.append(Sample(round(time.monotonic() - started, 1), rss))
                stop.wait(args.sample)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        urls = [url for url, _proc in apis]
        if args.generator == "locust":
            load = post_with_locust(
                urls, api_key, batches, rate=args.rate, users=args.users, log_dir=log_dir
            )
        else:
            bodies = [b.body for b in batches]
            load = post_at_rate(urls, api_key, bodies, rate=args.rate, clients=args.users)
        result.posted = len(load.posted) * CALLS_PER_BATCH
        result.accepted, result.errors, result.load_seconds = (
            load.accepted,
            load.errors,
            load.seconds,
        )
        result.generator = {"name": args.generator, **load.figures}
        expected = sum(batches[index].notifications for index in set(load.posted))
        deadline = time.monotonic() + (args.drain if worker is not None else 0)
        while _sent(engine) < expected and time.monotonic() < deadline:
            if worker is not None:
                worker.check_alive()
            time.sleep(1)
        stop.set()
        sampler.join()
        result.figures = _figures(engine, sink, result, expected, wall_started=load.started_at)
    return result


def _sent(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT count(*) FROM notification WHERE status = 'sent'")
            ).scalar_one()
        )


def _figures(
    engine: sa.Engine,
    sink: services.Sink,
    result: SoakResult,
    expected: int,
    *,
    wall_started: float,
) -> dict[str, Any]:
    deliveries = sink.deliveries()
    with engine.connect() as connection:
        received = {
            str(notification_id): float(at.timestamp())
            for notification_id, at in connection.execute(
                sa.text(
                    "SELECT n.id, e.received_at FROM notification n "
                    "JOIN event e ON e.id = n.event_id"
                )
            )
        }
        statuses: dict[str, int] = {
            str(status): int(count)
            for status, count in connection.execute(
                sa.text("SELECT status, count(*) FROM notification GROUP BY status")
            )
        }
    latencies: list[float] = sorted(
        arrived - received[notify_id]
        for notify_id, _message_id, arrived in deliveries
        if notify_id in received
    )
    counts: dict[str, int] = {}
    for notify_id, _message_id, _at in deliveries:
        counts[notify_id] = counts.get(notify_id, 0) + 1
    arrivals = sorted(at for _n, _m, at in deliveries)
    during = [at for at in arrivals if at <= wall_started + result.load_seconds]

    def pct(fraction: float) -> float:
        if not latencies:
            return float("nan")
        return round(latencies[min(len(latencies) - 1, int(fraction * len(latencies)))], 3)

    first_rss = result.samples[0].rss_mib if result.samples else {}
    last_rss = result.samples[-1].rss_mib if result.samples else {}
    return {
        "generator": result.generator,
        "events_posted": result.posted,
        "events_accepted": result.accepted,
        "request_errors": len(result.errors),
        "load_seconds": round(result.load_seconds, 1),
        "events_per_s": round(result.accepted / result.load_seconds, 1),
        "notifications_expected": expected,
        "statuses": statuses,
        "messages_received": len(deliveries),
        "sends_per_s_during_load": round(len(during) / result.load_seconds, 1),
        "sends_per_s_overall": round(len(arrivals) / max(arrivals[-1] - wall_started, 1e-9), 1)
        if arrivals
        else 0.0,
        "latency_s": {
            "p50": pct(0.50),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "max": round(latencies[-1], 3) if latencies else float("nan"),
            "mean": round(statistics.fmean(latencies), 3) if latencies else float("nan"),
        },
        "exactly_once": len(counts) == expected and all(c == 1 for c in counts.values()),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "rss_mib_first": first_rss,
        "rss_mib_last": last_rss,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generator == "locust" and not Path(LOCUST).exists():
        sys.exit("--generator locust needs the bench extra: pip install -e '.[bench]'")
    services.exit_on_signals()
    print(
        f"soak: {args.rate:g} events/s for {args.duration:g}s, {args.api} API, "
        f"{args.workers} worker processes x {args.threads} threads, {os.cpu_count()} cores, "
        f"load from {args.generator}",
        flush=True,
    )
    result = run(args)
    figures = result.figures
    print(json.dumps(figures, indent=2))
    print("memory (MiB, resident):")
    for sample in result.samples:
        print(f"  {sample.at_s:7.1f}s  " + "  ".join(f"{k} {v}" for k, v in sample.rss_mib.items()))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "settings": result.settings,
                    "figures": figures,
                    "samples": [vars(s) for s in result.samples],
                },
                indent=2,
            )
        )
    return 0 if figures.get("exactly_once") or not args.workers else 1


if __name__ == "__main__":
    sys.exit(main())
