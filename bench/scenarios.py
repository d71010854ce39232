"""One benchmark mode end to end: set up, ingest over HTTP, deliver, check, clean up.

Ingest: ``crm-notify serve`` on a free port takes warm-up batches, then the measured ones from
several connections. With Redis no worker runs meanwhile, so delivery does not compete. In the
embedded mode the service's own delivery threads send to the SMTP sink while ingest runs (that
is how the embedded service runs); it is then stopped with part of the mail still unsent.

Delivery: with Redis, every notification from ingest is ``queued`` on the broker; then
``crm-notify worker`` starts and the run waits until all are ``sent``. Embedded: a top-up of
notifications is written ``pending`` in-process (no broker), then ``crm-notify serve`` starts
again, requeues every unfinished row at start-up and its delivery threads send them. The rate
is messages over the time from the first to the last arrival at the sink.

At the end every notification must be ``sent`` and must have arrived at the sink exactly once,
with the Message-ID stored in its row.

The ``*-guards`` modes run the guarded workload (:mod:`bench.workload`): every call carries
marketing consent, and the marketing rule ``cart-offer`` (with a ``limit``, quiet hours off)
joins the sample rules, so every marketing decision looks up suppression and consent and counts
the contact's recent sends, and delivery checks suppression and consent again.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench import services
from bench.cpu import CpuMeter
from bench.load import post_batches
from bench.workload import GUARDED_RULE, Batch, make_batches, notifications_per_customer
from crm_notify.clock import now
from crm_notify.db import make_engine
from crm_notify.events.decoding import decode_body
from crm_notify.events.schemas import parse_batch
from crm_notify.intake import Intake
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.loader import load_rules

#: Mail From of every run (the SMTP sink accepts anything).
MAIL_FROM = "Bench Shop <orders@shop.example>"

#: The sample rules the workload is built around (copied from ``rules/``): welcome and
#: order-shipped fire, order-cancelled is loaded but never matches.
BENCH_RULES = ("welcome.yaml", "order_shipped.yaml", "order_cancelled.yaml")


def copy_rules(destination: Path, *, guards: bool = False) -> Path:
    """Copy :data:`BENCH_RULES` into ``destination`` (emptied first), with ``guards`` also
    the guarded workload's marketing rule, and return it."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    for name in BENCH_RULES:
        shutil.copy2(services.ROOT / "rules" / name, destination / name)
    if guards:
        (destination / "cart_offer.yaml").write_text(GUARDED_RULE)
    return destination


@dataclass(frozen=True)
class Mode:
    """Which database and broker a run uses."""

    name: str
    database: str  # "sqlite" or "postgresql"
    redis: bool
    guards: bool = False  # the guarded workload (consent, a limited marketing rule)


#: The modes ``--mode`` can name, in the order they run.
MODES = {
    "embedded": Mode("embedded", "sqlite", redis=False),
    "redis": Mode("redis", "postgresql", redis=True),
    "redis-sqlite": Mode("redis-sqlite", "sqlite", redis=True),
    "embedded-guards": Mode("embedded-guards", "sqlite", redis=False, guards=True),
    "redis-guards": Mode("redis-guards", "postgresql", redis=True, guards=True),
}


@dataclass(frozen=True)
class Options:
    """Sizes and endpoints of a run (from the command line)."""

    batches: int
    warmup_batches: int
    connections: int
    embedded_delivery: int
    worker_processes: int
    worker_threads: int
    postgres_url: str
    redis_url: str
    results_dir: Path


@dataclass
class ModeResult:
    """The figures of one mode."""

    mode: str
    database: str
    broker: str
    ingest: dict[str, Any] = field(default_factory=dict)
    delivery: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)


