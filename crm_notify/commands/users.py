"""``crm-notify users``: the console's accounts (create, list, delete)."""

from __future__ import annotations

import sys
from typing import Any

import click

from crm_notify.commands._common import CommandError, migrated_engine
from crm_notify.console.models import ConsoleRole
from crm_notify.console.users import (
    MIN_PASSWORD_CHARS,
    ConsoleUserError,
    create_user,
    delete_user,
    list_users,
)


@click.group("users")
def users() -> None:
    """Accounts of the support console (/console); it is off until one exists."""


@users.command("create")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice([role.value for role in ConsoleRole]),
    required=True,
    help="support: read and preview; admin: also change consent and suppression.",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input (for scripts).",
)
@click.pass_obj
def create(obj: Any, email: str, role: str, password_stdin: bool) -> None:
    """Create a console user EMAIL; the password is asked twice (never an argument)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(
            f"Password (at least {MIN_PASSWORD_CHARS} characters)",
            hide_input=True,
            confirmation_prompt=True,
        )
    try:
        with migrated_engine(obj.settings) as engine:
            user = create_user(email, password, role=role, engine=engine)
    except ConsoleUserError as exc:
        raise CommandError(str(exc)) from exc
    click.echo(
        f"created {user.role.value} {user.email}; sign in at {obj.settings.base_url}/console"
    )


@users.command("list")
@click.pass_obj
def list_(obj: Any) -> None:
    """List console users (email, role, created, last sign-in)."""
    with migrated_engine(obj.settings) as engine:
        rows = list_users(engine=engine)
    for email, role, created, last in rows:
        seen = f"last sign-in {last:%Y-%m-%d %H:%M}" if last else "never signed in"
        click.echo(f"{email}\t{role}\tcreated {created:%Y-%m-%d %H:%M}\t{seen}")


@users.command("delete")
@click.argument("email")
@click.pass_obj
def delete(obj: Any, email: str) -> None:
    """Delete the console user EMAIL (signing out their sessions)."""
    try:
        with migrated_engine(obj.settings) as engine:
            delete_user(email, engine=engine)
    except ConsoleUserError as exc:
        raise CommandError(str(exc)) from exc
    click.echo(f"deleted {email.strip().lower()}")
