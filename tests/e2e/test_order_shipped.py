"""End to end: a shop using the official Segment and RudderStack SDKs gets its emails delivered.

The service runs as a real ``crm-notify serve`` process (embedded default, or Redis with a
``crm-notify worker``), mail goes to an aiosmtpd server on loopback.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from segment.analytics.client import Client as SegmentClient

from tests.conftest import ROOT
from tests.support.brokers import SharedBroker
from tests.support.servers import SmtpSink
from tests.support.service import ServiceProcess, WorkerProcess, run_cli, service_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def base_env(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> dict[str, str]:
    env = service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_ESP_URL": smtp_sink.url,
            "CRM_NOTIFY_RULES_DIR": str(ROOT / "rules"),
            "CRM_NOTIFY_TEMPLATES_DIR": str(ROOT / "templates"),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
            "CRM_NOTIFY_MAIL_FROM": "Shop <orders@shop.example>",
            "CRM_NOTIFY_RELAY_INTERVAL_S": "0.5",
        }
    )
    run_cli(env, "db", "upgrade")
    return env


def _api_key(env: dict[str, str]) -> str:
    result = run_cli(env, "api-keys", "create", f"shop-{uuid.uuid4().hex[:6]}")
    return result.stdout.strip().splitlines()[-1]


def _shop_flow(url: str, key: str) -> None:
    """What a shop backend does: identify a customer, then ship their order."""
    errors: list[Exception] = []
    client = SegmentClient(
        key, host=url, sync_mode=True, on_error=lambda exc, _batch: errors.append(exc)
    )
    client.identify("cust-1", {"email": "Alice@Example.com", "first_name": "Alice"})
    client.track("cust-1", "Order Completed", {"order_id": "SO-1001", "total": 42.5})
    client.track(
        "cust-1",
        "Order Updated",
        {"order_id": "SO-1001", "status": "shipped", "tracking_number": "1Z999"},
    )
    client.flush()
    assert errors == []


def _assert_shipped_email(sink: SmtpSink) -> None:
    messages = sink.wait_for(2, timeout=30)
    by_subject = {m["Subject"]: m for m in messages}
    shipped = by_subject["Your order SO-1001 is on its way"]
    assert shipped["To"] == "Alice <Alice@example.com>"
    assert shipped["From"] == "Shop <orders@shop.example>"
    text = shipped.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Tracking number: 1Z999" in text and "Hi Alice" in text
    html = shipped.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "<strong>SO-1001</strong>" in html
    assert any(s.startswith("Welcome, Alice") for s in by_subject)


@pytest.fixture
def embedded_service(base_env: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(base_env, tmp_path / "serve.log")
    yield service
    service.stop()


def test_segment_sdk_order_shipped_on_embedded_default(
    embedded_service: ServiceProcess, base_env: dict[str, str], smtp_sink: SmtpSink
) -> None:
    # Given a running service and an API key
    key = _api_key(base_env)
    # When the shop's Segment SDK reports the customer and the shipped order
    _shop_flow(embedded_service.url, key)
    # Then the customer receives the welcome and the "order shipped" email, once each
    _assert_shipped_email(smtp_sink)
    assert len(smtp_sink.messages) == 2


def test_rudderstack_sdk_reaches_the_service(
    embedded_service: ServiceProcess, base_env: dict[str, str], smtp_sink: SmtpSink
) -> None:
    from rudderstack.analytics.client import Client as RudderClient

    key = _api_key(base_env)
    errors: list[Exception] = []
    client = RudderClient(
        key,
        host=embedded_service.url,
        sync_mode=True,
        on_error=lambda exc, _batch: errors.append(exc),
    )
    client.identify("cust-9", {"email": "bob@example.com", "first_name": "Bob"})
    client.flush()
    assert errors == []
    (message,) = smtp_sink.wait_for(1, timeout=30)
    assert message["Subject"] == "Welcome, Bob! Your account is ready"


def test_service_rejects_bad_keys_and_bad_input_and_keeps_serving(
    embedded_service: ServiceProcess, base_env: dict[str, str]
) -> None:
    key = _api_key(base_env)
    url = embedded_service.url
    # Given requests a careless client could send
    no_key = httpx.post(f"{url}/v1/track", json={"userId": "u", "event": "X"})
    bad_key = httpx.post(f"{url}/v1/track", json={"userId": "u", "event": "X"}, auth=("nope", ""))
    bad_email = httpx.post(
        f"{url}/v1/identify", json={"userId": "u", "traits": {"email": "no@"}}, auth=(key, "")
    )
    crlf_name = httpx.post(
        f"{url}/v1/identify",
        json={"userId": "u", "traits": {"email": "eve@example.com", "first_name": "Eve\r\nBcc: x"}},
        auth=(key, ""),
    )
    # Then each gets a 4xx naming the problem, and the service is still healthy
    assert no_key.status_code == 401 and bad_key.status_code == 401
    assert bad_email.status_code == 400 and bad_email.json()["field"] == "traits.email"
    assert crlf_name.status_code == 400 and crlf_name.json()["field"] == "traits.first_name"
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    assert "/v1/batch" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_segment_sdk_order_shipped_through_broker_workers(
    broker: SharedBroker, base_env: dict[str, str], tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Given the service and a separate worker process sharing a broker
    env = dict(base_env, **broker.env)
    service = ServiceProcess(env, tmp_path / "serve.log")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        key = _api_key(env)
        # When the shop reports the shipped order
        _shop_flow(service.url, key)
        # Then the worker delivers the emails
        _assert_shipped_email(smtp_sink)
    finally:
        worker.stop()
        service.stop()
    assert len(smtp_sink.messages) == 2