def run_mode(mode: Mode, options: Options, tag: str) -> ModeResult:
    """Run ``mode`` and return its figures; everything it started is stopped and removed."""
    log_dir = options.results_dir / mode.name
    log_dir.mkdir(parents=True, exist_ok=True)
    result = ModeResult(mode.name, mode.database, "redis" if mode.redis else "in-process")
    with ExitStack() as stack:
        if mode.database == "sqlite":
            db_file = log_dir / "crm-notify.db"
            remove_sqlite(db_file)
            stack.callback(remove_sqlite, db_file)
            database_url = f"sqlite:///{db_file}"
        else:
            database_url = stack.enter_context(
                services.postgres_database(options.postgres_url, f"crm_bench_{tag}")
            )
        settings = {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_RULES_DIR": str(copy_rules(log_dir / "rules", guards=mode.guards)),
            "CRM_NOTIFY_TEMPLATES_DIR": str(services.ROOT / "templates"),
            "CRM_NOTIFY_VAR_DIR": str(log_dir / "var"),
            "CRM_NOTIFY_MAIL_FROM": MAIL_FROM,
            "CRM_NOTIFY_WORKER_THREADS": str(options.worker_threads),
        }
        if mode.redis:
            namespace = stack.enter_context(
                services.redis_namespace(options.redis_url, f"crm-notify-bench-{tag}")
            )
            settings["CRM_NOTIFY_REDIS_URL"] = options.redis_url
            settings["CRM_NOTIFY_REDIS_NAMESPACE"] = namespace
        sink = stack.enter_context(services.smtp_sink(log_dir))
        settings["CRM_NOTIFY_ESP_URL"] = sink.url
        env = services.service_env(settings)
        services.cli(env, "db", "upgrade")
        api_key = services.cli(env, "api-keys", "create", "bench").strip().splitlines()[-1]
        engine = _observer_engine(database_url)
        stack.callback(engine.dispose)

        batches = make_batches(tag, options.warmup_batches + options.batches, guards=mode.guards)
        warmup, measured = batches[: options.warmup_batches], batches[options.warmup_batches :]
        result.ingest = _ingest(mode, options, env, log_dir, api_key, engine, warmup, measured)
        if mode.redis:
            result.delivery = _deliver_with_worker(options, env, log_dir, engine, sink)
        else:
            per_batch = 10 * notifications_per_customer(mode.guards)
            count = -(-options.embedded_delivery // per_batch)
            extra = make_batches(f"{tag}x", count, guards=mode.guards)
            result.delivery = _deliver_embedded(env, log_dir, engine, sink, extra, settings)
        result.checks = _check_exactly_once(engine, sink, expected=_expected(batches, result))
    return result


def _observer_engine(database_url: str) -> Engine:
    """An engine for counting rows while the service runs. On SQLite it reads without
    ``BEGIN IMMEDIATE`` (WAL readers do not block the writer), so polling takes no write lock."""
    if database_url.startswith("sqlite"):
        return sa.create_engine(database_url)
    return make_engine(database_url)


def _expected(batches: list[Batch], result: ModeResult) -> int:
    return sum(b.notifications for b in batches) + int(result.delivery.get("written", 0))


def remove_sqlite(db_file: Path) -> None:
    """Delete a SQLite database file and its WAL files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_file}{suffix}").unlink(missing_ok=True)


def _ingest(
    mode: Mode,
    options: Options,
    env: dict[str, str],
    log_dir: Path,
    api_key: str,
    engine: Engine,
    warmup: list[Batch],
    measured: list[Batch],
) -> dict[str, Any]:
    with services.serve(env, log_dir, "serve-ingest") as (url, proc):
        warm = post_batches(url, api_key, warmup, connections=options.connections)
        if warm.errors:
            raise RuntimeError(f"warm-up requests failed: {warm.errors[:3]}")
        before = _count(engine)
        meter = CpuMeter({"serve": proc.popen.pid})
        load = post_batches(url, api_key, measured, connections=options.connections)
        cpu = meter.stop()
        created = _count(engine) - before
        if load.errors:
            raise RuntimeError(f"{len(load.errors)} requests failed, e.g. {load.errors[:3]}")
        figures: dict[str, Any] = {
            "batches": load.requests,
            "events": load.calls,
            "seconds": round(load.seconds, 2),
            "events_per_s": round(load.calls_per_s),
            "notifications": created,
            "notifications_per_s": round(created / load.seconds),
            "p50_ms": round(load.percentile_ms(0.50), 1),
            "p95_ms": round(load.percentile_ms(0.95), 1),
            "connections": options.connections,
            "cpu_s": cpu,
            "delivery_running": not mode.redis,
        }
        if not mode.redis:
            figures["sent_during_ingest"] = _statuses(engine).get("sent", 0)
    return figures


def _deliver_with_worker(
    options: Options, env: dict[str, str], log_dir: Path, engine: Engine, sink: services.Sink
) -> dict[str, Any]:
    statuses = _statuses(engine)
    waiting = statuses.get("queued", 0)
    if set(statuses) != {"queued"}:
        raise RuntimeError(f"expected only queued notifications before delivery, got {statuses}")
    already = len(sink.deliveries())
    started = time.monotonic()
    with services.worker(
        env, log_dir, processes=options.worker_processes, threads=options.worker_threads
    ) as proc:
        meter = CpuMeter({"worker": proc.popen.pid})
        wall = _wait_sent(engine, waiting, [proc], started=started)
        cpu = meter.stop()
    return _delivery_figures(sink, already, waiting, wall) | {
        "workers": f"{options.worker_processes} processes x {options.worker_threads} threads",
        "cpu_s": cpu,
    }


def _deliver_embedded(
    env: dict[str, str],
    log_dir: Path,
    engine: Engine,
    sink: services.Sink,
    batches: list[Batch],
    settings: dict[str, str],
) -> dict[str, Any]:
    templates = TemplateStore(Path(settings["CRM_NOTIFY_TEMPLATES_DIR"]))
    rules = load_rules(Path(settings["CRM_NOTIFY_RULES_DIR"]), template_exists=templates.exists)
    writer = make_engine(settings["CRM_NOTIFY_DATABASE_URL"])
    intake = Intake(engine=writer, rules=rules)  # no enqueue: the rows stay pending
    written = 0
    for batch in batches:
        calls = parse_batch(decode_body(batch.body, batch=True), received_at=now())
        written += len(intake.ingest(calls, "bench").notification_ids)
    writer.dispose()
    total = _count(engine)
    already = len(sink.deliveries())
    waiting = total - already
    started = time.monotonic()
    with services.serve(env, log_dir, "serve-delivery") as (_url, proc):
        meter = CpuMeter({"serve": proc.popen.pid})
        wall = _wait_sent(engine, total, [proc], started=started)
        cpu = meter.stop()
    return _delivery_figures(sink, already, waiting, wall) | {
        "workers": f"serve, {settings['CRM_NOTIFY_WORKER_THREADS']} threads",
        "written": written,
        "cpu_s": cpu,
    }


def _delivery_figures(
    sink: services.Sink, already: int, count: int, wall_s: float
) -> dict[str, Any]:
    arrivals = [at for _id, _mid, at in sink.deliveries()[already:]]
    span = max(arrivals) - min(arrivals) if len(arrivals) > 1 else 0.0
    return {
        "messages": len(arrivals),
        "expected": count,
        "seconds_first_to_last": round(span, 2),
        "messages_per_s": round(len(arrivals) / span) if span else None,
        "seconds_from_start": round(wall_s, 2),
    }


def _wait_sent(
    engine: Engine,
    expected: int,
    procs: list[services.Process],
    *,
    started: float | None = None,
    stall_s: float = 30,
) -> float:
    """Wait until ``expected`` notifications are sent; return seconds since ``started``.

    Raises:
        RuntimeError: a process exited, or nothing was sent for ``stall_s`` seconds (the
            message names the processes' logs).
    """
    started = time.monotonic() if started is None else started
    last_sent, last_progress = -1, time.monotonic()
    while True:
        sent = _statuses(engine).get("sent", 0)
        if sent >= expected:
            return time.monotonic() - started
        for proc in procs:
            proc.check_alive()
        if sent != last_sent:
            last_sent, last_progress = sent, time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            logs = ", ".join(str(proc.log_path) for proc in procs)
            raise RuntimeError(f"stalled at {sent} of {expected} sent for {stall_s}s; see {logs}")
        time.sleep(0.05)


def _statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT status, count(*) FROM notification GROUP BY status")
        ).all()
    return {str(status): int(count) for status, count in rows}


def _count(engine: Engine) -> int:
    return sum(_statuses(engine).values())


def _check_exactly_once(engine: Engine, sink: services.Sink, *, expected: int) -> dict[str, Any]:
    """Compare the sink's record with the outbox; raise when a message is missing or doubled."""
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, status, message_id FROM notification")).all()
    received = sink.deliveries()
    by_id: dict[str, list[str]] = {}
    for notify_id, message_id, _at in received:
        by_id.setdefault(notify_id, []).append(message_id)
    stored = {str(row.id): row.message_id for row in rows}
    checks = {
        "expected": expected,
        "in_outbox": len(rows),
        "sent": sum(1 for row in rows if row.status == "sent"),
        "received": len(received),
        "distinct_received": len(by_id),
        "duplicates": sum(len(ids) - 1 for ids in by_id.values()),
        "missing": len(set(stored) - set(by_id)),
        "unknown": len(set(by_id) - set(stored)),
        "message_id_mismatch": sum(
            1 for key, ids in by_id.items() if key in stored and set(ids) != {stored[key]}
        ),
    }
    checks["ok"] = (
        checks["in_outbox"] == checks["sent"] == checks["received"] == expected
        and checks["duplicates"] == checks["missing"] == checks["unknown"] == 0
        and checks["message_id_mismatch"] == 0
    )
    if not checks["ok"]:
        raise RuntimeError(f"delivery check failed: {checks}")
    return checks
