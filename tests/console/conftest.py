"""A running app with a contact who got a welcome mail, and console users to sign in as."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from crm_notify.app import create_app
from crm_notify.console import create_user
from crm_notify.events.schemas import parse_call
from crm_notify.migrations import upgrade
from crm_notify.outbox.models import Notification
from crm_notify.runtime import Runtime
from tests.conftest import ROOT
from tests.support.servers import SmtpSink, serve

PASSWORD = "correct horse battery"
ADMIN = "admin@shop.example"
SUPPORT = "support@shop.example"


@dataclass
class Console:
    """The app's base URL, its runtime, and the welcome mail sent to ada@example.com."""

    url: str
    runtime: Runtime
    contact_id: int
    notification_id: int
    sink: SmtpSink


def _call(obj: dict[str, Any]) -> Any:
    moment = datetime.now(UTC)
    return parse_call({"timestamp": moment.isoformat(), **obj}, type_hint=None, received_at=moment)


@pytest.fixture
def console_app(make_settings: Any, smtp_sink: SmtpSink, tmp_path: Path) -> Iterator[Console]:
    rules_dir = tmp_path / "rules"  # a copy: tests may add files to it
    shutil.copytree(ROOT / "rules", rules_dir)
    runtime = Runtime.from_settings(make_settings(esp_url=smtp_sink.url, rules_dir=rules_dir))
    upgrade(runtime.engine)
    traits = {"email": "ada@example.com", "first_name": "Ada"}
    runtime.intake.ingest([_call({"type": "identify", "userId": "u-ada", "traits": traits})])
    with Session(runtime.engine) as session:
        row = session.exec(select(Notification).order_by(col(Notification.id))).first()
    assert row is not None and row.id is not None and row.contact_id is not None
    runtime.delivery.deliver(row.id)
    try:
        with serve(create_app(runtime.settings, runtime=runtime)) as url:
            yield Console(url, runtime, row.contact_id, row.id, smtp_sink)
    finally:
        runtime.close()


@pytest.fixture
def users(console_app: Console) -> None:
    create_user(ADMIN, PASSWORD, role="admin", engine=console_app.runtime.engine)
    create_user(SUPPORT, PASSWORD, role="support", engine=console_app.runtime.engine)
