"""``crm-notify suppressions``: add, list and remove suppressed addresses."""

from __future__ import annotations

from typing import Any

import click
from sqlmodel import Session

from crm_notify.commands._common import CommandError, migrated_engine, os_user
from crm_notify.db import session_scope
from crm_notify.errors import EventValidationError
from crm_notify.guards.models import ALL_PURPOSES, SuppressionReason
from crm_notify.guards.suppression import (
    ADMIN_REASONS,
    list_suppressions,
    suppress,
    unsuppress,
)


@click.group("suppressions")
def suppressions() -> None:
    """Addresses that must not be mailed (bounces, complaints, manual entries)."""


@suppressions.command("add")
@click.argument("email")
@click.option(
    "--reason",
    type=click.Choice(ADMIN_REASONS),
    default="manual",
    show_default=True,
    help="Why the address is suppressed.",
)
@click.option(
    "--purpose",
    default=ALL_PURPOSES,
    show_default=True,
    help='"*" stops all mail, transactional included; a purpose (marketing) stops only it.',
)
@click.option("--detail", default=None, help="Free text: a ticket number, a bounce message.")
@click.option("--by", "by", default=None, help="Who did it (default: your OS user name).")
@click.pass_obj
def add(
    obj: Any, email: str, reason: str, purpose: str, detail: str | None, by: str | None
) -> None:
    """Suppress EMAIL (adding it again updates its entry)."""
    if purpose != ALL_PURPOSES and purpose not in obj.settings.purpose_names:
        raise CommandError(
            f"unknown purpose {purpose!r} (known: *, {', '.join(obj.settings.purpose_names)})"
        )
    try:
        with migrated_engine(obj.settings) as engine, session_scope(engine) as session:
            entry = suppress(
                session=session,
                email=email,
                reason=reason,
                purpose=purpose,
                detail=detail,
                created_by=by or os_user(),
            )
            entry_id = entry.id
    except EventValidationError as exc:
        raise CommandError(f"invalid email address: {exc.message}") from exc
    scope = "all mail" if purpose == ALL_PURPOSES else f"{purpose} mail"
    click.echo(f"suppressed for {scope} ({reason}), entry {entry_id}")


@suppressions.command("list")
@click.option("--reason", type=click.Choice([r.value for r in SuppressionReason]), default=None)
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.pass_obj
def list_command(obj: Any, reason: str | None, limit: int, offset: int) -> None:
    """List entries, newest first: date, address, purpose, reason, who, detail.

    Erased people show as `erased:` and the start of their address hash.
    """
    with migrated_engine(obj.settings) as engine, Session(engine) as session:
        rows = list_suppressions(session=session, reason=reason, limit=limit, offset=offset)
    for row in rows:
        address = row.email or f"erased:{row.address_hash[:12]}"
        detail = (row.detail or "").replace("\n", " ")
        click.echo(
            f"{row.created_at:%Y-%m-%d %H:%M}\t{address}\t{row.purpose}\t{row.reason}"
            f"\t{row.created_by}\t{detail}".rstrip("\t")
        )
    if not rows:
        click.echo("no suppressed addresses", err=True)


@suppressions.command("remove")
@click.argument("email")
@click.option("--purpose", default=ALL_PURPOSES, show_default=True, help="Which entry.")
@click.pass_obj
def remove(obj: Any, email: str, purpose: str) -> None:
    """Remove EMAIL's entry for --purpose, so it may be mailed again."""
    try:
        with migrated_engine(obj.settings) as engine, session_scope(engine) as session:
            removed = unsuppress(session=session, email=email, purpose=purpose)
    except EventValidationError as exc:
        raise CommandError(f"invalid email address: {exc.message}") from exc
    if not removed:
        raise CommandError(f"no suppression entry for that address and purpose {purpose}")
    click.echo(f"removed the {purpose} entry")
