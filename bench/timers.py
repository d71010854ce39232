"""``python -m bench.timers``: scheduler cost with a million pending timers in PostgreSQL.

Measures (1) the cost of a scheduler pass when nothing is due, with 1,000,000 pending timers
(it must use the (status, due_at) index, not scan), and (2) timers fired per second when many
are due, through the real firing path (rule lookup, context, decision, outbox row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from freezegun import freeze_time

from crm_notify.db import make_engine
from crm_notify.migrations import upgrade
from crm_notify.rules.loader import load_rules
from crm_notify.timers.firing import TimerFiring
from crm_notify.timers.scheduler import Scheduler

#: The one rule the timers belong to: a delayed transactional send.
RULE = """
name: bench-delay
trigger: {event: Bench Event}
delay: 1h
template: order_shipped
purpose: transactional
"""


def _perf_counter() -> float:
    """The real monotonic clock: freezegun fakes ``time.perf_counter`` while time is frozen."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


#: The moment the benchmark pretends it is.
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _fill(engine: sa.Engine, *, pending: int, due: int, contacts: int) -> None:
    """Insert contacts and timers with set-based SQL (fast, and the same rows every run)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO contact (user_id, email, traits, created_at, updated_at) "
                "SELECT 'u' || g, 'u' || g || '@example.com', '{}'::jsonb, now(), now() "
                "FROM generate_series(1, :n) AS g"
            ),
            {"n": contacts},
        )
        # Future timers, spread over 30 days after NOW.
        conn.execute(
            sa.text(
                "INSERT INTO timer (key, rule, step, contact_id, status, trigger_at, due_at, "
                "created_at, updated_at) "
                "SELECT 'future:' || g, 'bench-delay', 0, 1 + g % :c, 'pending', "
                ":now, :now + (g % 2592000 + 60) * interval '1 second', now(), now() "
                "FROM generate_series(1, :n) AS g"
            ),
            {"n": pending, "c": contacts, "now": NOW},
        )
        # Timers due now.
        conn.execute(
            sa.text(
                "INSERT INTO timer (key, rule, step, contact_id, status, trigger_at, due_at, "
                "created_at, updated_at) "
                "SELECT 'due:' || g, 'bench-delay', 0, 1 + g % :c, 'pending', "
                ":now - interval '2 hours', :now - (g % 3600) * interval '1 second', now(), now() "
                "FROM generate_series(1, :n) AS g"
            ),
            {"n": due, "c": contacts, "now": NOW},
        )
        conn.execute(sa.text("ANALYZE timer"))


def run(postgres_url: str, *, pending: int, due: int) -> dict[str, object]:
    """Create a throw-away database, fill it, measure, drop it; return the figures."""
    name = f"crm_bench_timers_{uuid.uuid4().hex[:8]}"
    admin = make_engine(postgres_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin.url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        upgrade(engine)
        started = _perf_counter()
        _fill(engine, pending=pending, due=due, contacts=1000)
        fill_s = _perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "bench.yaml").write_text(RULE)
            rules = load_rules(Path(tmp))
        scheduler = Scheduler(
            engine=engine, fire=TimerFiring(rules=rules), enqueue=None, interval_s=1
        )
        with engine.connect() as conn:
            plan = "\n".join(
                row[0]
                for row in conn.execute(
                    sa.text(
                        "EXPLAIN SELECT * FROM timer WHERE status = 'pending' AND due_at <= :m "
                        "ORDER BY due_at, id LIMIT 200 FOR UPDATE SKIP LOCKED"
                    ),
                    {"m": NOW - timedelta(days=1)},
                )
            )
        # (1) Nothing due: a pass at a moment before every timer.
        idle_ms = []
        with freeze_time(NOW - timedelta(days=1)):
            for _ in range(200):
                t0 = _perf_counter()
                scheduler.run_once()
                idle_ms.append((_perf_counter() - t0) * 1000)
        # (2) Many due: fire them all.
        with freeze_time(NOW):
            t0 = _perf_counter()
            fired = scheduler.run_once(max_batches=10_000)
            fire_s = _perf_counter() - t0
        with engine.connect() as conn:
            notifications = conn.execute(sa.text("SELECT count(*) FROM notification")).scalar()
        return {
            "pending_timers": pending + due,
            "fill_s": round(fill_s, 1),
            "idle_pass_ms_p50": round(statistics.median(idle_ms), 2),
            "idle_pass_ms_p95": round(sorted(idle_ms)[int(len(idle_ms) * 0.95)], 2),
            "due_timers": due,
            "fired": fired,
            "notifications": notifications,
            "fire_s": round(fire_s, 2),
            "timers_per_s": round(fired / fire_s),
            "plan": plan,
        }
    finally:
        engine.dispose()
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.timers", description=__doc__)
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="server where a throw-away database is created",
    )
    parser.add_argument("--pending", type=int, default=1_000_000, help="future timers")
    parser.add_argument("--due", type=int, default=20_000, help="timers due now")
    args = parser.parse_args()
    result = run(args.postgres_url, pending=args.pending, due=args.due)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
