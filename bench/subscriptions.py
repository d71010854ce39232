"""``python -m bench.subscriptions``: lifecycle events relayed and sent to webhook subscribers.

N contacts each get a ``contact.subscribed`` lifecycle event; K subscriptions want them all.
Measured on SQLite and on PostgreSQL: (1) the lifecycle relay's passes until every event is
ingested and queued for every subscriber (events/s), and (2) the dispatcher's passes until
every delivery has been accepted by the receivers (deliveries/s), signed, over HTTP to a
receiver in its own process on loopback. Every delivery must arrive exactly once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.services import ROOT, free_port, postgres_database
from crm_notify._net import OutboundPolicy
from crm_notify.config import load_settings
from crm_notify.db import session_scope
from crm_notify.lifecycle.emit import emit
from crm_notify.lifecycle.models import LifecycleName, LifecycleSource
from crm_notify.migrations import upgrade
from crm_notify.runtime import Runtime
from crm_notify.subscriptions import repository
from crm_notify.subscriptions.dispatcher import SubscriptionDispatcher
from crm_notify.subscriptions.sender import SubscriptionSender


def _receiver(port: int, counter: Any) -> None:
    """A receiver answering 204 to every request and counting them (in its own process)."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        with counter.get_lock():
            counter.value += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


@contextmanager
def receiver() -> Iterator[tuple[str, Any]]:
    """Start the receiver process; yield its URL and request counter."""
    port = free_port()
    counter = multiprocessing.Value("q", 0)
    process = multiprocessing.Process(target=_receiver, args=(port, counter), daemon=True)
    process.start()
    time.sleep(1.5)
    try:
        yield f"http://127.0.0.1:{port}", counter
    finally:
        process.terminate()
        process.join(10)


def measure(
    database_url: str, url: str, counter: Any, *, events: int, subscribers: int
) -> dict[str, Any]:
    """One database's figures (see the module docstring)."""
    settings = load_settings(
        None,
        database_url=database_url,
        var_dir=Path(tempfile.mkdtemp(prefix="crm-bench-subs-")),
        rules_dir=ROOT / "rules",
        templates_dir=ROOT / "templates",
        esp_url="console:",
        outbound_allow_networks="loopback",
    )
    runtime = Runtime.from_settings(settings)
    upgrade(runtime.engine)
    try:
        with session_scope(runtime.engine) as session:
            for number in range(subscribers):
                repository.create(session=session, url=f"{url}/s{number}", name=f"s{number}")
        with runtime.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO contact (user_id, email, traits, created_at, updated_at) "
                    "VALUES (:u, :e, '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                [{"u": f"u{n}", "e": f"u{n}@example.com"} for n in range(events)],
            )
            ids = [row[0] for row in connection.execute(sa.text("SELECT id FROM contact"))]
        with session_scope(runtime.engine) as session:
            for contact_id in ids:
                emit(
                    session,
                    LifecycleName.SUBSCRIBED,
                    contact_id=contact_id,
                    source=LifecycleSource.API,
                    purpose="marketing",
                )
        started = time.perf_counter()
        while runtime.lifecycle.run_once():
            pass
        relay_s = time.perf_counter() - started
        dispatcher = SubscriptionDispatcher(
            engine=runtime.engine,
            sender=SubscriptionSender(environ={}, policy=OutboundPolicy.allow_loopback()),
            interval_s=1,
        )
        before = counter.value
        started = time.perf_counter()
        while dispatcher.run_once():
            pass
        dispatch_s = time.perf_counter() - started
        dispatcher.stop()
        sent = counter.value - before
        with runtime.engine.connect() as connection:
            left = connection.execute(
                sa.text("SELECT count(*) FROM subscription_delivery")
            ).scalar_one()
    finally:
        runtime.close()
    deliveries = events * subscribers
    return {
        "events": events,
        "subscribers": subscribers,
        "relay_events_per_s": round(events / relay_s),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / dispatch_s),
        "received": sent,
        "left": left,
        "exactly_once": sent == deliveries and left == 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.subscriptions", description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=3)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    results = {}
    with receiver() as (url, counter):
        with tempfile.TemporaryDirectory() as folder:
            sqlite = f"sqlite:///{folder}/bench.db"
            results["sqlite"] = measure(
                sqlite, url, counter, events=args.events, subscribers=args.subscribers
            )
        tag = f"subs{int(time.time()) % 100000}{os.getpid() % 1000}"
        with postgres_database(args.postgres_url, f"crm_bench_{tag}") as database_url:
            results["postgresql"] = measure(
                database_url, url, counter, events=args.events, subscribers=args.subscribers
            )
    print(json.dumps(results, indent=2))
    return 0 if all(r["exactly_once"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
