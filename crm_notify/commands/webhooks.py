"""``crm-notify webhooks``: subscriptions that tell other tools about lifecycle events."""

from __future__ import annotations

import json
import os
from typing import Any

import click
from sqlmodel import Session

from crm_notify._net import OutboundPolicy
from crm_notify.commands._common import CommandError, migrated_engine
from crm_notify.db import session_scope
from crm_notify.errors import RuleFileError
from crm_notify.subscriptions import repository
from crm_notify.subscriptions.file import LEFT_THE_FILE, load_file, sync_file_into
from crm_notify.subscriptions.models import SubscriptionOrigin, WebhookSubscription
from crm_notify.subscriptions.repository import EVENT_NAMES, SOURCE_NAMES, SubscriptionError
from crm_notify.subscriptions.sender import SubscriptionSender

#: The argument or option each subscription field comes from (for error messages).
OPTION_OF_FIELD = {
    "url": "URL",
    "name": "--name",
    "events": "--events",
    "sources": "--sources",
    "content_type": "--form",
    "headers": "--header",
    "disable_after": "--disable-after",
}


@click.group("webhooks")
def webhooks() -> None:
    """Webhook subscriptions: URLs told about contact and notification lifecycle events,
    signed (Standard Webhooks), retried, disabled when they keep failing.

    \b
    Examples:
      crm-notify webhooks add https://crm.example/hooks --events contact.unsubscribed
      crm-notify webhooks ping crm-example-1a2b3c
      crm-notify webhooks list
    """


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, colon, text = value.partition(":")
        if not colon:
            raise click.BadParameter(f"{value!r}: write NAME: VALUE", param_hint="--header")
        headers[name.strip()] = text.strip()
    return headers


def _find(session: Session, name: str) -> WebhookSubscription:
    subscription = repository.by_name(session=session, name=name)
    if subscription is None:
        raise CommandError(
            f"no webhook subscription named {name!r} (see `crm-notify webhooks list`)"
        )
    return subscription


@webhooks.command("add")
@click.argument("url")
@click.option(
    "--events",
    default="*",
    show_default=True,
    help=f"Comma-separated events, or * for all: {', '.join(EVENT_NAMES)}.",
)
@click.option(
    "--sources",
    default="*",
    show_default=True,
    help=f"Comma-separated sources that count, or * for all: {', '.join(SOURCE_NAMES)}.",
)
@click.option("--name", default=None, help="Its name (default: from the URL's host).")
@click.option("--form", "content_type", flag_value="form", help="Send form fields, not JSON.")
@click.option("--json", "content_type", flag_value="json", default=True, hidden=True)
@click.option(
    "--header", "header", multiple=True, help="An extra header, 'NAME: VALUE' (repeatable)."
)
@click.option(
    "--disable-after",
    default="5d",
    show_default=True,
    help="Disable it when every attempt has failed for this long (e.g. 1d, 12h).",
)
@click.pass_obj
def add(
    obj: Any,
    url: str,
    events: str,
    sources: str,
    name: str | None,
    content_type: str,
    header: tuple[str, ...],
    disable_after: str,
) -> None:
    """Subscribe URL; prints its signing secret once (store it with the receiver)."""
    try:
        with migrated_engine(obj.settings) as engine, session_scope(engine) as session:
            subscription = repository.create(
                session=session,
                url=url,
                name=name,
                events=_split(events),
                sources=_split(sources),
                content_type=content_type,
                headers=_headers(header),
                disable_after=disable_after,
            )
            shown = subscription.name, subscription.secret
    except SubscriptionError as exc:
        raise click.BadParameter(exc.message, param_hint=OPTION_OF_FIELD[exc.field]) from exc
    click.echo(f"subscribed {shown[0]}")
    click.echo(f"signing secret (shown once): {shown[1]}")


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, one object per subscription.")
@click.pass_obj
def list_command(obj: Any, as_json: bool) -> None:
    """List subscriptions: name, state, events, sources, sent, failed, last status."""
    with migrated_engine(obj.settings) as engine, Session(engine) as session:
        rows = repository.all_subscriptions(session=session)
        counts = repository.delivery_counts(session=session)
        shown = [repository.subscription_json(row, **counts.get(row.id or 0, {})) for row in rows]
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    if not shown:
        click.echo(
            "no webhook subscriptions (add one with `crm-notify webhooks add URL`)", err=True
        )
    for item in shown:
        state = "enabled" if item["enabled"] else f"DISABLED: {item['disabled_reason']}"
        click.echo(
            f"{item['name']}\t{item['url']}\t{state}\tevents={','.join(item['events'])}"
            f"\tsources={','.join(item['sources'])}\tsent={item['sent']}\tfailed={item['failed']}"
            f"\tlast={item['last_status'] or '-'}\twaiting={item['deliveries_waiting']}"
        )


