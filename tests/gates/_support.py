"""Shared pieces of the gate protocol tests: gated rows written straight into the database, the
gate routes under uvicorn on loopback, and a notifier and runner pointed at a real HTTP server
playing the integration."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify._net import OutboundPolicy
from crm_notify.actions.signing import SigningSecret, new_secret
from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.gates.api import make_router
from crm_notify.gates.model import Gate, GateAuth, GateConfig, gate_config_json
from crm_notify.gates.notify import GateNotifier
from crm_notify.gates.runner import GateRunner
from crm_notify.outbox.models import (
    Decision,
    Notification,
    NotificationStatus,
    NotificationStatusChange,
)
from tests.esp._api_server import ApiServer
from tests.support.servers import free_port, serve

#: The service's secret key (signs the URIs' tokens).
KEY = b"0123456789abcdef" * 4
#: The default Standard Webhooks secret (CRM_NOTIFY_WEBHOOK_SECRET) and a gate's own.
SECRET = new_secret()
GATE_SECRET = new_secret()
#: The environment the gates' ${NAME} references read.
ENVIRON = {
    "GATE_USER": "crm",
    "GATE_PASSWORD": "s3cr3t:pass",
    "GATE_TOKEN": "tok-42",
    "GATE_SECRET": GATE_SECRET,
    "GATE_KEY": "query-key-7",
}


def gate_config(url: str, **overrides: Any) -> GateConfig:
    """A gate's configuration pointed at ``url`` (Basic auth unless ``auth`` says otherwise)."""
    values: dict[str, Any] = {
        "url": url,
        "auth": GateAuth(basic="${GATE_USER}:${GATE_PASSWORD}"),
        "timeout": timedelta(hours=1),
        "actions": ({"id": "check-stock"}, {"id": "add-promo", "field": "promo_code"}),
    }
    values.update(overrides)
    return GateConfig(**values)


@dataclass
class OpenedGate:
    """A gate written by :func:`open_gate`: its public id, row id and items (notification ids)."""

    public_id: str
    id: int
    items: list[int]
    emails: list[str] = field(default_factory=list)


def open_gate(
    engine: Engine,
    config: GateConfig,
    *,
    batch: bool = True,
    items: int = 3,
    rule: str = "abandoned-cart",
    created_at: datetime | None = None,
    channel: str = "email",
) -> OpenedGate:
    """Write an open gate holding ``items`` gated notifications (one contact each), as the
    hold does at the end of an intake or scheduler transaction."""
    moment = created_at or now()
    public_id = "gt_" + secrets.token_hex(16)
    with Session(engine) as session:
        gate = Gate(
            public_id=public_id,
            rule=rule,
            send_name="reminder",
            batch=batch,
            config=gate_config_json(config),
            created_at=moment,
            deadline=moment + config.timeout,
            next_delivery_at=moment,
        )
        session.add(gate)
        session.flush()
        assert gate.id is not None
        ids, emails = [], []
        for number in range(items):
            email = f"person{number}.{public_id[3:9]}@example.com"
            contact = Contact(email=email, user_id=f"u-{public_id[3:11]}-{number}")
            session.add(contact)
            session.flush()
            row = Notification(
                idempotency_key=f"{rule}:{public_id}:{number}",
                rule=rule,
                template="cart_reminder",
                purpose="marketing",
                channel=channel,
                contact_id=contact.id,
                to_address=email,
                status=NotificationStatus.GATED,
                gate_id=gate.id,
                context={"cart": {"total": 10 + number, "sku": f"SKU-{number}"}},
                created_at=moment,
                updated_at=moment,
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            session.add(
                NotificationStatusChange(
                    notification_id=row.id, status="gated", detail=f"held by gate {public_id}"
                )
            )
            ids.append(row.id)
            emails.append(email)
        session.commit()
        return OpenedGate(public_id=public_id, id=gate.id, items=ids, emails=emails)


def gate_row(engine: Engine, public_id: str) -> Gate:
    """The gate as stored now."""
    with Session(engine) as session:
        gate = session.exec(select(Gate).where(col(Gate.public_id) == public_id)).one()
        session.expunge(gate)
        return gate


def statuses(engine: Engine, ids: Sequence[int]) -> list[str]:
    """The notifications' statuses, in the order of ``ids``."""
    with Session(engine) as session:
        rows = {
            row.id: str(row.status)
            for row in session.exec(select(Notification).where(col(Notification.id).in_(ids)))
        }
    return [rows[i] for i in ids]


def notification(engine: Engine, notification_id: int) -> Notification:
    """One notification as stored now."""
    with Session(engine) as session:
        row = session.get(Notification, notification_id)
        assert row is not None
        session.expunge(row)
        return row


def decisions(engine: Engine, notification_id: int) -> list[Decision]:
    """The decision-log entries of one notification, oldest first."""
    with Session(engine) as session:
        rows = session.exec(
            select(Decision)
            .where(col(Decision.notification_id) == notification_id)
            .order_by(col(Decision.id))
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def history(engine: Engine, notification_id: int) -> list[tuple[str, str | None]]:
    """The status history of one notification: (status, detail), oldest first."""
    with Session(engine) as session:
        rows = session.exec(
            select(NotificationStatusChange)
            .where(col(NotificationStatusChange.notification_id) == notification_id)
            .order_by(col(NotificationStatusChange.id))
        ).all()
        return [(row.status, row.detail) for row in rows]


def follow_ups(engine: Engine, suffix: str) -> list[Notification]:
    """The follow-up notifications whose idempotency key ends with ``suffix``, by id."""
    with Session(engine) as session:
        rows = session.exec(
            select(Notification)
            .where(col(Notification.idempotency_key).endswith(suffix))
            .order_by(col(Notification.id))
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


@dataclass
class GateWorld:
    """The integration (``api``), the gate routes (``base_url``), a notifier and a runner, and
    the ids handed to the broker."""

    engine: Engine
    api: ApiServer
    base_url: str
    notifier: GateNotifier
    runner: GateRunner
    enqueued: list[int] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """The integration's endpoint URL, with a ``${NAME}`` in its query."""
        return f"{self.api.url}/crm-gate?key=${{GATE_KEY}}"


@contextmanager
def gate_world(engine: Engine, *, timeout_s: float = 3.0) -> Iterator[GateWorld]:
    """Everything a protocol test needs, started; stopped afterwards."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    enqueued: list[int] = []
    app = FastAPI()
    app.include_router(
        make_router(engine=engine, secret_key=KEY, base_url=base_url, enqueue=enqueued.extend)
    )
    notifier = GateNotifier(
        policy=OutboundPolicy.allow_loopback(),
        secret_key=KEY,
        base_url=base_url,
        environ=ENVIRON,
        default_secret=SigningSecret.parse(SECRET),
        timeout_s=timeout_s,
    )
    runner = GateRunner(engine=engine, notifier=notifier, enqueue=enqueued.extend, interval_s=0.1)
    with ApiServer() as api, serve(app, port):
        try:
            yield GateWorld(engine, api, base_url, notifier, runner, enqueued)
        finally:
            runner.stop()
            notifier.close()
