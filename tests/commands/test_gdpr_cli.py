"""``crm-notify gdpr export|erase|purge``."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.commands.gdpr import gdpr
from crm_notify.config import Settings
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.events.models import Event
from crm_notify.guards.suppression import suppressed_for
from tests.commands.test_suppression_cli import invoke
from tests.gdpr.conftest import EMAIL, NAME, USER_ID, World, build_alice, make_world


@pytest.fixture
def world(engine: Engine, tmp_path: Path) -> World:
    built = make_world(engine, tmp_path / "outbox")
    build_alice(built)
    return built


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(retention_days=30)


def test_export_to_stdout_and_to_a_private_file(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    # When exported to stdout
    result = invoke(gdpr, settings, "export", EMAIL.lower())
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["contact"]["user_id"] == USER_ID
    assert len(data["events"]) == 6
    # When exported to a file
    target = tmp_path / "alice.json"
    to_file = invoke(gdpr, settings, "export", f"user:{USER_ID}", "--output", str(target))
    assert to_file.exit_code == 0
    assert to_file.stdout == ""
    assert json.loads(target.read_text("utf-8"))["contact"]["email"] == data["contact"]["email"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_erase_needs_yes_then_erases_and_prints_counts_only(
    world: World, settings: Settings
) -> None:
    # When erasure is asked without --yes, nothing happens
    refused = invoke(gdpr, settings, "erase", f"user:{USER_ID}")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: erasure cannot be undone")
    assert world.contact().email is not None
    # When confirmed
    done = invoke(gdpr, settings, "erase", f"user:{USER_ID}", "--yes", "--by", "dpo")
    assert done.exit_code == 0, done.output
    # Then the output has counts, no personal data
    assert "events deleted: 6" in done.stdout
    assert "orders deleted: 1" in done.stdout
    for trace in (EMAIL.lower(), NAME.lower(), USER_ID):
        assert trace not in done.output.lower()
    with Session(world.engine) as session:
        assert session.exec(select(Contact).where(Contact.user_id == USER_ID)).first() is None
        entry = suppressed_for(session=session, email=EMAIL, purpose="transactional")
        assert entry is not None and entry.created_by == "dpo"
    # And a second erasure finds no one
    again = invoke(gdpr, settings, "erase", f"user:{USER_ID}", "--yes")
    assert again.exit_code == 1 and "error: no contact matches" in again.stderr


def test_contact_references_are_checked(world: World, settings: Settings) -> None:
    assert invoke(gdpr, settings, "export", "alice").exit_code == 2
    assert invoke(gdpr, settings, "export", "id:x").exit_code == 2
    missing = invoke(gdpr, settings, "export", "nobody@example.com")
    assert missing.exit_code == 1 and "no contact matches" in missing.stderr


def test_purge_uses_the_retention_setting_or_older_than(engine: Engine, settings: Settings) -> None:
    # Given events of 10 and 40 days ago
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    with session_scope(engine) as session:
        for days in (10, 40):
            at = now - timedelta(days=days)
            session.add(Event(message_id=f"e{days}", type="track", timestamp=at, received_at=at))
    with freeze_time(now):
        # When purged with the configured 30 days
        default = invoke(gdpr, settings, "purge")
        assert default.exit_code == 0, default.output
        assert "1 events deleted, 0 notification bodies cleared" in default.stdout
        assert "2026-10-21 12:00 UTC" in default.stdout
        # When purged with --older-than 7d
        week = invoke(gdpr, settings, "purge", "--older-than", "7d")
        assert "1 events deleted" in week.stdout
    with Session(engine) as session:
        assert session.exec(select(Event)).all() == []
    assert invoke(gdpr, settings, "purge", "--older-than", "a year").exit_code == 2
    assert invoke(gdpr, settings, "purge", "--older-than", "0").exit_code == 2
