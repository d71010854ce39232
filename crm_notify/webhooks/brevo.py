"""Brevo transactional email webhooks.

Contract (https://developers.brevo.com/docs/transactional-webhooks,
https://developers.brevo.com/docs/batch-webhooks,
https://developers.brevo.com/docs/secured-webhooks):

- ``POST`` with a JSON body: one event object per call, or an array of them when the webhook
  was created with ``batched: true`` (both are accepted);
- authenticity: the credentials Brevo was given, either HTTP Basic (``user:password@`` in the
  webhook URL; ``CRM_NOTIFY_BREVO_WEBHOOK_AUTH``) or a bearer token (``auth: {"type":
  "bearer", "token"}``; ``CRM_NOTIFY_BREVO_WEBHOOK_TOKEN``). Brevo signs nothing and sends no
  timestamp, so there is no age check;
- each event: ``event`` (its type), ``email`` (the recipient), ``message-id`` (the
  ``messageId`` the send API returned, ``<...@smtp-relay.mailin.fr>``), ``X-Mailin-custom``
  (the string our adapter set: JSON with ``crm_notify_id``), ``tags``, ``reason`` (bounces,
  deferrals, blocks), ``link`` (clicks), ``ts_epoch`` (milliseconds, UTC) and ``ts_event``
  (seconds, UTC). ``id`` is the webhook's id, not the event's: Brevo has no event id, so a
  digest of the event identifies replays.

An item that is not an event object (not an object, or no ``event``) is stored as an unknown
event (``malformed``) rather than refusing the whole batch; a body that is neither an object
nor an array is refused (400).
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any, Self

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError
from crm_notify.webhooks.base import EspWebhook, WebhookRequest, secret_value
from crm_notify.webhooks.events import (
    BounceKind,
    EventType,
    TrackingEvent,
    malformed_event,
    parse_notification_id,
    payload_digest,
)

#: Brevo event type -> our type and bounce kind.
EVENT_TYPES: dict[str, tuple[EventType, BounceKind | None]] = {
    "request": (EventType.SENT, None),
    "delivered": (EventType.DELIVERED, None),
    "deferred": (EventType.DEFERRED, None),
    "soft_bounce": (EventType.BOUNCED, BounceKind.SOFT),
    "hard_bounce": (EventType.BOUNCED, BounceKind.HARD),
    "invalid_email": (EventType.BOUNCED, BounceKind.HARD),
    "blocked": (EventType.REJECTED, None),
    "error": (EventType.REJECTED, None),
    "spam": (EventType.COMPLAINED, None),
    "complaint": (EventType.COMPLAINED, None),
    "unique_opened": (EventType.OPENED, None),
    "opened": (EventType.OPENED, None),
    "proxy_open": (EventType.OPENED, None),
    "unique_proxy_open": (EventType.OPENED, None),
    "click": (EventType.CLICKED, None),
    "unsubscribed": (EventType.UNSUBSCRIBED, None),
    "unsubscribe": (EventType.UNSUBSCRIBED, None),
}
#: Opens Brevo attributes to a privacy proxy (Apple Mail Privacy Protection), not a reader.
PROXY_OPENS = frozenset({"proxy_open", "unique_proxy_open"})
#: Brevo's header whose string value its events echo back (see the Brevo adapter).
CUSTOM_DATA_FIELD = "X-Mailin-custom"
#: ``ts_epoch`` values above this are milliseconds (Brevo documents milliseconds, some
#: events carry seconds).
_MILLISECONDS_FROM = 10**11


class BrevoWebhook(EspWebhook):
    """Brevo's transactional webhook, authenticated by HTTP Basic credentials or a bearer
    token (either one that is configured is accepted).

    Parameters:
        basic_auth: ``user:password`` Brevo sends as HTTP Basic credentials.
        token: the bearer token Brevo sends in ``Authorization``.
    """

    provider = "brevo"
    secret_settings = ("brevo_webhook_auth", "brevo_webhook_token")

    def __init__(
        self,
        *,
        basic_auth: str | None = None,
        token: str | None = None,
        tolerance_s: float = 300.0,
    ) -> None:
        super().__init__(tolerance_s=tolerance_s)
        if not basic_auth and not token:
            raise ValueError("BrevoWebhook needs basic_auth or token")
        self._basic_auth = basic_auth
        self._token = token

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """From ``brevo_webhook_auth`` and/or ``brevo_webhook_token``.

        Raises:
            ConfigurationError: the Basic credentials are not ``user:password``.
        """
        basic_auth = secret_value(settings.brevo_webhook_auth)
        token = secret_value(settings.brevo_webhook_token)
        if basic_auth is not None and ":" not in basic_auth:
            raise ConfigurationError("CRM_NOTIFY_BREVO_WEBHOOK_AUTH must be user:password")
        if basic_auth is None and token is None:
            return None
        return cls(basic_auth=basic_auth, token=token, tolerance_s=settings.webhook_tolerance_s)

    def validate_request(self, request: WebhookRequest) -> None:
        """The configured Basic credentials or bearer token, compared in constant time."""
        scheme, _, value = (request.header("authorization") or "").strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and self._basic_auth:
            self.check_basic_auth(request, self._basic_auth)
            return
        if scheme == "bearer" and self._token:
            if not hmac.compare_digest(value.strip().encode(), self._token.encode()):
                raise self.auth_error("wrong bearer token")
            return
        expected = " or ".join(
            kind
            for kind, configured in (
                ("HTTP Basic credentials", self._basic_auth),
                ("a bearer token", self._token),
            )
            if configured
        )
        raise self.auth_error(f"{expected} required", missing=True)

    def parse_events(self, request: WebhookRequest) -> list[TrackingEvent]:
        """One event per object of the body (an object, or an array when batched); an item
        that is not an event object becomes an ``unknown`` event (``malformed``).

        Raises:
            WebhookPayloadError: the body is neither a JSON object nor an array.
        """
        body = request.json(self.provider)
        if not isinstance(body, dict | list):
            raise self.payload_error("the body must be a JSON object or an array of them")
        items = body if isinstance(body, list) else [body]
        events: list[TrackingEvent] = []
        for item in items:
            kind = item.get("event") if isinstance(item, dict) else None
            if isinstance(item, dict) and isinstance(kind, str) and kind:
                events.append(self._event(kind, item))
            else:
                events.append(malformed_event(item))
        return events

    def _event(self, kind: str, item: dict[str, Any]) -> TrackingEvent:
        event_type, bounce_kind = EVENT_TYPES.get(kind, (EventType.UNKNOWN, None))
        reason = str(item.get("reason") or "").strip()
        if kind in PROXY_OPENS:
            reason = "opened through a privacy proxy"
        link = item.get("link")
        return TrackingEvent(
            event_type=event_type,
            provider_event_type=kind,
            provider_message_id=message_id(item.get("message-id")),
            notification_id=_notification_id(item.get(CUSTOM_DATA_FIELD)),
            recipient=str(item["email"]) if item.get("email") else None,
            occurred_at=_occurred_at(item),
            event_id=payload_digest(item),
            bounce_kind=bounce_kind,
            url=str(link) if event_type == EventType.CLICKED and link else None,
            description=reason or None,
            payload=item,
        )


def message_id(value: Any) -> str | None:
    """Brevo's message id in the form its send API returns (and our adapter stores): in
    angle brackets (events carry it with or without)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    return text if text.startswith("<") and text.endswith(">") else f"<{text.strip('<>')}>"


def _notification_id(custom: Any) -> int | None:
    """Our id from the ``X-Mailin-custom`` JSON the adapter set (other senders' strings are
    ignored)."""
    if isinstance(custom, dict):
        return parse_notification_id(custom.get("crm_notify_id"))
    if not isinstance(custom, str):
        return None
    try:
        data = json.loads(custom)
    except ValueError:
        return None
    return parse_notification_id(data.get("crm_notify_id")) if isinstance(data, dict) else None


def _occurred_at(item: dict[str, Any]) -> datetime | None:
    """``ts_epoch`` (UTC, milliseconds), else ``ts_event`` (UTC, seconds). ``date`` and ``ts``
    are in the account's time zone and not used."""
    for field, divisor in (("ts_epoch", None), ("ts_event", 1)):
        value = item.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        scale = divisor or (1000 if value >= _MILLISECONDS_FROM else 1)
        try:
            return datetime.fromtimestamp(value / scale, tz=UTC)
        except (OverflowError, OSError, ValueError):
            continue
    return None