@webhooks.command("show")
@click.argument("name")
@click.pass_obj
def show(obj: Any, name: str) -> None:
    """Print NAME's settings, state and counters as JSON (never its secret)."""
    with migrated_engine(obj.settings) as engine, Session(engine) as session:
        subscription = _find(session, name)
        counts = repository.delivery_counts(session=session).get(subscription.id or 0, {})
        click.echo(json.dumps(repository.subscription_json(subscription, **counts), indent=2))


@webhooks.command("ping")
@click.argument("name")
@click.pass_obj
def ping(obj: Any, name: str) -> None:
    """Send NAME a signed test event (webhook.ping) now and print its answer."""
    sender = SubscriptionSender(
        environ=os.environ, policy=OutboundPolicy.from_settings(obj.settings)
    )
    try:
        with migrated_engine(obj.settings) as engine:
            with Session(engine, expire_on_commit=False) as session:
                subscription = _find(session, name)
            attempt = sender.ping(subscription)  # no transaction open meanwhile
            with session_scope(engine) as session:
                subscription = _find(session, name)
                repository.record_ping(session=session, subscription=subscription, attempt=attempt)
    finally:
        sender.close()
    if not attempt.ok:
        raise CommandError(f"ping failed: {attempt.error}")
    click.echo(f"ping answered {attempt.status}")


def _set_enabled(obj: Any, name: str, enabled: bool, reason: str | None) -> None:
    with migrated_engine(obj.settings) as engine, session_scope(engine) as session:
        subscription = _find(session, name)
        repository.set_enabled(
            session=session, subscription=subscription, enabled=enabled, reason=reason
        )


@webhooks.command("enable")
@click.argument("name")
@click.pass_obj
def enable(obj: Any, name: str) -> None:
    """Enable NAME again; its waiting deliveries are sent (try `ping` first)."""
    _set_enabled(obj, name, True, None)
    click.echo(f"enabled {name}")


@webhooks.command("disable")
@click.argument("name")
@click.option("--reason", default=None, help="Shown with the subscription.")
@click.pass_obj
def disable(obj: Any, name: str, reason: str | None) -> None:
    """Stop sending to NAME (waiting deliveries are kept; new events are not queued)."""
    _set_enabled(obj, name, False, reason)
    click.echo(f"disabled {name}")


@webhooks.command("redeliver")
@click.argument("name")
@click.pass_obj
def redeliver(obj: Any, name: str) -> None:
    """Put NAME's failed deliveries (every retry failed) back in line."""
    with migrated_engine(obj.settings) as engine, session_scope(engine) as session:
        count = repository.redeliver_failed(session=session, subscription=_find(session, name))
    click.echo(f"{count} deliveries queued again")


@webhooks.command("remove")
@click.argument("name")
@click.pass_obj
def remove(obj: Any, name: str) -> None:
    """Delete NAME and its waiting deliveries (a file subscription: once it left the file)."""
    with migrated_engine(obj.settings) as engine, session_scope(engine) as session:
        subscription = _find(session, name)
        if subscription.origin == SubscriptionOrigin.FILE.value and (
            subscription.disabled_reason != LEFT_THE_FILE
        ):
            raise CommandError(f"{name} comes from the subscriptions file; remove it there first")
        repository.remove(session=session, subscription=subscription)
    click.echo(f"removed {name}")


@webhooks.command("sync")
@click.pass_obj
def sync(obj: Any) -> None:
    """Check CRM_NOTIFY_WEBHOOKS_FILE and sync its subscriptions into the database."""
    path = obj.settings.webhooks_file
    if path is None:
        raise CommandError("CRM_NOTIFY_WEBHOOKS_FILE is not set")
    try:
        entries = load_file(path, environ=os.environ)
        with migrated_engine(obj.settings) as engine:
            counts = sync_file_into(engine, entries)
    except RuleFileError as exc:
        raise CommandError(str(exc)) from exc
    except SubscriptionError as exc:
        raise CommandError(f"{path}: {exc}") from exc
    click.echo(", ".join(f"{count} {what}" for what, count in counts.items()))
