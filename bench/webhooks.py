"""``python -m bench.webhooks``: how fast ``crm-notify serve`` takes ESP tracking events in.

Against a real ``crm-notify serve`` on loopback, once on SQLite (the embedded default) and once
on a throw-away PostgreSQL database, each pre-filled with sent notifications to link to:

- **SendGrid**: signed Event Webhook batches (ECDSA P-256 over timestamp + body, a key made
  for the run) of 1,000 events each, delivered / open / click, each naming its notification by
  ``sg_message_id`` only (``--notification-id`` adds our ``crm_notify_id`` custom arg, as our
  adapter sends it); events stored per second, latency per batch call;
- **replays**: some of those batches posted again (every event a duplicate);
- **Postmark**: one record per call (HTTP Basic), delivery / open / click with our
  ``crm_notify_id`` in ``Metadata`` (as our adapter sends it), from several clients;
- a **profile** (pyinstrument, in this process, no HTTP) of ``SendGridWebhook.handle`` and
  ``record_tracking_events`` on a batch of the same shape, and the same for Postmark calls.

Every answer's counts (``stored``, ``duplicates``, ``unmatched``) and the rows in the database
are checked: every new event stored and linked to its notification, every replay a duplicate.
Everything started is stopped, and the databases removed, at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from bench import services
from bench.__main__ import machine
from bench.cpu import CpuMeter
from bench.report import table
from bench.scenarios import MAIL_FROM, copy_rules, remove_sqlite
from crm_notify.db import make_engine, new_row, session_scope
from crm_notify.migrations import upgrade
from crm_notify.outbox.models import Notification
from crm_notify.webhooks.base import WebhookRequest
from crm_notify.webhooks.ingest import record_tracking_events
from crm_notify.webhooks.postmark import PostmarkWebhook
from crm_notify.webhooks.sendgrid import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridWebhook,
    load_public_key,
)

#: Default sizes: full run, and ``--quick``.
FULL = {
    "notifications": 20_000,
    "batches": 10,
    "replays": 4,
    "postmark_calls": 1_500,
    "profile_events": 1_000,
    "in_process_calls": 200,
}
QUICK = {
    "notifications": 2_000,
    "batches": 2,
    "replays": 1,
    "postmark_calls": 200,
    "profile_events": 300,
    "in_process_calls": 50,
}
#: Items listed per profile table in the printed summary.
TOP = 12
#: Events in the warm-up SendGrid batch.
WARMUP_EVENTS = 100
#: Share of each event type in a SendGrid batch (per 10 events).
SENDGRID_MIX = ("delivered",) * 5 + ("open",) * 3 + ("click",) * 2
#: Postmark record types, in turn.
POSTMARK_MIX = ("Delivery", "Open", "Click")
#: What SendGrid appends to the ``X-Message-Id`` in ``sg_message_id``.
FILTER_SUFFIX = ".filterdrecv-5645d9c87f-78xgx-1-5ECC5A42-1F.0"
#: The rendered message kept in each sent row (rows are loaded whole by the linking query, so
#: their size counts): about 6 KB, like a rendered HTML + text order mail.
STORED_MESSAGE = (
    "Content-Type: multipart/alternative; boundary=b\r\nSubject: Your order has shipped\r\n\r\n"
    + "<p>Your order is on its way. Track it with the link below.</p>\r\n" * 90
)
#: Seconds the profiler samples at.
PROFILE_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class Sent:
    """A pre-created ``sent`` notification that events are about."""

    id: int
    address: str
    esp_message_id: str


@dataclass
class Calls:
    """What a run of webhook calls did: answers' counts, wall time, latency per call."""

    calls: int = 0
    events: int = 0
    stored: int = 0
    duplicates: int = 0
    unmatched: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def percentile_ms(self, fraction: float) -> float:
        """The latency below which ``fraction`` of the calls finished, in milliseconds."""
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def figures(self) -> dict[str, Any]:
        """The figures of the run as JSON-able values."""
        return {
            "calls": self.calls,
            "events": self.events,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "unmatched": self.unmatched,
            "seconds": round(self.seconds, 2),
            "events_per_s": round(self.events / self.seconds) if self.seconds else None,
            "calls_per_s": round(self.calls / self.seconds, 1) if self.seconds else None,
            "p50_ms": round(self.percentile_ms(0.50), 1),
            "p95_ms": round(self.percentile_ms(0.95), 1),
            "p99_ms": round(self.percentile_ms(0.99), 1),
            "max_ms": round(1000 * max(self.latencies_s), 1),
        }


