"""End to end: a database failure during a request is a retryable 503, never a 500."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from crm_notify.db import make_engine
from tests.conftest import ROOT
from tests.support.service import ServiceProcess, run_cli, service_env

pytestmark = pytest.mark.e2e


def test_database_failure_answers_503_with_retry_after(tmp_path: Path, database_url: str) -> None:
    # Given a running service and a valid key
    env = service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_RULES_DIR": str(ROOT / "rules"),
            "CRM_NOTIFY_TEMPLATES_DIR": str(ROOT / "templates"),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
            "CRM_NOTIFY_ESP_URL": f"file://{tmp_path / 'outbox'}",
        }
    )
    run_cli(env, "db", "upgrade")
    key = run_cli(env, "api-keys", "create", f"k-{uuid.uuid4().hex[:6]}").stdout.split()[-1]
    service = ServiceProcess(env, tmp_path / "serve.log")
    engine = make_engine(database_url)
    try:
        # When the events table disappears under it (a broken database)
        with engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE event RENAME TO event_gone"))
        response = httpx.post(
            f"{service.url}/v1/track", json={"userId": "u", "event": "X"}, auth=(key, "")
        )
        # Then the client is told to retry, and the service keeps answering
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert response.json()["code"] == "database_unavailable"
        assert httpx.get(f"{service.url}/healthz").status_code == 200
    finally:
        service.stop()
        engine.dispose()
