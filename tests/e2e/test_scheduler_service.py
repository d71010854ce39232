"""End to end: a delayed rule fires from the scheduler in `crm-notify serve`, across a restart."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.servers import SmtpSink, write_tree
from tests.support.service import ServiceProcess, run_cli, service_env

pytestmark = pytest.mark.e2e

RULE = """
name: thanks-later
trigger: {event: Order Completed}
delay: 3s
template: order_shipped
purpose: transactional
"""


def test_delayed_send_survives_a_service_restart(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    # Given a service with a rule that sends 3 seconds after an order
    write_tree(tmp_path / "rules", {"thanks.yaml": RULE})
    env = service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_ESP_URL": smtp_sink.url,
            "CRM_NOTIFY_RULES_DIR": str(tmp_path / "rules"),
            "CRM_NOTIFY_TEMPLATES_DIR": str(ROOT / "templates"),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
            "CRM_NOTIFY_SCHEDULER_INTERVAL": "0.5",
            "CRM_NOTIFY_RELAY_INTERVAL_S": "0.5",
        }
    )
    run_cli(env, "db", "upgrade")
    key = run_cli(env, "api-keys", "create", f"k-{uuid.uuid4().hex[:6]}").stdout.split()[-1]
    service = ServiceProcess(env, tmp_path / "serve-1.log")
    try:
        batch = {
            "batch": [
                {"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}},
                {
                    "type": "track",
                    "userId": "u1",
                    "event": "Order Completed",
                    "properties": {"order_id": "A7"},
                },
            ]
        }
        assert httpx.post(f"{service.url}/v1/batch", json=batch, auth=(key, "")).status_code == 200
    finally:
        # When the service stops before the send is due
        service.stop()
    time.sleep(3.5)
    assert smtp_sink.messages == []
    # Then a restarted service fires the overdue timer, once
    service = ServiceProcess(env, tmp_path / "serve-2.log")
    try:
        (message,) = smtp_sink.wait_for(1, timeout=20)
        assert message["Subject"] == "Your order A7 is on its way"
        time.sleep(1.5)
        assert len(smtp_sink.messages) == 1
    finally:
        service.stop()
