"""``crm-notify explain``: why a contact got, or did not get, each message."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlmodel import Session

from crm_notify.commands._common import find_contact, migrated_engine, moment_option
from crm_notify.explain import DEFAULT_LIMIT, explain_contact
from crm_notify.explain_text import format_timeline


@click.command("explain")
@click.option(
    "--contact",
    "ref",
    required=True,
    help="alice@example.com, user:<userId> or id:<contact id>.",
)
@click.option("--rule", default=None, help="Only this rule's decisions.")
@click.option("--since", default=None, help="From: 7d (7 days ago), 2026-11-20, 2026-11-20T10:00Z.")
@click.option("--until", default=None, help="Up to (a date includes its whole day).")
@click.option("--limit", type=click.IntRange(1), default=DEFAULT_LIMIT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the timeline as JSON.")
@click.pass_obj
def explain(
    obj: Any,
    ref: str,
    rule: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show a contact's timeline: each event, what every rule decided and why, and what
    became of each notification.

    \b
    Examples:
      crm-notify explain --contact alice@example.com --since 7d
      crm-notify explain --contact user:u1 --rule abandoned-cart --json
    """
    settings = obj.settings
    since_at = moment_option(since, "--since")
    until_at = moment_option(until, "--until", end_of_day=True)
    with migrated_engine(settings) as engine, Session(engine) as session:
        timeline = explain_contact(
            session=session,
            contact=find_contact(session, ref, param_hint="--contact"),
            rule=rule,
            since=since_at,
            until=until_at,
            purposes=settings.purpose_names,
            limit=limit,
        )
    if as_json:
        click.echo(json.dumps(timeline.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_timeline(timeline))