# The traffic.


class SendGridSigner:
    """Signs calls as SendGrid does, with a key pair made for the run."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        #: The verification key as SendGrid's console shows it (base64 DER).
        self.public_key = base64.b64encode(
            self.private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()

    def headers(self, body: bytes) -> dict[str, str]:
        """Headers of a call with ``body`` signed now."""
        stamp = str(int(time.time()))
        signature = self.private_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            TIMESTAMP_HEADER: stamp,
        }


def sendgrid_batch(rows: list[Sent], number: int, size: int, *, notification_id: bool) -> bytes:
    """Batch ``number``: ``size`` events in SendGrid's documented shape about consecutive rows
    (``SENDGRID_MIX``), each with a new ``sg_event_id``."""
    at = int(time.time()) - 600
    events = []
    for i in range(size):
        sent = rows[(number * size + i) % len(rows)]
        kind = SENDGRID_MIX[i % len(SENDGRID_MIX)]
        event: dict[str, Any] = {
            "email": sent.address,
            "timestamp": at + i % 600,
            "smtp-id": f"<{sent.esp_message_id}@ismtpd0001p1lon1.sendgrid.net>",
            "event": kind,
            "category": ["order_shipped"],
            "sg_event_id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
            "sg_message_id": f"{sent.esp_message_id}{FILTER_SUFFIX}",
        }
        if kind == "delivered":
            event.update(response="250 2.0.0 OK  1700000000 bench", ip="168.1.1.1", tls=1)
        else:
            event.update(
                useragent="Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
                ip="203.0.113.7",
                sg_machine_open=False,
            )
        if kind == "click":
            event.update(url=f"https://shop.example/orders/{sent.id}", url_offset={"index": 0})
        if notification_id:
            event.update(crm_notify_id=str(sent.id), crm_notify_rule="order_shipped")
        events.append(event)
    return json.dumps(events).encode()


def postmark_record(sent: Sent, number: int) -> bytes:
    """Postmark's record ``number`` (``POSTMARK_MIX`` in turn) about ``sent``, with our id in
    ``Metadata`` as the Postmark adapter sends it."""
    kind = POSTMARK_MIX[number % len(POSTMARK_MIX)]
    at = (datetime.now(UTC) - timedelta(seconds=number % 3600)).isoformat()
    record: dict[str, Any] = {
        "RecordType": kind,
        "MessageStream": "outbound",
        "MessageID": sent.esp_message_id,
        "ServerID": 23,
        "Tag": "order_shipped",
        "Metadata": {"crm_notify_id": str(sent.id), "crm_notify_rule": "order_shipped"},
        "Recipient": sent.address,
    }
    if kind == "Delivery":
        record.update(DeliveredAt=at, Details="smtp;250 2.0.0 OK")
    else:
        record.update(
            ReceivedAt=at,
            Platform="Desktop",
            UserAgent="Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            Geo={"CountryISOCode": "DE", "Country": "Germany"},
        )
    if kind == "Open":
        record.update(FirstOpen=number % 6 == 1, ReadSeconds=number % 30)
    if kind == "Click":
        record.update(ClickLocation="HTML", OriginalLink=f"https://shop.example/o/{number}")
    return json.dumps(record).encode()


# Set-up.


def fill_notifications(engine: Engine, esp: str, count: int, *, start: int) -> list[Sent]:
    """Insert ``count`` notifications ``sent`` through ``esp`` with made-up addresses
    (``example.com``) and message ids in the ESP's form; return them."""
    table_: sa.Table = Notification.__table__  # type: ignore[attr-defined]
    made: list[Sent] = []
    sent_at = datetime.now(UTC) - timedelta(hours=1)
    for chunk in range(start, start + count, 1000):
        rows = []
        for n in range(chunk, min(start + count, chunk + 1000)):
            message_id = (
                str(uuid.uuid4())
                if esp == "postmark"
                else base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            )
            rows.append(
                new_row(
                    Notification,
                    {
                        "idempotency_key": f"bench:{esp}:{n}",
                        "rule": "order_shipped",
                        "template": "order_shipped",
                        "purpose": "transactional",
                        "to_address": f"customer{n}@example.com",
                        "status": "sent",
                        "esp": esp,
                        "esp_message_id": message_id,
                        "sent_at": sent_at,
                        "context": {"order": {"id": f"A{n}", "status": "shipped"}},
                        "message": STORED_MESSAGE,
                    },
                )
            )
        with engine.begin() as connection:
            ids = connection.execute(
                sa.insert(table_).returning(table_.c.id, table_.c.idempotency_key), rows
            ).all()
        by_key = {key: row_id for row_id, key in ids}
        made += [
            Sent(by_key[row["idempotency_key"]], row["to_address"], row["esp_message_id"])
            for row in rows
        ]
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(sa.text("ANALYZE notification"))
    return made


