"""Creating, changing and reading subscriptions, with the checks the API, CLI and file share.

Every function takes ``session=`` and leaves committing to the caller. Invalid input raises
:class:`SubscriptionError` naming the field.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.actions.env import referenced_variables
from crm_notify.actions.signing import new_secret
from crm_notify.clock import now
from crm_notify.lifecycle.models import LifecycleName, LifecycleSource
from crm_notify.rules._urls import static_url_problem
from crm_notify.rules.durations import format_duration, parse_duration
from crm_notify.subscriptions.models import (
    MAX_URL_CHARS,
    DeliveryStatus,
    SubscriptionDelivery,
    SubscriptionOrigin,
    WebhookSubscription,
)
from crm_notify.subscriptions.payload import CONTENT_TYPES
from crm_notify.subscriptions.sender import Attempt

#: What a subscription name looks like.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: The events a subscription may name.
EVENT_NAMES = tuple(name.value for name in LifecycleName)
#: The sources a subscription may name.
SOURCE_NAMES = tuple(source.value for source in LifecycleSource)
#: How long every attempt may fail before a subscription is disabled (by default).
DEFAULT_DISABLE_AFTER = timedelta(days=5)
#: The shortest ``disable_after`` accepted.
MIN_DISABLE_AFTER = timedelta(minutes=1)
#: Headers crm-notify sets itself.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


class SubscriptionError(ValueError):
    """Invalid subscription input; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def check_name(name: str) -> str:
    """``name``, checked."""
    if not NAME_PATTERN.fullmatch(name):
        raise SubscriptionError(
            "name", "1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


def check_url(url: str, *, environ_names: Iterable[str] | None = None) -> str:
    """``url``, checked: https (http to loopback only), a host, no credentials, no fragment;
    ``${NAME}`` only in the query string (file subscriptions, ``environ_names`` given)."""
    if len(url) > MAX_URL_CHARS:
        raise SubscriptionError("url", f"longer than {MAX_URL_CHARS} characters")
    names = set(environ_names) if environ_names is not None else None

    def check_variables(text: str) -> bool:
        used = referenced_variables(text)
        if used and names is None:
            raise SubscriptionError("url", "${NAME} references belong in the subscriptions file")
        missing = [name for name in used if names is not None and name not in names]
        if missing:
            raise SubscriptionError("url", f"environment variable {missing[0]} is not set")
        return True

    try:
        problem = static_url_problem(
            url,
            template_problem=("the URL cannot hold templates", None),
            host_example="https://crm.example/hooks/crm-notify",
            credentials_hint="put credentials in a header",
            check_variables=check_variables,
        )
    except ValueError as exc:
        if isinstance(exc, SubscriptionError):
            raise
        raise SubscriptionError("url", str(exc)) from exc
    if problem is not None:
        message, hint = problem
        raise SubscriptionError("url", f"{message} ({hint})" if hint else message)
    try:
        httpx.URL(url)  # what the client will send it to; it refuses some hosts (IDNA rules)
    except httpx.InvalidURL as exc:
        raise SubscriptionError("url", f"invalid URL: {exc}") from exc
    return url


def check_choices(field: str, values: Iterable[str], known: Sequence[str]) -> list[str]:
    """``values`` without repeats, each one of ``known`` (``*`` alone: every one, ``[]``)."""
    chosen = list(dict.fromkeys(value.strip() for value in values if value.strip()))
    if chosen == ["*"]:
        return []
    for value in chosen:
        if value not in known:
            raise SubscriptionError(field, f"unknown {value!r} (known: {', '.join(known)}, or *)")
    return chosen


def check_headers(headers: dict[str, str], *, allow_variables: bool) -> dict[str, str]:
    """``headers``, checked: token names, no reserved ones, printable values."""
    for name, value in headers.items():
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise SubscriptionError("headers", f"{name!r} is not a header name")
        if name.lower() in RESERVED_HEADERS:
            raise SubscriptionError("headers", f"{name} is set by crm-notify")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise SubscriptionError("headers", f"{name}: a text value on one line")
        if not value.isascii():
            raise SubscriptionError("headers", f"{name}: ASCII text only (HTTP header values)")
        try:
            used = referenced_variables(value)
        except ValueError as exc:
            raise SubscriptionError("headers", f"{name}: {exc}") from exc
        if used and not allow_variables:
            raise SubscriptionError(
                "headers", "${NAME} references belong in the subscriptions file"
            )
    return dict(headers)


def check_disable_after(text: str | None) -> int:
    """Seconds of ``text`` (a duration such as ``3d``; ``None``: the default)."""
    if text is None:
        return int(DEFAULT_DISABLE_AFTER.total_seconds())
    try:
        delta = parse_duration(text)
    except ValueError as exc:
        raise SubscriptionError("disable_after", str(exc)) from exc
    if delta < MIN_DISABLE_AFTER:
        raise SubscriptionError("disable_after", f"at least {format_duration(MIN_DISABLE_AFTER)}")
    return int(delta.total_seconds())


def create(
    *,
    session: Session,
    url: str,
    name: str | None = None,
    events: Iterable[str] = (),
    sources: Iterable[str] = (),
    content_type: str = "json",
    headers: dict[str, str] | None = None,
    disable_after: str | None = None,
) -> WebhookSubscription:
    """A new API subscription, with a fresh signing secret (shown once, by the caller).

    Raises:
        SubscriptionError: invalid input, or the name is taken.
    """
    check_url(url)
    if content_type not in CONTENT_TYPES:
        raise SubscriptionError("content_type", "json or form")
    name = check_name(name) if name is not None else _default_name(url)
    if by_name(session=session, name=name) is not None:
        raise SubscriptionError("name", f"a subscription named {name!r} exists")
    subscription = WebhookSubscription(
        name=name,
        url=url,
        events=check_choices("events", events, EVENT_NAMES),
        sources=check_choices("sources", sources, SOURCE_NAMES),
        content_type=content_type,
        headers=check_headers(headers or {}, allow_variables=False),
        secret=new_secret(),
        origin=SubscriptionOrigin.API.value,
        disable_after_s=check_disable_after(disable_after),
    )
    session.add(subscription)
    session.flush()
    return subscription


def by_name(*, session: Session, name: str) -> WebhookSubscription | None:
    """The subscription named ``name``, or ``None``."""
    return session.exec(select(WebhookSubscription).where(WebhookSubscription.name == name)).first()


def all_subscriptions(*, session: Session) -> list[WebhookSubscription]:
    """Every subscription, by name."""
    return list(session.exec(select(WebhookSubscription).order_by(col(WebhookSubscription.name))))


def set_enabled(
    *, session: Session, subscription: WebhookSubscription, enabled: bool, reason: str | None
) -> None:
    """Enable (its failure period starts afresh) or disable ``subscription``."""
    subscription.enabled = enabled
    subscription.disabled_reason = None if enabled else (reason or "disabled by an admin")
    subscription.disabled_at = None if enabled else now()
    if enabled:
        subscription.failing_since = None
    session.add(subscription)


def remove(*, session: Session, subscription: WebhookSubscription) -> None:
    """Delete ``subscription`` and its deliveries."""
    session.execute(
        sa.delete(SubscriptionDelivery).where(
            col(SubscriptionDelivery.subscription_id) == subscription.id
        )
    )
    session.delete(subscription)


def record_ping(*, session: Session, subscription: WebhookSubscription, attempt: Attempt) -> None:
    """Show a ping's answer as the subscription's last status (pings are not counted)."""
    subscription.last_status = attempt.status
    subscription.last_attempt_at = now()
    subscription.last_error = None if attempt.ok else (attempt.error or "")[:1000]
    session.add(subscription)


def redeliver_failed(*, session: Session, subscription: WebhookSubscription) -> int:
    """Put ``subscription``'s failed deliveries back in line; return how many."""
    result = session.execute(
        sa.update(SubscriptionDelivery)
        .where(col(SubscriptionDelivery.subscription_id) == subscription.id)
        .where(col(SubscriptionDelivery.status) == DeliveryStatus.FAILED.value)
        .values(status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_at=now())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def delivery_counts(*, session: Session) -> dict[int, dict[str, int]]:
    """Deliveries waiting (``pending``, ``sending``) and ``failed``, per subscription id."""
    counts: dict[int, dict[str, int]] = {}
    for subscription_id, status, count in session.execute(
        sa.select(
            col(SubscriptionDelivery.subscription_id),
            col(SubscriptionDelivery.status),
            sa.func.count(),
        ).group_by(col(SubscriptionDelivery.subscription_id), col(SubscriptionDelivery.status))
    ):
        per = counts.setdefault(subscription_id, {"waiting": 0, "failed": 0})
        per["failed" if status == DeliveryStatus.FAILED.value else "waiting"] += int(count)
    return counts


def subscription_json(
    subscription: WebhookSubscription, *, waiting: int = 0, failed: int = 0
) -> dict[str, Any]:
    """A subscription as the API and ``webhooks show --json`` show it (never its secret)."""

    def moment(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "name": subscription.name,
        "url": _shown_url(subscription.url),
        "events": subscription.events or ["*"],
        "sources": subscription.sources or ["*"],
        "content_type": subscription.content_type,
        "headers": sorted(subscription.headers),
        "origin": subscription.origin,
        "enabled": subscription.enabled,
        "disabled_reason": subscription.disabled_reason,
        "disabled_at": moment(subscription.disabled_at),
        "disable_after": format_duration(timedelta(seconds=subscription.disable_after_s)),
        "failing_since": moment(subscription.failing_since),
        "sent": subscription.sent_count,
        "failed": subscription.failed_count,
        "last_status": subscription.last_status,
        "last_error": subscription.last_error,
        "last_attempt_at": moment(subscription.last_attempt_at),
        "last_success_at": moment(subscription.last_success_at),
        "deliveries_waiting": waiting,
        "deliveries_failed": failed,
        "created_at": moment(subscription.created_at),
    }


def _shown_url(url: str) -> str:
    """``url`` without its query string (it may carry a credential)."""
    base, question, _query = url.partition("?")
    return base + ("?…" if question else "")


def _default_name(url: str) -> str:
    host = (
        re.sub(r"[^a-z0-9-]+", "-", url.split("//", 1)[-1].split("/")[0].lower()).strip("-")
        or "subscription"
    )
    return f"{host[:40]}-{secrets.token_hex(3)}"
