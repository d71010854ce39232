"""Helpers shared by the command groups: the migrated engine, contact lookup, the OS user and
:class:`CommandError`."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import click
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.clock import now
from crm_notify.config import Settings
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import find_contact_by_ref
from crm_notify.db import make_engine
from crm_notify.explain import parse_moment
from crm_notify.migrations import pending_revision

#: How a command's help names a contact.
CONTACT_HELP = "CONTACT is alice@example.com, user:<userId> or id:<contact id>."


class CommandError(click.ClickException):
    """A command failed: printed as ``error: ...`` on stderr, like the rest of the CLI; exit 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message."""
        click.echo(f"error: {self.format_message()}", err=True, file=file)


@contextmanager
def migrated_engine(settings: Settings) -> Iterator[Engine]:
    """An engine for ``settings.database_url`` (disposed on exit), refusing a database that
    needs migrating.

    Raises:
        CommandError: the schema is not up to date.
    """
    engine = make_engine(settings.database_url)
    try:
        if pending_revision(engine) is not None:
            raise CommandError(
                "the database schema is not up to date: run `crm-notify db upgrade` first"
            )
        yield engine
    finally:
        engine.dispose()


def find_contact(session: Session, ref: str, *, param_hint: str = "CONTACT") -> Contact:
    """The contact ``ref`` names (an email, ``user:<userId>`` or ``id:<n>``).

    Raises:
        click.BadParameter: ``ref`` is malformed (exit 2, naming ``param_hint``).
        CommandError: no contact matches.
    """
    try:
        contact = find_contact_by_ref(session, ref)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from exc
    if contact is None:
        raise CommandError(f"no contact matches {ref!r}")
    return contact


def os_user() -> str:
    """The OS user running the command (recorded as who did it); ``cli`` when unknown."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def moment_option(value: str | None, name: str, *, end_of_day: bool = False) -> Any:
    """The moment an option such as ``--since 7d`` or ``--until 2026-11-20`` names, or ``None``.

    Raises:
        click.BadParameter: not a date, date-time or duration (naming ``name``).
    """
    if value is None:
        return None
    try:
        return parse_moment(value, now=now(), end_of_day=end_of_day)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from exc
