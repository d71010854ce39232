"""The outbox admin API: ``GET /v1/outbox`` and ``POST /v1/outbox/{id}/retry``, in the real app
under uvicorn (with its in-process delivery threads), against a SendGrid stand-in."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
import uvicorn
from freezegun import freeze_time
from sqlmodel import Session

from crm_notify.app import create_app
from crm_notify.auth.api_keys import create_api_key
from crm_notify.config import Settings
from crm_notify.guards.suppression import suppress
from crm_notify.runtime import Runtime
from tests.esp._api_server import Answer, ApiServer
from tests.outbox._outbox_support import (
    add_notification,
    deliver_until_done,
    history,
    message_ids,
    row,
    sendgrid_settings,
)
from tests.support.servers import free_port

START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@dataclass
class Service:
    client: httpx.Client
    runtime: Runtime
    failed: int
    cancelled: int


@pytest.fixture
def esp() -> Iterator[ApiServer]:
    with ApiServer(default=Answer(500, json={"errors": [{"message": "internal"}]})) as server:
        yield server


@pytest.fixture
def service(make_settings: Callable[..., Settings], esp: ApiServer) -> Iterator[Service]:
    """A dead-lettered and a cancelled notification, then the app serving with an API key."""
    settings = sendgrid_settings(make_settings, esp, delivery_max_age="10m")
    runtime = Runtime.from_settings(settings)
    failed = add_notification(runtime.engine, key="f")
    with freeze_time(START) as clock:
        assert deliver_until_done(runtime.delivery, failed, clock)[-1] == "failed"
    cancelled = add_notification(runtime.engine, key="c", email="bob@example.com")
    with Session(runtime.engine) as session:
        suppress(session=session, email="bob@example.com", reason="complaint", created_by="t")
        session.commit()
    assert runtime.delivery.deliver(cancelled).status == "cancelled"
    key = create_api_key("support-desk", engine=runtime.engine)
    port = free_port()
    app = create_app(settings, runtime=runtime)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(key, "")) as client:
        yield Service(client, runtime, failed, cancelled)
    server.should_exit = True
    thread.join(timeout=30)


def test_list_failed_then_replay_one(service: Service, esp: ApiServer) -> None:
    # When support lists the failed notifications
    listed = service.client.get("/v1/outbox", params={"status": "failed"})
    # Then the dead-lettered one is there, with why
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [n["id"] for n in body["notifications"]] == [service.failed]
    first = body["notifications"][0]
    assert first["status"] == "failed" and first["last_error"].startswith("dead-lettered after")
    assert "message" not in first and "context" not in first
    failures = len(esp.requests)
    (message_id,) = set(message_ids(esp))
    # When the ESP is back and support replays it
    esp.default = Answer(202, headers={"X-Message-Id": "sg-api"})
    replayed = service.client.post(f"/v1/outbox/{service.failed}/retry")
    # Then it is handed to the delivery threads, and sent once with the same Message-ID
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["id"] == service.failed
    assert replayed.json()["status"] in {"queued", "sending", "sent"}
    deadline = time.monotonic() + 20
    while row(service.runtime.engine, service.failed).status != "sent":
        assert time.monotonic() < deadline, "the replay was not delivered"
        time.sleep(0.05)
    assert len(esp.requests) == failures + 1 and message_ids(esp)[-1] == message_id
    assert ("pending", "replayed by api-key:support-desk") in history(
        service.runtime.engine, service.failed
    )
    # And replaying it again is refused: it is sent now
    again = service.client.post(f"/v1/outbox/{service.failed}/retry")
    assert again.status_code == 409
    assert again.json()["message"] == (
        f"notification {service.failed} is sent: only failed notifications can be replayed"
    )


def test_cancelled_missing_and_unauthenticated_are_refused(service: Service) -> None:
    cancelled = service.client.post(f"/v1/outbox/{service.cancelled}/retry")
    assert cancelled.status_code == 409 and cancelled.json()["code"] == "conflict"
    assert "never replayed" in cancelled.json()["message"]
    assert row(service.runtime.engine, service.cancelled).status == "cancelled"
    missing = service.client.post("/v1/outbox/999999/retry")
    assert missing.status_code == 404
    anonymous = httpx.post(f"{service.client.base_url}/v1/outbox/{service.failed}/retry")
    assert anonymous.status_code == 401
    assert httpx.get(f"{service.client.base_url}/v1/outbox").status_code == 401
    assert row(service.runtime.engine, service.failed).status == "failed"


def test_list_parameters_are_checked(service: Service) -> None:
    bad_status = service.client.get("/v1/outbox", params={"status": "lost"})
    assert bad_status.status_code == 422 and bad_status.json()["message"].startswith("status:")
    bad_limit = service.client.get("/v1/outbox", params={"limit": "0"})
    assert bad_limit.status_code == 422 and bad_limit.json()["field"] == "limit"
    bad_since = service.client.get("/v1/outbox", params={"since": "someday"})
    assert bad_since.status_code == 422 and bad_since.json()["field"] == "since"
    everything = service.client.get("/v1/outbox", params={"limit": "1"}).json()
    assert len(everything["notifications"]) == 1 and everything["limit"] == 1
    cancelled = service.client.get("/v1/outbox", params={"status": "cancelled"}).json()
    assert [n["to_address"] for n in cancelled["notifications"]] == ["bob@example.com"]
