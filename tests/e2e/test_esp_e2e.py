"""End to end through ``crm-notify serve``: failover from a failing ESP to the next, the
primary's tracking webhook feeding suppression and KPIs, and the outbox commands.

The primary is a Postmark stand-in (a real HTTP server on loopback checking the documented
request), the backup an aiosmtpd server; events come from the official Segment SDK.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from segment.analytics.client import Client as SegmentClient

from tests.conftest import ROOT
from tests.esp._api_server import Answer, ApiServer, RecordedRequest
from tests.support.servers import SmtpSink
from tests.support.service import ServiceProcess, run_cli, service_env

pytestmark = pytest.mark.e2e

TOKEN = "pm-server-token"
HOOK_CREDENTIALS = "postmark-hook:Wh-s3cret"


def _postmark_contract(request: RecordedRequest) -> Answer | None:
    """Refuse what Postmark would refuse: wrong path or token, missing fields."""
    if (request.method, request.path) != ("POST", "/email"):
        return Answer(404, json={"ErrorCode": 404, "Message": "not found"})
    if request.headers.get("x-postmark-server-token") != TOKEN:
        return Answer(401, json={"ErrorCode": 10, "Message": "bad or missing server token"})
    body = request.json
    if not all(body.get(field) for field in ("From", "To", "Subject")):
        return Answer(422, json={"ErrorCode": 300, "Message": "invalid email request"})
    return None


@pytest.fixture
def primary() -> Iterator[ApiServer]:
    with ApiServer(check=_postmark_contract) as api:
        yield api


@pytest.fixture
def start_service(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, primary: ApiServer
) -> Iterator[Callable[[], tuple[ServiceProcess, dict[str, str]]]]:
    started: list[ServiceProcess] = []

    def start() -> tuple[ServiceProcess, dict[str, str]]:
        env = service_env(
            {
                "CRM_NOTIFY_DATABASE_URL": database_url,
                "CRM_NOTIFY_ESPS": json.dumps(
                    {
                        "primary": f"postmark://${{PM_TOKEN}}@{primary.netloc}?insecure=1",
                        "backup": smtp_sink.url,
                    }
                ),
                "PM_TOKEN": TOKEN,
                "CRM_NOTIFY_ESP_FAILOVER_THRESHOLD": "1",
                "CRM_NOTIFY_ESP_FAILOVER_COOLDOWN_S": "3600",
                "CRM_NOTIFY_POSTMARK_WEBHOOK_AUTH": HOOK_CREDENTIALS,
                "CRM_NOTIFY_RULES_DIR": str(ROOT / "rules"),
                "CRM_NOTIFY_TEMPLATES_DIR": str(ROOT / "templates"),
                "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
                "CRM_NOTIFY_MAIL_FROM": "Shop <orders@shop.example>",
                "CRM_NOTIFY_RELAY_INTERVAL_S": "0.5",
            }
        )
        run_cli(env, "db", "upgrade")
        service = ServiceProcess(env, tmp_path / "serve.log")
        started.append(service)
        return service, env

    yield start
    for service in started:
        service.stop()


def _identify(url: str, env: dict[str, str], user_id: str, email: str) -> None:
    key = run_cli(env, "api-keys", "create", f"shop-{uuid.uuid4().hex[:6]}").stdout.split()[-1]
    errors: list[Exception] = []
    client = SegmentClient(key, host=url, sync_mode=True, on_error=lambda e, _b: errors.append(e))
    client.identify(user_id, {"email": email, "first_name": "Alice"})
    client.flush()
    assert errors == []


def _outbox(env: dict[str, str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(run_cli(env, "outbox", "list", "--json").stdout)
    return rows


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _kpis(env: dict[str, str]) -> dict[str, dict[str, object]]:
    payload = json.loads(run_cli(env, "kpis", "--json").stdout)
    return {row["rule"]: row for row in payload["rules"]}


def test_a_failing_primary_fails_over_to_the_backup_and_sends_once(
    start_service: Callable[[], tuple[ServiceProcess, dict[str, str]]],
    primary: ApiServer,
    smtp_sink: SmtpSink,
) -> None:
    # Given a primary ESP in an outage
    primary.default = Answer(503, json={"ErrorCode": 100, "Message": "Maintenance"})
    service, env = start_service()
    # When a shop's SDK reports a new customer
    _identify(service.url, env, "cust-1", "alice@example.com")
    # Then the welcome mail arrives through the backup, once, after one refused attempt
    (message,) = smtp_sink.wait_for(1, timeout=30)
    assert message["Subject"].startswith("Welcome, Alice")
    _wait_for(lambda: [row["status"] for row in _outbox(env)] == ["sent"], "the sent status")
    (row,) = _outbox(env)
    assert row["esp"] == "backup"
    assert len(primary.requests) == 1
    time.sleep(1)  # nothing else arrives later (no second send by the relay or a retry)
    assert len(smtp_sink.messages) == 1 and len(primary.requests) == 1


def test_tracking_webhook_suppresses_a_hard_bounce_and_feeds_the_kpis(
    start_service: Callable[[], tuple[ServiceProcess, dict[str, str]]],
    primary: ApiServer,
    smtp_sink: SmtpSink,
) -> None:
    # Given a healthy primary and a welcome mail it accepted
    message_id = str(uuid.uuid4())
    primary.default = Answer(
        200,
        json={"To": "alice@example.com", "MessageID": message_id, "ErrorCode": 0, "Message": "OK"},
    )
    service, env = start_service()
    _identify(service.url, env, "cust-2", "Alice@Example.com")
    _wait_for(lambda: [row["status"] for row in _outbox(env)] == ["sent"], "the sent status")
    (row,) = _outbox(env)
    assert (row["esp"], row["esp_message_id"]) == ("primary", message_id)
    assert primary.last.json["Metadata"]["crm_notify_id"] == str(row["id"])
    hook = f"{service.url}/v1/webhooks/esp/primary"
    auth = "Basic " + base64.b64encode(HOOK_CREDENTIALS.encode()).decode()

    def post(record: dict[str, object], authorization: str = auth) -> httpx.Response:
        return httpx.post(
            hook,
            content=json.dumps(record),
            headers={"Content-Type": "application/json", "Authorization": authorization},
        )

    common = {"MessageID": message_id, "MessageStream": "outbound", "Metadata": {}}
    delivered = {
        "RecordType": "Delivery",
        "Recipient": "alice@example.com",
        "DeliveredAt": "2026-11-23T05:00:00Z",
        **common,
    }
    bounced = {
        "RecordType": "Bounce",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Email": "alice@example.com",
        "BouncedAt": "2026-11-23T05:01:00Z",
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        **common,
    }
    # When Postmark reports the delivery and a later hard bounce (and a forger tries too)
    forged = post(bounced, "Basic " + base64.b64encode(b"postmark-hook:guess").decode())
    assert forged.status_code == 403
    assert post(delivered).json() == {"received": 1, "stored": 1, "duplicates": 0, "unmatched": 0}
    assert post(bounced).json()["stored"] == 1
    assert post(bounced).json()["duplicates"] == 1  # Postmark retried the call
    # Then the address is suppressed, by the webhook
    listed = run_cli(env, "suppressions", "list").stdout
    assert "alice@example.com" in listed.lower() and "hard_bounce" in listed
    # and the rule's KPIs count the delivery and the bounce
    welcome = _kpis(env)["welcome"]
    assert (welcome["sent"], welcome["delivered"], welcome["bounced"]) == (1, 1, 1)
    assert welcome["bounce_rate"] == 1.0
    # and an unconfigured provider's webhook says what to set
    missing = httpx.post(f"{service.url}/v1/webhooks/esp/sendgrid", content=b"[]")
    assert missing.status_code == 404
    assert "CRM_NOTIFY_SENDGRID_WEBHOOK_PUBLIC_KEY" in missing.json()["message"]
    assert smtp_sink.messages == []
