"""``crm-notify kpis``: per-rule delivery, open, click, bounce and complaint rates."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import click
from sqlmodel import Session

from crm_notify.clock import now
from crm_notify.commands._common import migrated_engine, moment_option
from crm_notify.kpis import format_kpis, rule_kpis

#: The window shown when ``--since`` is not given.
DEFAULT_WINDOW = timedelta(days=30)


@click.command("kpis")
@click.option("--rule", default=None, help="Only this rule.")
@click.option(
    "--since", default=None, help="Sent from: 7d (7 days ago), 2026-11-01, ... [default: 30d]"
)
@click.option("--until", default=None, help="Sent up to (a date includes its whole day).")
@click.option("--json", "as_json", is_flag=True, help="Print counts and rates as JSON.")
@click.pass_obj
def kpis(obj: Any, rule: str | None, since: str | None, until: str | None, as_json: bool) -> None:
    """Show each rule's sends and what the ESPs' tracking webhooks reported: delivery,
    open, click, bounce and complaint rates.

    Rates count each notification once. Open, click and complaint rates are over delivered
    messages (over sent ones where the ESP reports no deliveries, as SMTP does not).

    \b
    Examples:
      crm-notify kpis
      crm-notify kpis --rule abandoned-cart --since 7d
      crm-notify kpis --since 2026-11-01 --until 2026-11-30 --json
    """
    since_at = moment_option(since, "--since") if since else now() - DEFAULT_WINDOW
    until_at = moment_option(until, "--until", end_of_day=True)
    with migrated_engine(obj.settings) as engine, Session(engine) as session:
        rows = rule_kpis(session=session, since=since_at, until=until_at, rule=rule)
    if as_json:
        payload = {
            "since": since_at.isoformat(),
            "until": until_at.isoformat() if until_at else None,
            "rules": [row.to_json() for row in rows],
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(format_kpis(rows))
