"""pyinstrument profiles of the two hot paths, run in this process without HTTP.

- ingest: ``decode_body`` + ``parse_batch`` + ``Intake.ingest`` on batches of 100, with the
  enqueue ``crm-notify serve`` does (to the mode's broker, then ``mark_queued``);
- delivery: ``DeliveryService.deliver`` in a loop, one thread, to the SMTP sink.

The ``*-guards`` modes are profiled on their own, with the guarded workload.

Each runs first unprofiled (for a rate without profiler overhead), then profiled. The
unprofiled run also gives the CPU time of this process per call (per event, per delivery; the
SMTP sink, PostgreSQL and Redis run in other processes) and the SQL statements sent per call:
unlike the rates, neither depends much on what else the machine is doing. The hotspots are the
functions with the most self time, and crm-notify's own functions by total time; the full
profiles are written as HTML next to the other results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pyinstrument import Profiler
from pyinstrument.frame import Frame
from sqlalchemy.engine import Engine

from bench import services
from bench.scenarios import MAIL_FROM, MODES, Options, copy_rules, remove_sqlite
from bench.workload import Batch, make_batches
from crm_notify.clock import now
from crm_notify.config import Settings
from crm_notify.db import session_scope
from crm_notify.events.decoding import decode_body
from crm_notify.events.schemas import parse_batch
from crm_notify.intake import Intake
from crm_notify.migrations import upgrade
from crm_notify.outbox import repository
from crm_notify.runtime import Runtime

#: Sampling interval of the profiler, in seconds.
INTERVAL_S = 0.0005
#: Hotspots listed per profile.
TOP = 12
#: Deliveries timed unprofiled, then as many profiled.
DELIVERIES = 250


def run_profiles(
    modes: Sequence[str], options: Options, tag: str, *, batches: int
) -> dict[str, Any]:
    """Profile ingest and delivery once per database and workload the chosen modes use (with
    the first such mode's broker)."""
    profiles: dict[str, Any] = {}
    seen: set[tuple[str, bool]] = set()
    for name in modes:
        key = (MODES[name].database, MODES[name].guards)
        if key in seen:
            continue
        seen.add(key)
        profiles[name] = _profile_mode(name, options, f"{tag}p{len(seen)}", batches)
    return profiles


def _profile_mode(name: str, options: Options, tag: str, batches: int) -> dict[str, Any]:
    mode = MODES[name]
    out_dir = options.results_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if mode.database == "sqlite":
            db_file = out_dir / "profile.db"
            remove_sqlite(db_file)
            stack.callback(remove_sqlite, db_file)
            database_url = f"sqlite:///{db_file}"
        else:
            database_url = stack.enter_context(
                services.postgres_database(options.postgres_url, f"crm_bench_{tag}")
            )
        redis: dict[str, Any] = {}
        if mode.redis:
            namespace = stack.enter_context(
                services.redis_namespace(options.redis_url, f"crm-notify-bench-{tag}")
            )
            redis = {"redis_url": options.redis_url, "redis_namespace": namespace}
        sink = stack.enter_context(services.smtp_sink(out_dir))
        settings = Settings(
            database_url=database_url,
            esp_url=sink.url,
            rules_dir=copy_rules(out_dir / "rules", guards=mode.guards),
            templates_dir=services.ROOT / "templates",
            var_dir=out_dir / "var",
            mail_from=MAIL_FROM,
            **redis,
        )
        runtime = Runtime.from_settings(settings)
        stack.callback(runtime.close)
        upgrade(runtime.engine)

        def enqueue(ids: Sequence[int]) -> None:  # what serve does, without delivering inline
            runtime.actors.enqueue_deliveries(ids)
            with session_scope(runtime.engine) as session:
                repository.mark_queued(session=session, notification_ids=ids)

        intake = Intake(
            engine=runtime.engine,
            rules=runtime.rules,
            enqueue=enqueue,
            policy=runtime.policy,
            consent_categories=settings.consent_categories,
            consent_traits=settings.consent_traits,
        )
        work = make_batches(tag, 2 * batches + 2, guards=mode.guards)

        def ingest(batch: Batch) -> int:
            calls = parse_batch(decode_body(batch.body, batch=True), received_at=now())
            return len(intake.ingest(calls, "bench").notification_ids)

        for batch in work[:2]:  # warm-up
            ingest(batch)
        plain = _measure(ingest, work[2 : 2 + batches], per=100, engine=runtime.engine)
        profiled, session = _profiled(ingest, work[2 + batches :], per=100)
        ingest_report = _report(session, out_dir / "profile-ingest.html")

        with session_scope(runtime.engine) as db:
            ids = repository.find_undelivered(session=db)
        half = min(len(ids) // 2, DELIVERIES)
        ids = ids[: 2 * half]
        deliver = runtime.delivery.deliver
        plain_delivery = _measure(deliver, ids[:half], per=1, engine=runtime.engine)
        profiled_delivery, session = _profiled(deliver, ids[half:], per=1)
        delivery_report = _report(session, out_dir / "profile-delivery.html")
    print(
        f"  {name} in-process, one thread: delivery {plain_delivery.cpu_ms:.2f} ms CPU and "
        f"{plain_delivery.statements:.1f} SQL statements per message; ingest "
        f"{plain.cpu_ms:.2f} ms CPU and {plain.statements:.2f} statements per event",
        flush=True,
    )
    return {
        "database": mode.database,
        "workload": "guarded" if mode.guards else "plain",
        "broker": "redis" if mode.redis else "in-process (stub)",
        "ingest": {
            "events_per_s": plain.rate,
            "cpu_ms_per_event": plain.cpu_ms,
            "sql_statements_per_event": plain.statements,
            "profiled_events_per_s": profiled,
            **ingest_report,
        },
        "delivery": {
            "messages_per_s": plain_delivery.rate,
            "cpu_ms_per_message": plain_delivery.cpu_ms,
            "sql_statements_per_message": plain_delivery.statements,
            "profiled_messages_per_s": profiled_delivery,
            **delivery_report,
        },
    }


@dataclass(frozen=True)
class Measured:
    """An unprofiled run: calls per second (wall clock), and per call the CPU milliseconds of
    this process and the SQL statements sent (transaction control left out)."""

    rate: float
    cpu_ms: float
    statements: float


def _measure(
    function: Callable[[Any], Any], items: Sequence[Any], *, per: int, engine: Engine
) -> Measured:
    statements = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal statements
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            statements += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        cpu_started = time.process_time()
        rate = _rate(function, items, per=per)
        cpu_s = time.process_time() - cpu_started
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    calls = max(per * len(items), 1)
    return Measured(
        rate=rate, cpu_ms=round(1000 * cpu_s / calls, 2), statements=round(statements / calls, 2)
    )


def _rate(function: Callable[[Any], Any], items: Sequence[Any], *, per: int) -> float:
    started = time.perf_counter()
    for item in items:
        function(item)
    return round(per * len(items) / (time.perf_counter() - started), 1)


def _profiled(
    function: Callable[[Any], Any], items: Sequence[Any], *, per: int
) -> tuple[float, Profiler]:
    profiler = Profiler(interval=INTERVAL_S)
    profiler.start()
    rate = _rate(function, items, per=per)
    profiler.stop()
    return rate, profiler


def _report(profiler: Profiler, html_path: Path) -> dict[str, Any]:
    html_path.write_text(profiler.output_html())
    session = profiler.last_session
    assert session is not None
    root = session.root_frame()
    assert root is not None
    total = root.time or 1.0
    by_self: dict[str, float] = {}
    ours: dict[str, float] = {}
    _walk(root, by_self, ours, set())
    return {
        "profile": str(html_path),
        "self_time": [
            (where, round(100 * spent / total, 1))
            for where, spent in sorted(by_self.items(), key=lambda kv: -kv[1])[:TOP]
        ],
        "crm_notify_total_time": [
            (where, round(100 * spent / total, 1))
            for where, spent in sorted(ours.items(), key=lambda kv: -kv[1])[:TOP]
        ],
    }


def _where(frame: Frame) -> str:
    return f"{frame.function} ({frame.file_path_short}:{frame.line_no})"


def _walk(frame: Frame, by_self: dict[str, float], ours: dict[str, float], stack: set[str]) -> None:
    """Add each frame's self time to ``by_self`` and crm-notify frames' total to ``ours``
    (once per call chain, so recursion does not count twice)."""
    if frame.is_synthetic:
        return
    where = _where(frame)
    self_time = frame.time - sum(child.time for child in frame.children if not child.is_synthetic)
    by_self[where] = by_self.get(where, 0.0) + self_time
    entered = False
    if "crm_notify" in (frame.file_path or "") and where not in stack:
        ours[where] = ours.get(where, 0.0) + frame.time
        stack.add(where)
        entered = True
    for child in frame.children:
        _walk(child, by_self, ours, stack)
    if entered:
        stack.discard(where)
