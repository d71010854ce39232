"""``crm-notify consent grant|withdraw|show``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from click.testing import CliRunner
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.commands.consent import consent
from crm_notify.contacts.models import Contact
from crm_notify.db import make_engine
from crm_notify.guards.consent import consent_history


def _run(settings: Any, *args: str) -> Any:
    return CliRunner().invoke(consent, list(args), obj=SimpleNamespace(settings=settings))


def test_grant_withdraw_and_show(engine: Engine, make_settings: Any) -> None:
    settings = make_settings(purposes="surveys")
    with Session(engine) as session:
        contact = Contact(email="alice@example.com", user_id="u1")
        session.add(contact)
        session.commit()
        contact_id = contact.id
    granted = _run(
        settings,
        "grant",
        "ALICE@example.com",
        "--purpose",
        "marketing",
        "--text-version",
        "paper-form-7",
        "--actor",
        "dpo@shop",
    )
    assert granted.exit_code == 0, granted.output
    assert "marketing: granted" in granted.output
    withdrawn = _run(settings, "withdraw", "user:u1", "--purpose", "marketing")
    assert withdrawn.exit_code == 0, withdrawn.output
    with Session(engine) as session:
        history = consent_history(session=session, contact_id=contact_id)  # type: ignore[arg-type]
    assert [(r.granted, r.source, r.text_version) for r in history] == [
        (True, "admin", "paper-form-7"),
        (False, "admin", None),
    ]
    assert history[0].actor == "dpo@shop"
    shown = _run(settings, "show", f"id:{contact_id}")
    assert shown.exit_code == 0, shown.output
    assert "  marketing: withdrawn" in shown.output
    assert "  surveys: none recorded (no consent)" in shown.output
    assert "  transactional: not needed" in shown.output
    assert "text paper-form-7" in shown.output and "by dpo@shop" in shown.output


def test_errors_name_the_problem(engine: Engine, make_settings: Any) -> None:
    settings = make_settings()
    unknown = _run(settings, "grant", "bob@example.com", "--purpose", "marketing")
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("error: no contact matches 'bob@example.com'")
    purpose = _run(settings, "grant", "bob@example.com", "--purpose", "newsletter")
    assert purpose.exit_code == 1 and "error: unknown purpose 'newsletter'" in purpose.stderr
    malformed = _run(settings, "show", "bob")
    assert malformed.exit_code == 2 and "not an email, user:<userId> or id:<n>" in malformed.output


def test_refuses_an_unmigrated_database(tmp_path: Any, make_settings: Any) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    make_engine(settings.database_url).dispose()
    result = _run(settings, "show", "alice@example.com")
    assert result.exit_code == 1 and "crm-notify db upgrade" in result.stderr
    assert result.stderr.startswith("error: ")