@contextmanager
def database(kind: str, postgres_url: str, out_dir: Path, tag: str) -> Iterator[str]:
    """A new, empty database URL of ``kind`` (a SQLite file, or a throw-away PostgreSQL
    database); removed on exit."""
    if kind == "sqlite":
        db_file = out_dir / "crm-notify.db"
        remove_sqlite(db_file)
        try:
            yield f"sqlite:///{db_file}"
        finally:
            remove_sqlite(db_file)
    else:
        with services.postgres_database(postgres_url, f"crm_bench_webhooks_{tag}") as url:
            yield url


# The HTTP load.


def post_all(
    url: str,
    items: list[Callable[[], tuple[bytes, dict[str, str]]]],
    *,
    clients: int,
    events_per_call: int,
) -> Calls:
    """POST each item's (body, headers) to ``url`` from ``clients`` threads, each with a
    keep-alive connection; non-200 answers are errors (not retried)."""
    result = Calls()
    lock = threading.Lock()
    pending = list(reversed(items))

    def run() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    if not pending:
                        return
                    item = pending.pop()
                body, headers = item()
                started = time.perf_counter()
                try:
                    response = client.post(url, content=body, headers=headers)
                    answer = response.json() if response.status_code == 200 else None
                    error = None if answer else f"{response.status_code} {response.text[:300]}"
                except httpx.HTTPError as exc:
                    answer, error = None, repr(exc)
                elapsed = time.perf_counter() - started
                with lock:
                    result.calls += 1
                    result.latencies_s.append(elapsed)
                    if answer:
                        result.events += events_per_call
                        result.stored += answer["stored"]
                        result.duplicates += answer["duplicates"]
                        result.unmatched += answer["unmatched"]
                    else:
                        result.errors.append(str(error))

    threads = [threading.Thread(target=run, name=f"webhook-{i}") for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    if result.errors:
        raise RuntimeError(f"{len(result.errors)} calls failed, e.g. {result.errors[:3]}")
    return result


def measured(
    name: str,
    run: Callable[[], Calls],
    pid: int,
    *,
    expect_stored: int,
    expect_duplicates: int,
) -> dict[str, Any]:
    """Run one phase with a CPU meter on the service; check the answers' counts."""
    meter = CpuMeter({"serve": pid})
    calls = run()
    cpu = meter.stop()
    if (calls.stored, calls.duplicates, calls.unmatched) != (expect_stored, expect_duplicates, 0):
        raise RuntimeError(
            f"{name}: stored {calls.stored}, duplicates {calls.duplicates}, unmatched "
            f"{calls.unmatched}; expected {expect_stored}, {expect_duplicates}, 0"
        )
    figures = calls.figures()
    figures["cpu_s"] = {"serve": cpu["serve"], "bench": cpu["bench"], "machine": cpu["machine"]}
    figures["serve_cpu_ms_per_event"] = round(1000 * cpu["serve"] / calls.events, 3)
    print(
        f"  {name}: {calls.events:,} events, {calls.calls:,} calls, {calls.seconds:.1f} s, "
        f"{figures['events_per_s']:,} events/s, p95 {figures['p95_ms']:,} ms",
        flush=True,
    )
    return figures


# One database end to end.


@dataclass(frozen=True)
class Options:
    """Sizes and endpoints of a run (from the command line)."""

    notifications: int
    batches: int
    batch_size: int
    replays: int
    sendgrid_clients: int
    postmark_calls: int
    postmark_clients: int
    profile_events: int
    in_process_calls: int
    notification_id: bool
    postgres_url: str
    results_dir: Path


def run_database(kind: str, options: Options, tag: str) -> dict[str, Any]:
    """Measure ``kind`` (``sqlite`` or ``postgresql``) end to end and return its figures."""
    out_dir = options.results_dir / f"webhooks-{kind}"
    out_dir.mkdir(parents=True, exist_ok=True)
    signer = SendGridSigner()
    postmark_auth = f"bench:{secrets.token_hex(12)}"
    result: dict[str, Any] = {"database": kind}
    with ExitStack() as stack:
        database_url = stack.enter_context(database(kind, options.postgres_url, out_dir, tag))
        env = services.service_env(
            {
                "CRM_NOTIFY_DATABASE_URL": database_url,
                "CRM_NOTIFY_RULES_DIR": str(copy_rules(out_dir / "rules")),
                "CRM_NOTIFY_TEMPLATES_DIR": str(services.ROOT / "templates"),
                "CRM_NOTIFY_VAR_DIR": str(out_dir / "var"),
                "CRM_NOTIFY_MAIL_FROM": MAIL_FROM,
                "CRM_NOTIFY_ESP_URL": "console:",
                "CRM_NOTIFY_SENDGRID_WEBHOOK_PUBLIC_KEY": signer.public_key,
                "CRM_NOTIFY_POSTMARK_WEBHOOK_AUTH": postmark_auth,
            }
        )
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        upgrade(engine)
        started = time.perf_counter()
        sendgrid_rows = fill_notifications(engine, "sendgrid", options.notifications, start=0)
        postmark_rows = fill_notifications(
            engine, "postmark", options.postmark_calls // 3 + 1, start=options.notifications
        )
        result["fill_s"] = round(time.perf_counter() - started, 1)
        print(
            f"  {len(sendgrid_rows) + len(postmark_rows):,} notifications in {result['fill_s']} s"
        )
        result["notifications"] = len(sendgrid_rows) + len(postmark_rows)

        size = options.batch_size
        warmup = sendgrid_batch(sendgrid_rows, 0, WARMUP_EVENTS, notification_id=False)
        batches = [
            sendgrid_batch(sendgrid_rows, n, size, notification_id=options.notification_id)
            for n in range(1, options.batches + 1)
        ]
        records = [
            postmark_record(postmark_rows[n % len(postmark_rows)], n)
            for n in range(options.postmark_calls + 20)
        ]

        def sendgrid_call(body: bytes) -> Callable[[], tuple[bytes, dict[str, str]]]:
            return lambda: (body, signer.headers(body))

        postmark_headers = {
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(postmark_auth.encode()).decode(),
        }

        def postmark_call(body: bytes) -> Callable[[], tuple[bytes, dict[str, str]]]:
            return lambda: (body, postmark_headers)

        with services.serve(env, out_dir, f"serve-{kind}") as (url, proc):
            sendgrid_url = f"{url}/v1/webhooks/esp/sendgrid"
            postmark_url = f"{url}/v1/webhooks/esp/postmark"
            # Warm-up: one batch and a few Postmark calls (connections, caches, JIT of nothing).
            post_all(
                sendgrid_url, [sendgrid_call(warmup)], clients=1, events_per_call=WARMUP_EVENTS
            )
            post_all(
                postmark_url,
                [postmark_call(body) for body in records[:20]],
                clients=options.postmark_clients,
                events_per_call=1,
            )
            result["sendgrid"] = measured(
                "sendgrid",
                lambda: post_all(
                    sendgrid_url,
                    [sendgrid_call(body) for body in batches],
                    clients=options.sendgrid_clients,
                    events_per_call=size,
                ),
                proc.popen.pid,
                expect_stored=size * len(batches),
                expect_duplicates=0,
            )
            replayed = batches[: options.replays]
            result["replay"] = measured(
                "replay",
                lambda: post_all(
                    sendgrid_url,
                    [sendgrid_call(body) for body in replayed],
                    clients=options.sendgrid_clients,
                    events_per_call=size,
                ),
                proc.popen.pid,
                expect_stored=0,
                expect_duplicates=size * len(replayed),
            )
            result["postmark"] = measured(
                "postmark",
                lambda: post_all(
                    postmark_url,
                    [postmark_call(body) for body in records[20:]],
                    clients=options.postmark_clients,
                    events_per_call=1,
                ),
                proc.popen.pid,
                expect_stored=options.postmark_calls,
                expect_duplicates=0,
            )
            proc.check_alive()
        result["checks"] = check_rows(
            engine,
            expected=WARMUP_EVENTS + size * options.batches + options.postmark_calls + 20,
        )
        if options.profile_events:
            extra = [
                sendgrid_batch(
                    sendgrid_rows,
                    options.batches + 1 + n,
                    options.profile_events,
                    notification_id=options.notification_id,
                )
                for n in range(2)
            ]
            result["profile"] = profile(
                engine,
                signer,
                extra,
                out_dir / "profile-sendgrid.html",
                events_per_batch=options.profile_events,
            )
            more = [
                postmark_record(postmark_rows[n % len(postmark_rows)], n)
                for n in range(
                    options.postmark_calls + 20,
                    options.postmark_calls + 20 + options.in_process_calls,
                )
            ]
            result["profile"]["postmark"] = time_postmark(
                engine, PostmarkWebhook(credentials=postmark_auth), postmark_headers, more
            )
    return result


def time_postmark(
    engine: Engine, webhook: PostmarkWebhook, headers: dict[str, str], bodies: list[bytes]
) -> dict[str, Any]:
    """Postmark calls in this process, without HTTP (check, parse, store and commit, as the
    service does for each call): milliseconds per call on half of ``bodies``, then a profile
    of the other half (shares of the calls' time by callee)."""
    from pyinstrument import Profiler

    lowered = {k.lower(): v for k, v in headers.items()}

    def postmark_call(body: bytes) -> None:
        request = WebhookRequest(
            url="http://127.0.0.1/v1/webhooks/esp/postmark", headers=lowered, body=body
        )
        events = webhook.handle(request)
        with session_scope(engine) as session:
            summary = record_tracking_events(session=session, provider="postmark", events=events)
        if summary.stored != 1 or summary.unmatched:
            raise RuntimeError(f"postmark timing call: {summary}")

    half = len(bodies) // 2
    started = time.perf_counter()
    for body in bodies[:half]:
        postmark_call(body)
    ms_per_call = round(1000 * (time.perf_counter() - started) / half, 2)
    profiler = Profiler(interval=PROFILE_INTERVAL_S)
    profiler.start()
    for body in bodies[half:]:
        postmark_call(body)
    profiler.stop()
    return {
        "ms_per_call": ms_per_call,
        "call": breakdown(profiler, "postmark_call"),
        "record_tracking_events": breakdown(profiler, "record_tracking_events"),
    }


def check_rows(engine: Engine, *, expected: int) -> dict[str, Any]:
    """Count stored events, linked events and history entries; raise unless every event is
    stored once and linked."""
    with engine.connect() as connection:
        stored, linked = connection.execute(
            sa.text("SELECT count(*), count(notification_id) FROM tracking_event")
        ).one()
        history = connection.execute(
            sa.text("SELECT count(*) FROM notification_status_change")
        ).scalar_one()
    checks = {"expected": expected, "stored": stored, "linked": linked, "history": history}
    checks["ok"] = stored == linked == history == expected
    if not checks["ok"]:
        raise RuntimeError(f"row check failed: {checks}")
    return checks


def profile(
    engine: Engine,
    signer: SendGridSigner,
    bodies: list[bytes],
    html_path: Path,
    *,
    events_per_batch: int,
) -> dict[str, Any]:
    """Time the SendGrid path in this process (no HTTP) on half of ``bodies``, then profile it
    on the other half; the split between checking + parsing and storing is timed too."""
    from pyinstrument import Profiler

    from bench.profiling import _report

    webhook = SendGridWebhook(public_key=load_public_key(signer.public_key))
    half = len(bodies) // 2
    timings = {"handle_s": 0.0, "record_s": 0.0}

    def one(body: bytes) -> None:
        request = WebhookRequest(
            url="http://127.0.0.1/v1/webhooks/esp/sendgrid",
            headers={k.lower(): v for k, v in signer.headers(body).items()},
            body=body,
        )
        t0 = time.perf_counter()
        events = webhook.handle(request)
        t1 = time.perf_counter()
        with session_scope(engine) as session:
            summary = record_tracking_events(session=session, provider="sendgrid", events=events)
        timings["handle_s"] += t1 - t0
        timings["record_s"] += time.perf_counter() - t1
        if summary.stored != len(events) or summary.unmatched:
            raise RuntimeError(f"profile batch: {summary}")

    t0 = time.perf_counter()
    for body in bodies[:half]:
        one(body)
    plain_s = time.perf_counter() - t0
    events = half * events_per_batch
    unprofiled = {
        "events_per_s": round(events / plain_s),
        "handle_ms_per_event": round(1000 * timings["handle_s"] / events, 3),
        "record_ms_per_event": round(1000 * timings["record_s"] / events, 3),
    }
    profiler = Profiler(interval=PROFILE_INTERVAL_S)
    profiler.start()
    t0 = time.perf_counter()
    for body in bodies[half:]:
        one(body)
    profiled_s = time.perf_counter() - t0
    profiler.stop()
    return unprofiled | {
        "profiled_events_per_s": round((len(bodies) - half) * events_per_batch / profiled_s),
        "record_tracking_events": breakdown(profiler, "record_tracking_events"),
        **_report(profiler, html_path),
    }


def breakdown(profiler: Any, function: str) -> list[tuple[str, float]]:
    """Where ``function``'s time goes: its direct callees (and its own lines), by share of
    the profiled time, biggest first."""
    session = profiler.last_session
    root = session.root_frame() if session else None
    if root is None:
        return []
    total = root.time or 1.0
    shares: dict[str, float] = {}

    def walk(frame: Any) -> None:
        if frame.function == function and not frame.is_synthetic:
            for child in frame.children:
                name = child.function
                if child.class_name:
                    name = f"{child.class_name}.{name}"
                where = "(own lines)" if child.is_synthetic else f"{name} ({child.file_path_short})"
                shares[where] = shares.get(where, 0.0) + child.time
            return
        for child in frame.children:
            walk(child)

    walk(root)
    return [
        (where, round(100 * spent / total, 1))
        for where, spent in sorted(shares.items(), key=lambda kv: -kv[1])
    ]


# Command line.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` explains it)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhooks",
        description=(
            "Benchmark the ESP tracking-webhook ingest of a real crm-notify serve on loopback: "
            "signed SendGrid batches (events/s stored, latency per batch), replays of them "
            "(all duplicates), single-event Postmark calls from several clients (calls/s, "
            "latency), on SQLite and PostgreSQL, and a pyinstrument profile of the SendGrid "
            "path. Every answer and row is checked. Databases and processes are removed at "
            "the end (also on Ctrl-C or SIGTERM)."
        ),
        epilog=(
            "PostgreSQL runs need a server with trust auth (--postgres-url); a throw-away "
            "database crm_bench_webhooks_<tag> is created and dropped. About 3 minutes on 2 "
            "cores, --quick about 40 s. docs/benchmarks.md explains the figures. Example: "
            "python -m bench.webhooks --quick --database sqlite"
        ),
    )
    parser.add_argument(
        "--database",
        action="append",
        choices=["sqlite", "postgresql"],
        help="database to run on; repeat for both (default: both)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it works")
    parser.add_argument(
        "--notifications",
        type=int,
        help=f"sent SendGrid notifications created to link to (default: "
        f"{FULL['notifications']:,}, --quick: {QUICK['notifications']:,})",
    )
    parser.add_argument(
        "--batches",
        type=int,
        help=f"measured SendGrid batches (default: {FULL['batches']}, --quick: {QUICK['batches']})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="events per SendGrid batch (1000)"
    )
    parser.add_argument(
        "--replays",
        type=int,
        help=f"batches posted again (default: {FULL['replays']}, --quick: {QUICK['replays']})",
    )
    parser.add_argument(
        "--sendgrid-clients", type=int, default=1, help="concurrent SendGrid clients (1)"
    )
    parser.add_argument(
        "--postmark-calls",
        type=int,
        help=f"measured Postmark calls (default: {FULL['postmark_calls']:,}, --quick: "
        f"{QUICK['postmark_calls']})",
    )
    parser.add_argument(
        "--postmark-clients", type=int, default=4, help="concurrent Postmark clients (4)"
    )
    parser.add_argument(
        "--notification-id",
        action="store_true",
        help="SendGrid events also carry our crm_notify_id custom arg (as our adapter sends "
        "it); by default they name their notification by sg_message_id only",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the pyinstrument run")
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="server on which the throw-away database is created (default: %(default)s)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=services.ROOT / "bench" / "results",
        help="where logs, the profiles and webhooks.json go (default: bench/results)",
    )
    return parser.parse_args(argv)


