"""``python -m bench.gates``: how fast the send gate holds, lists, rejects and releases a batch.

For a batch gate of N held notifications (1,000 and 10,000 by default), once on SQLite (a
throw-away file) and once on a throw-away PostgreSQL database (skipped, with a message, when
the server does not answer):

- **hold**: N pending notifications of a gated rule (and a contact each) are written in one
  transaction, as the scheduler's firing leaves them, and ``GateHold.hold(session, ids,
  batch=True, pass_gates={})`` puts them on hold under one batch gate; only that call is timed
  (the commit after it is printed beside it);
- **download**: every item fetched through the real gate routes (``make_router`` in a FastAPI
  app under uvicorn on 127.0.0.1, in a thread of this process), ``limit=5000`` per page,
  following the ``next`` links, with httpx;
- **reject**: 100 single calls of the first 100 items' ``cancelUri``, one after the other on
  one keep-alive connection; calls per second;
- **finish**: one call of the gate's finish URI attaching ``{"promo_code": "X"}`` to every
  remaining item and releasing them all.

A warm-up gate of a few items goes through the same four steps first on each database. Every
answer is checked (item counts, ``changed``, ``released``), and at the end the rows: N - 100
items ``pending`` with the promo code in ``gate_data``, 100 ``cancelled``, the gate
``finished``. The uvicorn server, the databases and the temporary rules are removed at the end
(also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bench import services
from bench.__main__ import machine
from bench.report import table
from crm_notify.contacts.models import Contact
from crm_notify.db import insert_rows, make_engine, new_row
from crm_notify.gates.api import make_router
from crm_notify.gates.hold import GateHold
from crm_notify.gates.model import Gate
from crm_notify.gates.payload import gate_uri
from crm_notify.gates.tokens import GateAction
from crm_notify.migrations import upgrade
from crm_notify.outbox.models import Notification, NotificationStatus
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.loader import load_rules

#: Held notifications per measured gate, by default.
SIZES = (1_000, 10_000)
#: Items in the warm-up gate (not reported).
WARMUP_ITEMS = 50
#: Items rejected one by one per gate (the warm-up gate rejects :data:`WARMUP_REJECTS`).
REJECTS = 100
WARMUP_REJECTS = 5
#: Items per page of the download (the API's maximum).
PAGE_LIMIT = 5000
#: Pages fetched at most per download: a ``next`` link that never ends stops the run.
MAX_PAGES = 100
#: The data the finish call attaches to every remaining item.
PROMO = {"promo_code": "X"}
#: The rule the held sends belong to: a scheduled (idle cart) rule with a gate on loopback.
#: Nothing notifies the gate in this benchmark, so its URL is never called.
RULE_NAME = "bench-gated-cart"
RULE = f"""\
name: {RULE_NAME}
trigger: {{idle_for: {{entity: cart, after: 4h}}}}
template: abandoned_cart
purpose: marketing
gate:
  url: http://127.0.0.1:9/crm-gate
  timeout: 1h
  on_timeout: release
  actions:
    - {{id: check-stock}}
    - {{id: add-promo, field: promo_code}}
