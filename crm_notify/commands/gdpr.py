"""``crm-notify gdpr``: export (Art. 15), erase (Art. 17) and the retention purge."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import timedelta
from pathlib import Path
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
from crm_notify.gdpr import erase_contact, export_contact, purge
from crm_notify.rules.durations import parse_duration


@click.group("gdpr", epilog=CONTACT_HELP)
def gdpr() -> None:
    """Export or erase a person's data; purge old events and message bodies."""


@gdpr.command("export")
@click.argument("ref", metavar="CONTACT")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file (created readable by you only) instead of stdout.",
)
@click.pass_obj
def export(obj: Any, ref: str, output: Path | None) -> None:
    """Print everything held on CONTACT as JSON (GDPR Art. 15)."""
    with migrated_engine(obj.settings) as engine, Session(engine) as session:
        data = export_contact(session=session, contact=find_contact(session, ref))
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    click.echo(f"exported contact {data['contact']['id']} to {output}", err=True)


@gdpr.command("erase")
@click.argument("ref", metavar="CONTACT")
@click.option("--yes", is_flag=True, help="Confirm: erasure cannot be undone.")
@click.option("--by", "by", default=None, help="Who asked (default: your OS user name).")
@click.pass_obj
def erase(obj: Any, ref: str, yes: bool, by: str | None) -> None:
    """Erase CONTACT from every table (GDPR Art. 17); their address stays suppressed by its
    hash only, so a later import is not mailed. Cannot be undone: needs --yes."""
    if not yes:
        raise CommandError("erasure cannot be undone: add --yes to go ahead")
    with migrated_engine(obj.settings) as engine, session_scope(engine) as session:
        report = erase_contact(
            session=session, contact=find_contact(session, ref), actor=by or os_user()
        )
    click.echo(f"erased contact {report.contact_id}")
    for name, value in dataclasses.asdict(report).items():
        if name not in ("contact_id", "suppression_id"):
            click.echo(f"  {name.replace('_', ' ')}: {value}")
    if report.suppression_id is not None:
        click.echo(f"  address kept suppressed as entry {report.suppression_id} (hash only)")


@gdpr.command("purge")
@click.option(
    "--older-than",
    default=None,
    help="Age, e.g. 365d or 52w (default: CRM_NOTIFY_RETENTION_DAYS days).",
)
@click.pass_obj
def purge_command(obj: Any, older_than: str | None) -> None:
    """Delete events and clear rendered message bodies older than the retention age."""
    settings = obj.settings
    age = timedelta(days=settings.retention_days)
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from exc
        if age <= timedelta(0):
            raise click.BadParameter("must be positive", param_hint="--older-than")
    with migrated_engine(settings) as engine, session_scope(engine) as session:
        report = purge(session=session, older_than=age)
    click.echo(
        f"purged what is older than {report.cutoff:%Y-%m-%d %H:%M} UTC: "
        f"{report.events_deleted} events deleted, "
        f"{report.notifications_cleared} notification bodies cleared"
    )