def summary(results: list[dict[str, Any]]) -> str:
    """The figures as Markdown tables, and the profiles' top items."""
    phases = {
        "sendgrid": "SendGrid batches",
        "replay": "replayed batches",
        "postmark": "Postmark single events",
    }
    keys = ["calls", "events", "seconds", "events_per_s", "p50_ms", "p95_ms"]
    rows = []
    for one in results:
        for phase, what in phases.items():
            f = one[phase]
            cpu = [f["cpu_s"]["serve"], f"{f['serve_cpu_ms_per_event']:.2f}", f["cpu_s"]["machine"]]
            rows.append([one["database"], what, *(f[k] for k in keys), *cpu])
    headers = ["database", "calls of", *keys, "serve CPU s", "ms/event", "machine CPU s"]
    text = table(headers, rows)
    for one in (one for one in results if "profile" in one):
        p = one["profile"]
        text += (
            f"\n\nIn-process SendGrid path ({one['database']}): {p['events_per_s']:,} events/s; "
            f"check + parse {p['handle_ms_per_event']:.3f} ms/event, store "
            f"{p['record_ms_per_event']:.3f} ms/event. Profile {p['profile']}\n"
        )
        for title, items in (
            ("record_tracking_events by callee", p["record_tracking_events"]),
            ("crm_notify by total time", p["crm_notify_total_time"]),
            ("by self time", p["self_time"]),
            (
                f"Postmark in process ({p['postmark']['ms_per_call']} ms/call) by callee",
                p["postmark"]["call"],
            ),
            ("Postmark record_tracking_events by callee", p["postmark"]["record_tracking_events"]),
        ):
            text += f"{title}:\n" + "".join(
                f"  {v:5.1f}%  {w}\n" for w, v in items[:TOP] if v >= 0.5
            )
    return text


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    services.exit_on_signals()
    sizes = QUICK if args.quick else FULL

    def size(name: str) -> int:
        value = getattr(args, name)
        return int(sizes[name] if value is None else value)

    options = Options(
        notifications=size("notifications"),
        batches=size("batches"),
        batch_size=args.batch_size,
        replays=min(size("replays"), size("batches")),
        sendgrid_clients=args.sendgrid_clients,
        postmark_calls=size("postmark_calls"),
        postmark_clients=args.postmark_clients,
        profile_events=0 if args.no_profile else sizes["profile_events"],
        in_process_calls=sizes["in_process_calls"],
        notification_id=args.notification_id,
        postgres_url=args.postgres_url,
        results_dir=args.results_dir,
    )
    options.results_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{int(time.time()) % 100000}{os.getpid() % 1000}"
    info = machine()
    print(
        f"crm-notify bench.webhooks: {info['cores']} cores, {info['cpu']}, Python {info['python']}"
    )
    started = time.monotonic()
    results = []
    for kind in list(dict.fromkeys(args.database or ["sqlite", "postgresql"])):
        print(f"[{time.monotonic() - started:5.0f}s] {kind} ...", flush=True)
        results.append(run_database(kind, options, tag))
    elapsed = time.monotonic() - started
    out = options.results_dir / "webhooks.json"
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "options": {k: str(v) for k, v in vars(options).items()},
                "results": results,
                "seconds": round(elapsed),
            },
            indent=2,
        )
    )
    print()
    print(summary(results))
    print(f"\n{elapsed:.0f}s; figures in {out}, logs and profiles in {options.results_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