"""
#: Seconds an HTTP call may take before the run fails.
HTTP_TIMEOUT_S = 300


@dataclass
class GateFigures:
    """What one gate of ``items`` held notifications took on ``store``."""

    store: str
    items: int
    hold_ms: float = 0.0
    commit_ms: float = 0.0
    download_ms: float = 0.0
    pages: int = 0
    reject_s: float = 0.0
    rejects: int = 0
    finish_ms: float = 0.0
    finish_bytes: int = 0
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.items / (self.download_ms / 1000) if self.download_ms else 0.0

    @property
    def rejects_per_s(self) -> float:
        return self.rejects / self.reject_s if self.reject_s else 0.0

    def figures(self) -> dict[str, Any]:
        """The figures as JSON-able values."""
        return {
            "store": self.store,
            "items": self.items,
            "hold_ms": round(self.hold_ms, 1),
            "commit_ms": round(self.commit_ms, 1),
            "download_ms": round(self.download_ms, 1),
            "download_pages": self.pages,
            "download_items_per_s": round(self.items_per_s),
            "rejects": self.rejects,
            "reject_calls_per_s": round(self.rejects_per_s, 1),
            "finish_ms": round(self.finish_ms, 1),
            "finish_body_bytes": self.finish_bytes,
            "checks": self.checks,
        }


# Set-up.


def gated_rules(rules_dir: Path) -> RuleSet:
    """The benchmark's one gated rule, loaded from ``rules_dir`` as the service loads rules
    (the gate's environment is not checked: it has no ``${NAME}``)."""
    rules_dir.mkdir(parents=True, exist_ok=True)
    (rules_dir / "bench_gated_cart.yaml").write_text(RULE, "utf-8")
    rules = load_rules(rules_dir)
    if [rule.name for rule in rules.rules if rule.gate is not None] != [RULE_NAME]:
        raise RuntimeError(f"{RULE_NAME} did not load as a gated rule")
    return rules


def write_pending(session: Session, count: int, tag: str) -> list[int]:
    """Insert ``count`` contacts and a ``pending`` notification of :data:`RULE_NAME` for each
    (step 0, as a scheduler pass writes them) in the session's transaction; return their ids."""
    contacts = [
        new_row(
            Contact,
            {"email": f"shopper{n}.{tag}@example.com", "user_id": f"u-{tag}-{n}"},
        )
        for n in range(count)
    ]
    contact_ids = insert_rows(session, Contact, contacts, key="email")
    rows = [
        new_row(
            Notification,
            {
                "idempotency_key": f"{RULE_NAME}:{tag}:{n}",
                "rule": RULE_NAME,
                "step": 0,
                "template": "abandoned_cart",
                "purpose": "marketing",
                "channel": "email",
                "contact_id": contact_ids[contact["email"]],
                "to_address": contact["email"],
                "status": NotificationStatus.PENDING.value,
                "context": {"cart": {"total": 10 + n % 90, "sku": f"SKU-{n % 500}"}},
            },
        )
        for n, contact in enumerate(contacts)
    ]
    by_key = insert_rows(session, Notification, rows, key="idempotency_key")
    return sorted(by_key.values())


@contextmanager
def database(kind: str, postgres_url: str, tag: str) -> Iterator[str]:
    """A new, empty database URL of ``kind`` (a SQLite file in a temporary folder, or a
    throw-away PostgreSQL database ``crm_bench_gates_<tag>``); removed on exit."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="crm-bench-gates-") as folder:
            yield f"sqlite:///{Path(folder) / 'crm-notify.db'}"
    else:
        with services.postgres_database(postgres_url, f"crm_bench_gates_{tag}") as url:
            yield url


def postgres_reachable(url: str) -> str | None:
    """``None`` when the PostgreSQL server of ``url`` answers, else why not."""
    libpq = sa.engine.make_url(url).set(drivername="postgresql")
    try:
        with psycopg.connect(libpq.render_as_string(hide_password=False), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextmanager
def serve_gates(engine: Engine, secret_key: bytes, enqueued: list[int]) -> Iterator[str]:
    """The gate routes (``make_router``) in a FastAPI app under uvicorn on a free loopback
    port, in a thread of this process; yield the base URL, stop the server on exit."""
    port = services.free_port()
    base_url = f"http://127.0.0.1:{port}"
    app = FastAPI()
    app.include_router(
        make_router(
            engine=engine, secret_key=secret_key, base_url=base_url, enqueue=enqueued.extend
        )
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gate-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gate API server did not start")
        time.sleep(0.01)
    try:
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=20)


# The four steps.


def hold_gate(engine: Engine, hold: GateHold, count: int, figures: GateFigures) -> str:
    """Write ``count`` pending notifications, time the hold of them under one batch gate and
    commit; return the gate's public id."""
    tag = secrets.token_hex(4)
    with Session(engine) as session:
        ids = write_pending(session, count, tag)
        started = time.perf_counter()
        result = hold.hold(session, ids, batch=True, pass_gates={})
        held = time.perf_counter()
        if result.released or len(result.gate_ids) != 1:
            raise RuntimeError(
                f"hold: {len(result.released)} not held, {len(result.gate_ids)} gates (want 0, 1)"
            )
        gate = session.get(Gate, result.gate_ids[0])
        assert gate is not None
        public_id = gate.public_id
        session.commit()
        committed = time.perf_counter()
    figures.hold_ms = 1000 * (held - started)
    figures.commit_ms = 1000 * (committed - held)
    return public_id


def download(client: httpx.Client, first_uri: str, figures: GateFigures) -> list[dict[str, Any]]:
    """Every item of the gate, page after page (at most :data:`MAX_PAGES`), timed."""
    items: list[dict[str, Any]] = []
    uri: str | None = first_uri
    started = time.perf_counter()
    while uri is not None:
        if figures.pages >= MAX_PAGES:
            raise RuntimeError(f"download: still a next page after {MAX_PAGES} pages")
        response = client.get(uri)
        if response.status_code != 200:
            raise RuntimeError(f"download: {response.status_code} {response.text[:300]}")
        page = response.json()
        items += page["items"]
        uri = page["next"]
        figures.pages += 1
    figures.download_ms = 1000 * (time.perf_counter() - started)
    return items


def reject(client: httpx.Client, items: Sequence[dict[str, Any]], figures: GateFigures) -> None:
    """Call each item's ``cancelUri`` once, one after the other, timed; each must cancel."""
    bodies = [
        json.dumps({"reason": f"bench: out of stock {n}"}).encode() for n in range(len(items))
    ]
    headers = {"Content-Type": "application/json"}
    answers = []
    started = time.perf_counter()
    for item, body in zip(items, bodies, strict=True):
        answers.append(client.post(item["cancelUri"], content=body, headers=headers))
    figures.reject_s = time.perf_counter() - started
    figures.rejects = len(items)
    for item, response in zip(items, answers, strict=True):
        answer = response.json() if response.status_code == 200 else None
        if not answer or answer["status"] != "cancelled" or not answer["changed"]:
            raise RuntimeError(f"reject {item['id']}: {response.status_code} {response.text[:300]}")


def finish(
    client: httpx.Client, uri: str, items: Sequence[dict[str, Any]], figures: GateFigures
) -> None:
    """One finish call attaching :data:`PROMO` to every item of ``items``, timed; any answer
    but a 2xx ends the run with its status and body."""
    body = json.dumps({"items": [{"id": item["id"], "data": PROMO} for item in items]}).encode()
    headers = {"Content-Type": "application/json"}
    figures.finish_bytes = len(body)
    started = time.perf_counter()
    response = client.post(uri, content=body, headers=headers)
    figures.finish_ms = 1000 * (time.perf_counter() - started)
    if not response.is_success:
        raise RuntimeError(
            f"finish of {len(items)} items ({len(body):,} bytes): {response.status_code} "
            f"{response.text[:1000]}"
        )
    answer = response.json()
    if answer.get("released") != len(items) or answer.get("status") != "finished":
        raise RuntimeError(f"finish: {response.status_code} {response.text[:300]}")


def check_rows(engine: Engine, public_id: str, *, released: int, rejected: int) -> dict[str, Any]:
    """Count the gate's items by status, and those released with the promo code; raise unless
    ``released`` are pending with it, ``rejected`` cancelled and the gate finished."""
    with engine.connect() as connection:
        gate_id, status = connection.execute(
            sa.text("SELECT id, status FROM gate WHERE public_id = :p"), {"p": public_id}
        ).one()
        rows = connection.execute(
            sa.text("SELECT status, gate_data FROM notification WHERE gate_id = :g"), {"g": gate_id}
        ).all()
    by_status: dict[str, int] = {}
    with_promo = 0
    for row_status, data in rows:
        by_status[row_status] = by_status.get(row_status, 0) + 1
        if isinstance(data, str):
            data = json.loads(data)
        with_promo += row_status == "pending" and data == PROMO
    checks: dict[str, Any] = {"gate": status, "items": by_status, "with_promo_code": with_promo}
    checks["ok"] = (
        status == "finished"
        and by_status == {"pending": released, "cancelled": rejected}
        and with_promo == released
    )
    if not checks["ok"]:
        raise RuntimeError(f"row check failed: {checks}")
    return checks


def one_gate(
    store: str,
    engine: Engine,
    hold: GateHold,
    client: httpx.Client,
    base_url: str,
    secret_key: bytes,
    enqueued: list[int],
    *,
    items: int,
    rejects: int,
) -> GateFigures:
    """Hold, download, reject and finish one gate of ``items`` notifications."""
    figures = GateFigures(store=store, items=items)
    public_id = hold_gate(engine, hold, items, figures)
    items_uri = gate_uri(base_url, secret_key, public_id=public_id, action=GateAction.ITEMS)
    listed = download(client, f"{items_uri}&limit={PAGE_LIMIT}", figures)
    if len(listed) != items or len({item["id"] for item in listed}) != items:
        raise RuntimeError(f"download: {len(listed)} items listed, {items} held")
    reject(client, listed[:rejects], figures)
    enqueued.clear()
    finish_uri = gate_uri(base_url, secret_key, public_id=public_id, action=GateAction.FINISH)
    finish(client, finish_uri, listed[rejects:], figures)
    if sorted(enqueued) != sorted(int(item["id"]) for item in listed[rejects:]):
        raise RuntimeError(f"finish: {len(enqueued)} handed to the broker, {items - rejects} kept")
    figures.checks = check_rows(engine, public_id, released=items - rejects, rejected=rejects)
    return figures


def run_store(
    kind: str, sizes: Sequence[int], rules: RuleSet, postgres_url: str, tag: str
) -> list[GateFigures]:
    """Measure every size in ``sizes`` on ``kind`` (``sqlite`` or ``postgresql``)."""
    secret_key = secrets.token_bytes(32)
    enqueued: list[int] = []
    results = []
    with ExitStack() as stack:
        url = stack.enter_context(database(kind, postgres_url, tag))
        engine = make_engine(url)
        stack.callback(engine.dispose)
        upgrade(engine)
        hold = GateHold(rules)
        base_url = stack.enter_context(serve_gates(engine, secret_key, enqueued))
        client = stack.enter_context(httpx.Client(timeout=HTTP_TIMEOUT_S))
        one_gate(
            kind,
            engine,
            hold,
            client,
            base_url,
            secret_key,
            enqueued,
            items=WARMUP_ITEMS,
            rejects=WARMUP_REJECTS,
        )
        for size in sizes:
            figures = one_gate(
                kind,
                engine,
                hold,
                client,
                base_url,
                secret_key,
                enqueued,
                items=size,
                rejects=REJECTS,
            )
            print(
                f"  {kind} N={size:,}: hold {figures.hold_ms:,.0f} ms (commit "
                f"{figures.commit_ms:,.0f} ms), download {figures.download_ms:,.0f} ms in "
                f"{figures.pages} pages, {figures.rejects} rejects {figures.reject_s:.2f} s, "
                f"finish {figures.finish_ms:,.0f} ms",
                flush=True,
            )
            results.append(figures)
    return results


# Command line.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` explains it)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.gates",
        description=(
            "Benchmark the send gate on a batch gate of N held notifications: the hold "
            "(GateHold.hold), downloading the items over HTTP (pages of 5,000), 100 single "
            "rejects over HTTP and one finish call attaching data to every remaining item, "
            "on SQLite and PostgreSQL. Every answer and row is checked; databases and the "
            "server are removed at the end."
        ),
        epilog=(
            "PostgreSQL needs a server with trust auth (--postgres-url); a throw-away database "
            "crm_bench_gates_<tag> is created and dropped, and the run skips PostgreSQL when the "
            "server does not answer. About 30 s on 2 cores. docs/benchmarks.md explains the "
            "figures. Example: python -m bench.gates --size 1000 --database sqlite"
        ),
    )
    parser.add_argument(
        "--database",
        action="append",
        choices=["sqlite", "postgresql"],
        help="database to run on; repeat for both (default: both)",
    )
    parser.add_argument(
        "--size",
        action="append",
        type=int,
        help=f"held notifications per gate (more than {REJECTS}); repeat for several "
        f"(default: {', '.join(f'{s:,}' for s in SIZES)})",
    )
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="server on which the throw-away database is created (default: %(default)s)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=services.ROOT / "bench" / "results" / "gates.json",
        help="where the figures go as JSON (default: bench/results/gates.json)",
    )
    args = parser.parse_args(argv)
    if any(size <= REJECTS for size in args.size or ()):
        parser.error(f"--size must be more than {REJECTS}")
    return args


