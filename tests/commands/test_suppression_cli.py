"""``crm-notify suppressions add|list|remove``."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner, Result
from sqlmodel import Session, select

from crm_notify.commands.suppression import suppressions
from crm_notify.config import Settings
from crm_notify.db import make_engine
from crm_notify.guards.models import Suppression
from crm_notify.migrations import upgrade


@dataclass
class Obj:
    """What the root ``crm-notify`` group hands its commands."""

    settings: Settings


def invoke(command: click.Command, settings: Settings, *args: str) -> Result:
    """Run ``command`` as ``crm-notify`` would, with ``settings``."""
    return CliRunner().invoke(command, list(args), obj=Obj(settings), catch_exceptions=False)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    built = make_settings(purposes="newsletter")
    engine = make_engine(built.database_url)
    upgrade(engine)
    engine.dispose()
    return built


def _rows(settings: Settings) -> list[Suppression]:
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        rows = list(session.exec(select(Suppression)))
    engine.dispose()
    return rows


def test_add_list_remove(settings: Settings) -> None:
    # When support adds two entries
    added = invoke(suppressions, settings, "add", "Alice@Example.com", "--detail", "ticket 9")
    assert added.exit_code == 0, added.output
    assert "suppressed for all mail (manual)" in added.output
    news = invoke(
        suppressions,
        settings,
        "add",
        "bob@example.com",
        "--reason",
        "complaint",
        "--purpose",
        "newsletter",
        "--by",
        "carol",
    )
    assert "suppressed for newsletter mail (complaint)" in news.output
    # Then they are stored with who did it
    rows = {r.email: r for r in _rows(settings)}
    assert rows["Alice@example.com"].created_by == getpass.getuser()
    assert rows["bob@example.com"].created_by == "carol"
    # And listed, filtered by reason
    listing = invoke(suppressions, settings, "list").output.splitlines()
    assert len(listing) == 2
    assert "bob@example.com\tnewsletter\tcomplaint\tcarol" in listing[0]
    only = invoke(suppressions, settings, "list", "--reason", "manual").output
    assert "Alice@example.com" in only and "bob" not in only
    # When removed (the purpose names the entry)
    missing = invoke(suppressions, settings, "remove", "bob@example.com")
    assert missing.exit_code == 1 and "error: no suppression entry" in missing.stderr
    removed = invoke(suppressions, settings, "remove", "BOB@example.com", "--purpose", "newsletter")
    assert removed.exit_code == 0
    assert [r.email for r in _rows(settings)] == ["Alice@example.com"]


def test_bad_input_is_refused(settings: Settings) -> None:
    bad = invoke(suppressions, settings, "add", "not-an-address")
    assert bad.exit_code == 1 and "error: invalid email address" in bad.stderr
    purpose = invoke(suppressions, settings, "add", "a@example.com", "--purpose", "sales")
    assert purpose.exit_code == 1 and "unknown purpose 'sales'" in purpose.stderr
    reason = invoke(suppressions, settings, "add", "a@example.com", "--reason", "erased")
    assert reason.exit_code == 2
    assert _rows(settings) == []


def test_refuses_an_unmigrated_database(make_settings: Callable[..., Settings]) -> None:
    result = invoke(suppressions, make_settings(), "list")
    assert result.exit_code == 1 and "crm-notify db upgrade" in result.stderr
