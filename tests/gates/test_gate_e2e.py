"""End to end through ``crm-notify serve``: a gated rule holds its sends until a real HTTP
server playing the integrated system answers (single send inline, batch by download), the
integration's data reaches the rendered email, a rejected contact gets nothing, and the
requests are signed (checked with the ``standardwebhooks`` package)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics.client import Client as SegmentClient
from standardwebhooks import Webhook

from crm_notify.actions.signing import new_secret
from tests.conftest import ROOT
from tests.esp._api_server import ApiServer
from tests.support.servers import SmtpSink, write_tree
from tests.support.service import ServiceProcess, run_cli, service_env

pytestmark = pytest.mark.e2e

TOKEN = "gate-token-123"

RULES = {
    "welcome_gated.yaml": """
name: welcome-gated
trigger: {identify: {first: true}}
when: contact.email is defined
template: gated_offer
purpose: transactional
gate:
  url: http://{netloc}/crm-gate
  auth: {header: X-Gate-Token, token: "${GATE_TOKEN}"}
  secret: ${GATE_SECRET}
  timeout: 1h
  actions:
    - {id: add-promo, field: promo_code}
""",
    "order_followup.yaml": """
name: order-followup
trigger: {event: Order Completed}
delay: 1s
template: gated_offer
purpose: transactional
gate:
  url: http://{netloc}/crm-gate
  auth: {header: X-Gate-Token, token: "${GATE_TOKEN}"}
  secret: ${GATE_SECRET}
  on_timeout: drop
""",
}
TEMPLATES = {
    "gated_offer/subject.txt": "Hello {{ contact.first_name }}",
    "gated_offer/body.txt": "Your code: {{ gate.promo_code | default('none') }}",
}


@pytest.fixture
def integration() -> Iterator[ApiServer]:
    with ApiServer() as api:
        yield api


@pytest.fixture
def service(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, integration: ApiServer
) -> Iterator[tuple[ServiceProcess, dict[str, str], str]]:
    rules_dir = tmp_path / "rules"
    write_tree(
        rules_dir,
        {name: text.replace("{netloc}", integration.netloc) for name, text in RULES.items()},
    )
    templates_dir = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates_dir)
    write_tree(templates_dir, TEMPLATES)
    secret = new_secret()
    env = service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_ESP_URL": smtp_sink.url,
            "CRM_NOTIFY_RULES_DIR": str(rules_dir),
            "CRM_NOTIFY_TEMPLATES_DIR": str(templates_dir),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
            "CRM_NOTIFY_RELAY_INTERVAL_S": "0.5",
            "CRM_NOTIFY_SCHEDULER_INTERVAL": "0.5",
            "GATE_TOKEN": TOKEN,
            "GATE_SECRET": secret,
        }
    )
    run_cli(env, "db", "upgrade")
    process = ServiceProcess(env, tmp_path / "serve.log")
    yield process, env, secret
    process.stop()


def _sdk(url: str, env: dict[str, str]) -> SegmentClient:
    key = run_cli(env, "api-keys", "create", f"shop-{uuid.uuid4().hex[:6]}").stdout.split()[-1]
    return SegmentClient(key, host=url, sync_mode=True)


def _gate_calls(integration: ApiServer, count: int, timeout: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(integration.requests) < count:
        assert time.monotonic() < deadline, f"expected {count} gate calls"
        time.sleep(0.1)
    return integration.requests


def _verified(request: Any, secret: str) -> dict[str, Any]:
    assert request.headers["x-gate-token"] == TOKEN
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return payload


def test_single_send_is_held_then_released_with_the_integrations_data(
    service: tuple[ServiceProcess, dict[str, str], str],
    integration: ApiServer,
    smtp_sink: SmtpSink,
) -> None:
    process, env, secret = service
    client = _sdk(process.url, env)
    client.identify("u1", {"email": "ada@example.com", "first_name": "Ada"})
    client.identify("u2", {"email": "bob@example.com", "first_name": "Bob"})
    client.flush()
    # The integration hears of one gate per new contact, each with its item inline
    first, second = (_verified(r, secret) for r in _gate_calls(integration, 2))
    assert {first["rule"], second["rule"]} == {"welcome-gated"}
    assert first["batch"] is False and first["actions"] == [
        {"id": "add-promo", "field": "promo_code"}
    ]
    by_email = {p["items"][0]["email"]: p for p in (first, second)}
    # Nothing goes out while held
    time.sleep(1)
    assert smtp_sink.messages == []
    statuses = json.loads(run_cli(env, "outbox", "list", "--json").stdout)
    assert sorted(row["status"] for row in statuses) == ["gated", "gated"]
    # When it rejects Bob and finishes Ada's gate with a promo code
    bob = by_email["bob@example.com"]
    rejected = httpx.post(bob["items"][0]["rejectUri"], json={"reason": "fraud score 97"})
    assert rejected.status_code == 200
    assert httpx.post(bob["finishUri"]).status_code == 200
    ada = by_email["ada@example.com"]
    item_id = ada["items"][0]["id"]
    finished = httpx.post(
        ada["finishUri"], json={"items": [{"id": item_id, "data": {"promo_code": "SAVE10"}}]}
    )
    assert finished.status_code == 200
    # Then only Ada gets the mail, with her code, once; a second finish changes nothing
    (message,) = smtp_sink.wait_for(1)
    assert message["To"].endswith("<ada@example.com>")
    assert "Your code: SAVE10" in message.get_content()
    assert httpx.post(ada["finishUri"]).status_code == 409
    forged = ada["finishUri"].split("token=")[0] + "token=" + "0" * 64
    assert httpx.post(forged).status_code == 403
    time.sleep(1)
    assert len(smtp_sink.messages) == 1
    explained = run_cli(env, "explain", "--contact", "bob@example.com").stdout
    assert "rejected by the gate: fraud score 97" in explained


def test_a_scheduled_send_is_held_as_a_batch_to_download(
    service: tuple[ServiceProcess, dict[str, str], str],
    integration: ApiServer,
    smtp_sink: SmtpSink,
) -> None:
    process, env, secret = service
    client = _sdk(process.url, env)
    client.identify("u3", {"email": "cy@example.com", "first_name": "Cy"})
    client.track("u3", "Order Completed", {"order_id": "A-1", "total": 10})
    client.flush()
    # The welcome gate (single) and, a second later, the scheduled follow-up's (batch)
    calls = _gate_calls(integration, 2)
    payloads = [_verified(r, secret) for r in calls]
    batch = next(p for p in payloads if p["rule"] == "order-followup")
    single = next(p for p in payloads if p["rule"] == "welcome-gated")
    assert batch["batch"] is True and "items" not in batch and batch["onTimeout"] == "drop"
    downloaded = httpx.get(batch["itemDownloadUri"])
    assert downloaded.status_code == 200
    (item,) = downloaded.json()["items"]
    assert item["email"] == "cy@example.com" and "cancelUri" in item
    # Releasing both sends both mails
    assert httpx.post(batch["finishUri"]).status_code == 200
    assert httpx.post(single["finishUri"]).status_code == 200
    messages = smtp_sink.wait_for(2)
    assert [m.get_content().strip() for m in messages] == ["Your code: none"] * 2