def summary(results: Sequence[GateFigures]) -> str:
    """The figures as a Markdown table."""
    headers = [
        "store",
        "N",
        "hold ms",
        "download ms",
        "items/s",
        "reject calls/s",
        "finish ms",
    ]
    rows = [
        [
            r.store,
            r.items,
            round(r.hold_ms),
            round(r.download_ms),
            round(r.items_per_s),
            round(r.rejects_per_s, 1),
            f"{r.finish_ms:,.0f}",
        ]
        for r in results
    ]
    return table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    services.exit_on_signals()
    sizes = args.size or list(SIZES)
    stores = list(dict.fromkeys(args.database or ["sqlite", "postgresql"]))
    tag = f"{int(time.time()) % 100000}{os.getpid() % 1000}"
    info = machine()
    print(
        f"crm-notify bench.gates: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    results: list[GateFigures] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="crm-bench-gates-rules-") as folder:
        rules = gated_rules(Path(folder) / "rules")
        for kind in stores:
            if kind == "postgresql":
                why = postgres_reachable(args.postgres_url)
                if why is not None:
                    skipped[kind] = why
                    print(f"PostgreSQL skipped: {args.postgres_url} does not answer ({why})")
                    continue
            print(f"{kind}: running ...", flush=True)
            results += run_store(kind, sizes, rules, args.postgres_url, tag)
    print()
    print(summary(results))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {
                "machine": info,
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "skipped": skipped,
                "results": [r.figures() for r in results],
            },
            indent=2,
        )
    )
    print(f"\nFigures in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
