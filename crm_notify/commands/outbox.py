"""``crm-notify outbox``: list notifications and replay the ones delivery gave up on."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.commands._common import CommandError, migrated_engine, os_user
from crm_notify.db import session_scope
from crm_notify.errors import CrmNotifyError, RuleFileError
from crm_notify.outbox import repository
from crm_notify.outbox.models import Notification, NotificationStatus
from crm_notify.outbox.repository import notification_json

#: Characters of ``last_error`` the table shows.
ERROR_CHARS = 60
#: Anything that looks like an email address, masked in the table's error column.
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:@]+@[^\s<>()\[\]\"',;:]+")


def _shorten(error: str | None) -> str:
    """``error`` on one line, addresses masked, cut to :data:`ERROR_CHARS`."""
    if not error:
        return ""
    text = _ADDRESS.sub("<address>", " ".join(error.split()))
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _table(rows: Sequence[Notification]) -> list[str]:
    """Aligned lines (a header, then one per row); no addresses, the contact id instead."""
    lines = [
        [
            str(row.id),
            row.rule,
            row.channel,
            str(row.status),
            str(row.attempts),
            row.esp or "-",
            str(row.contact_id) if row.contact_id is not None else "-",
            f"{row.updated_at:%Y-%m-%d %H:%M}",
            _shorten(row.last_error),
        ]
        for row in rows
    ]
    header = ["ID", "RULE", "CHANNEL", "STATUS", "ATTEMPTS", "ESP", "CONTACT", "UPDATED (UTC)"]
    header.append("LAST ERROR")
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in [header, *lines]
    ]


def _since(value: str | None) -> datetime | None:
    from crm_notify.explain import parse_moment

    if value is None:
        return None
    try:
        return parse_moment(value, now=now())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc


@click.group(
    "outbox",
    epilog="""\b
Examples:
  crm-notify outbox list --status failed              what delivery gave up on
  crm-notify outbox list --rule order-shipped --since 24h --json
  crm-notify outbox retry 41 42                       replay two failed notifications
  crm-notify outbox retry --all --rule order-shipped  replay every failed one of a rule

A transient ESP failure is retried with exponential backoff until
CRM_NOTIFY_DELIVERY_MAX_AGE (24h) after the first attempt, or
CRM_NOTIFY_MAX_DELIVERY_ATTEMPTS attempts; then the notification is failed
(dead-lettered) until someone replays it.""",
)
def outbox() -> None:
    """List notifications and replay failed (dead-lettered) ones."""


@outbox.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in NotificationStatus]),
    default=None,
    help="Only notifications in this status.",
)
@click.option("--rule", default=None, help="Only this rule's notifications.")
@click.option(
    "--since",
    default=None,
    help="Only those changed since: 24h (that long ago), 2026-11-20, 2026-11-20T10:00Z.",
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print full rows as JSON (with addresses; not the rendered message).",
)
@click.pass_obj
def list_command(
    obj: Any, status: str | None, rule: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """List notifications, the most recently changed first.

    The table shows the contact id, never the address; addresses in errors are masked.

    \b
    Examples:
      crm-notify outbox list --status failed
      crm-notify outbox list --status retrying --rule abandoned-cart --limit 10
      crm-notify outbox list --since 2026-11-20 --json
    """
    since_at = _since(since)
    with migrated_engine(obj.settings) as engine, Session(engine) as session:
        rows = repository.list_notifications(
            session=session, status=status, rule=rule, since=since_at, limit=limit
        )
    if as_json:
        click.echo(
            json.dumps([notification_json(row) for row in rows], indent=2, ensure_ascii=False)
        )
        return
    if not rows:
        click.echo("no notifications match", err=True)
        return
    for line in _table(rows):
        click.echo(line)


def _refusal(notification_id: int, status: str | None) -> str:
    if status is None:
        return f"there is no notification {notification_id}"
    if status == NotificationStatus.CANCELLED:
        return (
            f"notification {notification_id} is cancelled: consent or suppression refused it, "
            "and cancelled notifications are never replayed"
        )
    return f"notification {notification_id} is {status}: only failed notifications can be replayed"


def _runtime(settings: Any, engine: Engine) -> Any:
    from crm_notify.runtime import Runtime

    try:
        return Runtime.from_settings(settings, engine=engine)
    except RuleFileError as exc:
        raise CommandError(f"rules did not load: {exc}") from exc
    except CrmNotifyError as exc:
        raise CommandError(str(exc)) from exc


def _summary(engine: Engine, ids: Sequence[int]) -> str:
    """``2 sent, 1 cancelled``: where the replayed notifications are now."""
    with Session(engine) as session:
        statuses = session.exec(
            select(Notification.status).where(col(Notification.id).in_(list(ids)))
        ).all()
    counts = Counter(str(status) for status in statuses)
    return ", ".join(f"{count} {status}" for status, count in counts.most_common())


@outbox.command("retry")
@click.argument("ids", nargs=-1, type=click.IntRange(1), metavar="[ID]...")
@click.option("--all", "replay_all", is_flag=True, help="Every failed notification.")
@click.option("--rule", default=None, help="With --all: only this rule's failed notifications.")
@click.pass_obj
def retry(obj: Any, ids: tuple[int, ...], replay_all: bool, rule: str | None) -> None:
    """Replay failed notifications (the same message, the same Message-ID).

    Only failed notifications can be replayed; if any ID is in another status, nothing is
    replayed. Cancelled ones (consent withdrawn, address suppressed) never are. A replayed
    notification starts over (attempts 0, a new max-age clock) with the message as it was
    rendered, and the guards check it again at delivery, so it may still be cancelled. With
    Redis the workers deliver it; without, this command does before it returns.

    \b
    Examples:
      crm-notify outbox retry 41 42
      crm-notify outbox retry --all
      crm-notify outbox retry --all --rule order-shipped
    """
    if replay_all == bool(ids):
        raise click.UsageError("give notification IDs or --all (not both)")
    if rule is not None and not replay_all:
        raise click.UsageError("--rule goes with --all")
    settings = obj.settings
    by = os_user()
    with migrated_engine(settings) as engine:
        runtime = _runtime(settings, engine)
        try:
            with session_scope(engine) as session:
                wanted = list(ids) or repository.failed_ids(session=session, rule=rule)
                result = repository.replay_failed(session=session, notification_ids=wanted, by=by)
                if result.refused and not replay_all:
                    reasons = [_refusal(i, s) for i, s in result.refused.items()]
                    raise CommandError("; ".join(reasons) + ". Nothing was replayed.")
            if not result.replayed:
                scope = f" of rule {rule!r}" if rule else ""
                click.echo(f"no failed notifications{scope} to replay")
                return
            runtime.enqueue(result.replayed)
            summary = _summary(engine, result.replayed)
        finally:
            runtime.close()
    count = len(result.replayed)
    click.echo(f"replayed {count} notification{'s' if count != 1 else ''}: {summary}")
