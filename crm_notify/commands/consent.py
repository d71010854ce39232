"""``crm-notify consent``: record and show a contact's consent (source ``admin``)."""

from __future__ import annotations

from typing import Any

import click
from sqlmodel import Session

from crm_notify.commands._common import (
    CONTACT_HELP,
    CommandError,
    find_contact,
    migrated_engine,
    os_user,
)
from crm_notify.db import session_scope
from crm_notify.guards.consent import consent_history, current_consent, record_consent
from crm_notify.guards.models import ConsentRecord, ConsentSource, LawfulBasis


def _purpose(obj: Any, purpose: str) -> str:
    names: tuple[str, ...] = obj.settings.purpose_names
    if purpose not in names:
        raise CommandError(f"unknown purpose {purpose!r} (configured: {', '.join(names)})")
    return purpose


def _line(record: ConsentRecord) -> str:
    state = "granted" if record.granted else "withdrawn"
    parts = [
        f"{record.recorded_at:%Y-%m-%d %H:%M:%S} UTC",
        f"{record.purpose}: {state}",
        f"source {record.source}",
        f"basis {record.lawful_basis}",
    ]
    for label, value in (
        ("text", record.text_version),
        ("by", record.actor),
        ("ip", record.ip),
        ("event", record.event_id),
        ("notification", record.notification_id),
    ):
        if value is not None:
            parts.append(f"{label} {value}")
    return "  ".join(parts)


@click.group()
def consent() -> None:
    """Record and show consent per purpose (the append-only consent ledger)."""


def _record(obj: Any, ref: str, purpose: str, granted: bool, **values: Any) -> None:
    purpose = _purpose(obj, purpose)
    with migrated_engine(obj.settings) as engine, session_scope(engine) as session:
        contact = find_contact(session, ref)
        assert contact.id is not None
        record = record_consent(
            session=session,
            contact_id=contact.id,
            purpose=purpose,
            granted=granted,
            source=ConsentSource.ADMIN,
            **values,
        )
        assert record is not None
        click.echo(_line(record))


@consent.command("grant", epilog=CONTACT_HELP)
@click.argument("contact")
@click.option("--purpose", required=True, help="A configured purpose, e.g. marketing.")
@click.option(
    "--basis",
    type=click.Choice([b.value for b in LawfulBasis]),
    default=LawfulBasis.CONSENT.value,
    show_default=True,
    help="GDPR Art. 6(1) lawful basis.",
)
@click.option("--text-version", default=None, help="Version of the consent text agreed to.")
@click.option("--actor", default=None, help="Who records this (default: your OS user name).")
@click.pass_obj
def grant(
    obj: Any, contact: str, purpose: str, basis: str, text_version: str | None, actor: str | None
) -> None:
    """Record that CONTACT granted consent to a purpose."""
    _record(
        obj,
        contact,
        purpose,
        True,
        lawful_basis=basis,
        text_version=text_version,
        actor=actor or os_user(),
    )


@consent.command("withdraw", epilog=CONTACT_HELP)
@click.argument("contact")
@click.option("--purpose", required=True, help="A configured purpose, e.g. marketing.")
@click.option("--actor", default=None, help="Who records this (default: your OS user name).")
@click.pass_obj
def withdraw(obj: Any, contact: str, purpose: str, actor: str | None) -> None:
    """Record that CONTACT withdrew consent to a purpose (takes effect for queued mail)."""
    _record(obj, contact, purpose, False, actor=actor or os_user())


@consent.command("show", epilog=CONTACT_HELP)
@click.argument("contact")
@click.pass_obj
def show(obj: Any, contact: str) -> None:
    """Show CONTACT's current consent per purpose, then the full history."""
    with migrated_engine(obj.settings) as engine, Session(engine) as session:
        found = find_contact(session, contact)
        assert found.id is not None
        current = current_consent(session=session, contact_id=found.id)
        history = consent_history(session=session, contact_id=found.id)
        click.echo(f"contact id:{found.id}")
        click.echo("current:")
        for purpose in obj.settings.purpose_names:
            if purpose == "transactional":
                state = "not needed"
            elif purpose not in current:
                state = "none recorded (no consent)"
            else:
                record = current[purpose]
                state = "granted" if record.granted else "withdrawn"
                state += f" {record.recorded_at:%Y-%m-%d %H:%M} UTC ({record.source})"
            click.echo(f"  {purpose}: {state}")
        click.echo("history:" if history else "history: (empty)")
        for record in history:
            click.echo(f"  {_line(record)}")
