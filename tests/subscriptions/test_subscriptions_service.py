"""Webhook subscriptions as users run them (issue 8): the admin API, the `crm-notify webhooks`
commands, and a running `crm-notify serve` telling a subscriber from the subscriptions file
about a profile change a shop's Segment SDK reported, within seconds."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from segment.analytics.client import Client as SegmentClient
from sqlalchemy.engine import Engine
from standardwebhooks import Webhook

from crm_notify._net import OutboundPolicy
from crm_notify.actions.signing import new_secret
from crm_notify.auth.api_keys import ApiKeyAuthenticator, create_api_key
from crm_notify.subscriptions.api import make_router
from crm_notify.subscriptions.sender import SubscriptionSender
from tests.conftest import ROOT
from tests.esp._api_server import Answer, ApiServer
from tests.support.servers import serve
from tests.support.service import ServiceProcess, run_cli, service_env


@pytest.fixture
def receiver() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


@pytest.fixture
def api(engine: Engine) -> Iterator[httpx.Client]:
    """A client of the subscription routes under uvicorn, authenticated with a fresh key."""
    key = create_api_key("admin", engine=engine)
    sender = SubscriptionSender(environ={}, policy=OutboundPolicy.allow_loopback())
    app = FastAPI()
    app.include_router(
        make_router(engine=engine, authenticate=ApiKeyAuthenticator(engine=engine), sender=sender)
    )
    with serve(app) as url, httpx.Client(base_url=url, auth=(key, "")) as client:
        yield client
    sender.close()


def test_the_api_creates_pings_disables_and_removes(api: httpx.Client, receiver: ApiServer) -> None:
    # When an admin subscribes a URL through the API
    created = api.post(
        "/v1/webhook-subscriptions",
        json={
            "url": f"{receiver.url}/crm",
            "name": "crm",
            "events": ["contact.unsubscribed"],
            "sources": ["contact", "admin"],
            "headers": {"X-Api-Key": "k-1"},
        },
    )
    # Then the answer holds the signing secret, once
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("whsec_")
    assert (body["events"], body["sources"], body["enabled"]) == (
        ["contact.unsubscribed"],
        ["contact", "admin"],
        True,
    )
    assert "secret" not in api.get("/v1/webhook-subscriptions/crm").json()
    # And a ping reaches the receiver signed, with the header
    pinged = api.post("/v1/webhook-subscriptions/crm/ping").json()
    assert pinged == {"ok": True, "status": 200, "error": None}
    payload = Webhook(secret).verify(receiver.last.body, receiver.last.headers)
    assert payload["type"] == "webhook.ping" and payload["data"] == {"subscription": "crm"}
    assert receiver.last.headers["x-api-key"] == "k-1"
    # And a failing ping says why
    receiver.respond(410, body="gone")
    assert api.post("/v1/webhook-subscriptions/crm/ping").json() == {
        "ok": False,
        "status": 410,
        "error": "answered 410: gone",
    }
    shown = api.get("/v1/webhook-subscriptions").json()["subscriptions"]
    assert [(s["name"], s["last_status"], s["sent"]) for s in shown] == [("crm", 410, 0)]
    # And it can be disabled with a reason, enabled, and removed
    disabled = api.patch(
        "/v1/webhook-subscriptions/crm", json={"enabled": False, "reason": "CRM migration"}
    )
    assert (disabled.json()["enabled"], disabled.json()["disabled_reason"]) == (
        False,
        "CRM migration",
    )
    assert api.patch("/v1/webhook-subscriptions/crm", json={"enabled": True}).json()["enabled"]
    assert api.delete("/v1/webhook-subscriptions/crm").status_code == 204
    assert api.get("/v1/webhook-subscriptions/crm").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        ({"url": "ftp://x.example/"}, 422, "url", "url: unsupported URL scheme 'ftp'"),
        (
            {"url": "https://x.example/", "events": ["order.placed"]},
            422,
            "events",
            "events: unknown",
        ),
        (
            {"url": "https://x.example/", "sources": "contact"},
            422,
            "sources",
            "sources: Input should be",
        ),
        ({"url": "https://x.example/", "colour": "red"}, 422, "colour", "colour: Extra inputs"),
        ({}, 422, "url", "url: Field required"),
    ],
)
def test_the_api_names_the_field_of_bad_input(
    api: httpx.Client, body: dict[str, Any], status: int, field: str, message: str
) -> None:
    response = api.post("/v1/webhook-subscriptions", json=body)
    assert response.status_code == status
    assert response.json()["field"] == field
    assert response.json()["message"].startswith(message)


def test_the_api_needs_a_key_and_refuses_a_taken_name(api: httpx.Client) -> None:
    assert httpx.get(f"{api.base_url}/v1/webhook-subscriptions").status_code == 401
    first = api.post("/v1/webhook-subscriptions", json={"url": "https://x.example/", "name": "x"})
    assert first.status_code == 201
    again = api.post("/v1/webhook-subscriptions", json={"url": "https://x.example/", "name": "x"})
    assert (again.status_code, again.json()["code"]) == (409, "conflict")


@pytest.fixture
def base_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    env = service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_ESP_URL": f"file://{tmp_path / 'outbox'}",
            "CRM_NOTIFY_RULES_DIR": str(ROOT / "rules"),
            "CRM_NOTIFY_TEMPLATES_DIR": str(ROOT / "templates"),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
            "CRM_NOTIFY_SCHEDULER_INTERVAL": "0.3",
            "CRM_NOTIFY_WEBHOOK_DISPATCH_INTERVAL_S": "0.3",
        }
    )
    run_cli(env, "db", "upgrade")
    return env


def test_the_cli_adds_lists_pings_and_removes(
    base_env: dict[str, str], receiver: ApiServer
) -> None:
    added = run_cli(
        base_env,
        "webhooks",
        "add",
        f"{receiver.url}/sms",
        "--name",
        "sms",
        "--events",
        "contact.unsubscribed,contact.cleaned",
        "--sources",
        "contact",
        "--form",
    )
    secret = added.stdout.strip().splitlines()[-1].rsplit(" ", 1)[-1]
    assert added.stdout.startswith("subscribed sms\n") and secret.startswith("whsec_")
    assert run_cli(base_env, "webhooks", "ping", "sms").stdout == "ping answered 200\n"
    sent_at = int(receiver.last.headers["webhook-timestamp"])
    from datetime import UTC, datetime

    expected = Webhook(secret).sign(
        receiver.last.headers["webhook-id"],
        datetime.fromtimestamp(sent_at, UTC),
        receiver.last.text,
    )
    assert receiver.last.headers["webhook-signature"] == expected
    assert receiver.last.form["type"] == ["webhook.ping"]
    listed = json.loads(run_cli(base_env, "webhooks", "list", "--json").stdout)
    assert [(s["name"], s["events"], s["sources"], s["last_status"]) for s in listed] == [
        ("sms", ["contact.unsubscribed", "contact.cleaned"], ["contact"], 200)
    ]
    receiver.default = Answer(500)
    failed = run_cli(base_env, "webhooks", "ping", "sms", check=False)
    assert (failed.returncode, failed.stderr) == (1, "error: ping failed: answered 500\n")
    bad = run_cli(
        base_env, "webhooks", "add", "https://x.example/", "--sources", "robot", check=False
    )
    assert bad.returncode == 2 and "--sources" in bad.stderr and "unknown 'robot'" in bad.stderr
    bad_url = run_cli(base_env, "webhooks", "add", "http://x.example/", check=False)
    assert bad_url.returncode == 2 and "Invalid value for URL: plain http://" in bad_url.stderr
    bad_header = run_cli(
        base_env, "webhooks", "add", "https://x.example/", "--header", "X: é", check=False
    )
    assert "Invalid value for --header: X: ASCII text only" in bad_header.stderr
    assert run_cli(base_env, "webhooks", "remove", "sms").stdout == "removed sms\n"
    missing = run_cli(base_env, "webhooks", "show", "sms", check=False)
    assert missing.returncode == 1 and "no webhook subscription named 'sms'" in missing.stderr


def test_a_running_service_tells_the_file_subscriber_within_seconds(
    base_env: dict[str, str], receiver: ApiServer, tmp_path: Path
) -> None:
    # Given a subscriptions file naming its secret by environment variable
    secret = new_secret()
    path = tmp_path / "webhooks.yaml"
    path.write_text(
        "subscriptions:\n"
        "  - name: crm\n"
        f"    url: {receiver.url}/crm\n"
        "    events: [contact.profile_updated]\n"
        "    secret: ${CRM_HOOK_SECRET}\n"
    )
    env = {**base_env, "CRM_NOTIFY_WEBHOOKS_FILE": str(path), "CRM_HOOK_SECRET": secret}
    service = ServiceProcess(env, tmp_path / "serve.log")
    try:
        key = run_cli(env, "api-keys", "create", f"shop-{uuid.uuid4().hex[:6]}").stdout.strip()
        key = key.splitlines()[-1]
        # When the shop's Segment SDK reports a customer, then a change of their profile
        errors: list[Exception] = []
        client = SegmentClient(
            key, host=service.url, sync_mode=True, on_error=lambda exc, _b: errors.append(exc)
        )
        client.identify("cust-1", {"email": "alice@example.com", "first_name": "Alice"})
        client.identify("cust-1", {"email": "alice@example.com", "plan": "gold"})
        client.flush()
        assert errors == []
        started = time.monotonic()
        # Then the subscriber hears of the change within seconds, signed
        while not receiver.requests and time.monotonic() - started < 15:
            time.sleep(0.1)
        assert receiver.requests, (tmp_path / "serve.log").read_text()
        assert time.monotonic() - started < 5
        payload = Webhook(secret).verify(receiver.last.body, receiver.last.headers)
        assert payload["type"] == "contact.profile_updated"
        assert payload["data"]["changed"] == ["plan"] and payload["data"]["source"] == "api"
        shown = json.loads(run_cli(env, "webhooks", "show", "crm").stdout)
        assert (shown["origin"], shown["sent"], shown["last_status"]) == ("file", 1, 200)
    finally:
        service.stop()
