"""End to end, as the issue tells it: a marketing rule mails only with consent given through the
Segment SDK, one click on List-Unsubscribe (as Gmail sends it) stops it while order mail still
arrives, `crm-notify explain` says why, and a data-protection officer exports and erases the
person. Then: two API processes racing on one contact's cap let exactly one send through."""

from __future__ import annotations

import json
import re
import shutil
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from segment.analytics.client import Client as SegmentClient
from sqlmodel import Session, select

from crm_notify.db import make_engine
from crm_notify.outbox.models import Notification
from tests.conftest import POSTGRES_URL, ROOT
from tests.support.servers import SmtpSink, write_tree
from tests.support.service import ServiceProcess, run_cli, service_env

pytestmark = pytest.mark.e2e

RULES = {
    "promo.yaml": """
name: weekly-promo
trigger: {event: Promo Eligible}
template: promo
purpose: marketing
quiet_hours: false
limit: 1/7d
""",
}


PROMO_TEMPLATE = {
    "promo/subject.txt": "This week's offer, {{ contact.first_name or 'friend' }}",
    "promo/body.txt": "20% off everything.\n\nUnsubscribe: {{ unsubscribe_url }}\n",
    "promo/body.html": (
        '<p>20% off everything.</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    ),
}


def _env(tmp_path: Path, database_url: str, smtp: SmtpSink | None = None) -> dict[str, str]:
    rules = tmp_path / "rules"
    write_tree(rules, RULES)
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    write_tree(templates, PROMO_TEMPLATE)
    for name in ("order_shipped.yaml",):
        (rules / name).write_text((ROOT / "rules" / name).read_text())
    esp = f"smtp://{smtp.host}:{smtp.port}" if smtp else f"file://{tmp_path / 'outbox'}"
    return service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_RULES_DIR": str(rules),
            "CRM_NOTIFY_TEMPLATES_DIR": str(templates),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
            "CRM_NOTIFY_ESP_URL": esp,
            "CRM_NOTIFY_RELAY_INTERVAL_S": "0.2",
        }
    )


def test_consent_unsubscribe_explain_export_erase(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    env = _env(tmp_path, database_url, smtp_sink)
    run_cli(env, "db", "upgrade")
    key = run_cli(env, "api-keys", "create", "shop").stdout.split()[-1]
    service = ServiceProcess(env, tmp_path / "serve.log")
    try:
        client = SegmentClient(key, host=service.url, sync_mode=True)
        # Consent through the official SDK: context.consent.categoryPreferences.
        client.identify(
            "cust-1",
            {"email": "alice@example.com", "first_name": "Alice"},
            context={"consent": {"categoryPreferences": {"Marketing": True, "Analytics": False}}},
        )
        client.track("cust-1", "Promo Eligible", {"cart_id": "C1"})
        (promo,) = smtp_sink.wait_for(1)
        # RFC 8058 / RFC 2369 headers on the marketing mail.
        assert promo["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        match = re.search(r"<(https?://[^>]+)>", promo["List-Unsubscribe"])
        assert match is not None
        unsubscribe_url = match.group(1)
        assert unsubscribe_url.startswith(service.url)
        body = promo.get_body(("plain",))
        assert body is not None and unsubscribe_url in body.get_content()
        # One click, as Gmail sends it: a POST with that exact form body, no cookies, no auth.
        response = httpx.post(
            unsubscribe_url,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200
        # A week later the cap would allow another, but consent is withdrawn; order mail still
        # arrives.
        client.track("cust-1", "Promo Eligible", {"cart_id": "C2"}, message_id="promo-2")
        client.track(
            "cust-1",
            "Order Updated",
            {"order_id": "SO-1", "status": "shipped", "total": 30, "tracking_number": "1Z"},
        )
        messages = smtp_sink.wait_for(2)
        assert str(messages[1]["Subject"]) == "Your order SO-1 is on its way"
        explained = run_cli(env, "explain", "--contact", "alice@example.com").stdout
        assert "weekly-promo" in explained
        assert "consent withdrawn" in explained
        assert "unsubscribe" in explained
        as_json = httpx.get(
            f"{service.url}/v1/decisions", params={"contact": "alice@example.com"}, auth=(key, "")
        )
        assert as_json.status_code == 200
        # Art. 15 export, then Art. 17 erasure.
        exported = json.loads(run_cli(env, "gdpr", "export", "alice@example.com").stdout)
        assert "alice@example.com" in json.dumps(exported)
        run_cli(env, "gdpr", "erase", "alice@example.com", "--yes")
        engine = make_engine(database_url)
        try:
            with Session(engine) as session:
                stored = session.exec(select(Notification)).all()
            assert stored and all("alice" not in (n.to_address or "") for n in stored)
        finally:
            engine.dispose()
        # A later import of the same address is not mailed.
        client.identify("cust-9", {"email": "Alice@Example.com"})
        client.track("cust-9", "Order Updated", {"order_id": "SO-9", "status": "shipped"})
        explained = run_cli(env, "explain", "--contact", "user:cust-9").stdout
        assert "suppressed" in explained
        assert len(smtp_sink.messages) == 2
    finally:
        service.stop()


@pytest.mark.skipif(not POSTGRES_URL, reason="CRM_NOTIFY_TEST_DATABASE_URL is not set")
def test_two_api_processes_racing_on_one_cap_send_once(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("two processes on one SQLite file are covered by the threaded test")
    env = _env(tmp_path, database_url)
    run_cli(env, "db", "upgrade")
    key = run_cli(env, "api-keys", "create", "shop").stdout.split()[-1]
    services = [ServiceProcess(env, tmp_path / f"serve-{i}.log") for i in range(2)]
    try:
        consent = {"consent": {"categoryPreferences": {"marketing": True}}}
        httpx.post(
            f"{services[0].url}/v1/identify",
            json={"userId": "racer", "traits": {"email": "racer@example.com"}, "context": consent},
            auth=(key, ""),
        ).raise_for_status()
        barrier = threading.Barrier(16)
        statuses: list[int] = []

        def fire(index: int) -> None:
            barrier.wait()
            response = httpx.post(
                f"{services[index % 2].url}/v1/track",
                json={
                    "userId": "racer",
                    "event": "Promo Eligible",
                    "messageId": f"race-{uuid.uuid4().hex}",
                },
                auth=(key, ""),
                timeout=30,
            )
            statuses.append(response.status_code)

        threads = [threading.Thread(target=fire, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 16
        engine = make_engine(database_url)
        try:
            with Session(engine) as session:
                sent = session.exec(
                    select(Notification).where(Notification.rule == "weekly-promo")
                ).all()
            assert len(sent) == 1
        finally:
            engine.dispose()
    finally:
        for service in services:
            service.stop()
