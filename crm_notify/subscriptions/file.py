"""The subscriptions file (``CRM_NOTIFY_WEBHOOKS_FILE``): subscriptions kept with the code.

::

    subscriptions:
      - name: crm                                   # required; unique
        url: https://crm.example/hooks/crm-notify   # https (http: loopback only); ${NAME} in
                                                    #   the query string only
        events: [contact.subscribed, contact.unsubscribed]   # default: every event
        sources: [contact, admin]                   # default: every source
        content_type: json                          # json (default) | form
        headers: {X-Api-Key: "${CRM_API_KEY}"}      # values may hold ${NAME}
        secret: ${CRM_WEBHOOK_SECRET}               # required: the variable holding whsec_...
        disable_after: 3d                           # default 5d

The file is checked when a process starts (an error names the file and line, and the process
does not start) and synced into the database by ``crm-notify serve``, ``crm-notify scheduler``
and ``crm-notify webhooks sync``: new entries are added, changed ones updated (their counters
and enabled state kept), and file subscriptions no longer in the file are disabled, saying so,
with their deliveries kept (a renamed entry, or a process started with an older file, loses
nothing; ``crm-notify webhooks remove`` deletes one for good). A name taken by an API
subscription is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from crm_notify.actions.env import ENV_REFERENCE
from crm_notify.db import session_scope
from crm_notify.errors import RuleFileError
from crm_notify.rules.yaml_source import read_yaml_file
from crm_notify.subscriptions.models import SubscriptionOrigin, WebhookSubscription
from crm_notify.subscriptions.payload import CONTENT_TYPES
from crm_notify.subscriptions.repository import (
    EVENT_NAMES,
    SOURCE_NAMES,
    SubscriptionError,
    check_choices,
    check_disable_after,
    check_headers,
    check_name,
    check_url,
    set_enabled,
)

#: The reason shown on a file subscription that is no longer in the file.
LEFT_THE_FILE = "no longer in the subscriptions file"


#: The keys of one entry.
ENTRY_KEYS = frozenset(
    {"name", "url", "events", "sources", "content_type", "headers", "secret", "disable_after"}
)


@dataclass(frozen=True, slots=True)
class FileSubscription:
    """One checked entry of the file."""

    name: str
    url: str
    events: list[str]
    sources: list[str]
    content_type: str
    headers: dict[str, str]
    secret_variable: str
    disable_after_s: int


def load_file(path: Path, *, environ: Mapping[str, str]) -> list[FileSubscription]:
    """The subscriptions in ``path``, checked (every ``${NAME}`` must be set in ``environ``).

    Raises:
        RuleFileError: the file is invalid (with the line of the offending entry or key).
    """
    document = read_yaml_file(path)
    data = document.data
    if not isinstance(data, dict) or set(data) != {"subscriptions"}:
        raise RuleFileError(path, 1, "the file holds one key, subscriptions: a list")
    entries = data["subscriptions"]
    if not isinstance(entries, list):
        raise RuleFileError(path, document.line_for(("subscriptions",)), "subscriptions: a list")
    loaded: list[FileSubscription] = []
    for index, entry in enumerate(entries):
        where = ("subscriptions", index)
        try:
            loaded.append(_entry(entry, environ))
        except SubscriptionError as exc:
            line = document.line_for((*where, exc.field))
            message = f"subscriptions[{index}].{exc.field}: {exc.message}"
            raise RuleFileError(path, line, message) from exc
    names = [item.name for item in loaded]
    for index, name in enumerate(names):
        if name in names[:index]:
            line = document.line_for(("subscriptions", index, "name"))
            raise RuleFileError(path, line, f"subscription {name!r} is named twice")
    return loaded


def _entry(entry: Any, environ: Mapping[str, str]) -> FileSubscription:
    if not isinstance(entry, dict):
        raise SubscriptionError("name", "each entry is a mapping with name, url and secret")
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise SubscriptionError(unknown[0], f"unknown key (known: {', '.join(sorted(ENTRY_KEYS))})")
    for key in ("name", "url", "secret"):
        if not isinstance(entry.get(key), str):
            raise SubscriptionError(key, "required, a string")
    secret = ENV_REFERENCE.fullmatch(entry["secret"].strip())
    if secret is None or not secret["name"]:
        raise SubscriptionError(
            "secret", "name the environment variable holding it: ${NAME} (no secret in the file)"
        )
    if secret["name"] not in environ:
        raise SubscriptionError("secret", f"environment variable {secret['name']} is not set")
    headers = entry.get("headers") or {}
    if not isinstance(headers, dict):
        raise SubscriptionError("headers", "a mapping of header name to value")
    headers = {str(name): value for name, value in headers.items()}
    for value in headers.values():
        for match in ENV_REFERENCE.finditer(value if isinstance(value, str) else ""):
            if match["name"] and match["name"] not in environ:
                raise SubscriptionError(
                    "headers", f"environment variable {match['name']} is not set"
                )
    content_type = entry.get("content_type", "json")
    if content_type not in CONTENT_TYPES:
        raise SubscriptionError("content_type", "json or form")
    disable_after = entry.get("disable_after")
    return FileSubscription(
        name=check_name(entry["name"]),
        url=check_url(entry["url"], environ_names=environ.keys()),
        events=check_choices("events", _names(entry, "events"), EVENT_NAMES),
        sources=check_choices("sources", _names(entry, "sources"), SOURCE_NAMES),
        content_type=content_type,
        headers=check_headers(headers, allow_variables=True),
        secret_variable=secret["name"],
        disable_after_s=check_disable_after(None if disable_after is None else str(disable_after)),
    )


def _names(entry: dict[str, Any], key: str) -> list[str]:
    value = entry.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SubscriptionError(key, "a list of names")
    return value


def sync_file(session: Session, subscriptions: list[FileSubscription]) -> dict[str, int]:
    """Make the database's file subscriptions those of the file (see the module docstring).

    Raises:
        SubscriptionError: a name in the file is taken by an API subscription.

    Returns:
        How many were ``added``, ``updated`` and ``disabled`` (no longer in the file).
    """
    existing = {row.name: row for row in session.exec(select(WebhookSubscription))}
    counts = {"added": 0, "updated": 0, "disabled": 0}
    for item in subscriptions:
        row = existing.get(item.name)
        if row is not None and row.origin != SubscriptionOrigin.FILE.value:
            raise SubscriptionError(
                "name", f"{item.name!r} is an API subscription; rename one of them"
            )
        values: dict[str, Any] = {
            "url": item.url,
            "events": item.events,
            "sources": item.sources,
            "content_type": item.content_type,
            "headers": item.headers,
            "secret_variable": item.secret_variable,
            "disable_after_s": item.disable_after_s,
        }
        if row is None:
            session.add(
                WebhookSubscription(name=item.name, origin=SubscriptionOrigin.FILE.value, **values)
            )
            counts["added"] += 1
            continue
        if row.disabled_reason == LEFT_THE_FILE:  # back in the file: enabled again
            set_enabled(session=session, subscription=row, enabled=True, reason=None)
            counts["updated"] += 1
        elif any(getattr(row, key) != value for key, value in values.items()):
            counts["updated"] += 1
        for key, value in values.items():
            setattr(row, key, value)
        session.add(row)
    names = {item.name for item in subscriptions}
    for row in existing.values():
        gone = row.origin == SubscriptionOrigin.FILE.value and row.name not in names
        if gone and row.disabled_reason != LEFT_THE_FILE:
            set_enabled(session=session, subscription=row, enabled=False, reason=LEFT_THE_FILE)
            counts["disabled"] += 1
    return counts


def sync_file_into(engine: Engine, subscriptions: list[FileSubscription]) -> dict[str, int]:
    """:func:`sync_file` in a transaction of its own; when another process syncing at the same
    moment added the same name first, once more (then there is nothing left to add).

    Raises:
        SubscriptionError: as :func:`sync_file`.
    """
    try:
        with session_scope(engine) as session:
            return sync_file(session, subscriptions)
    except IntegrityError:
        with session_scope(engine) as session:
            return sync_file(session, subscriptions)
