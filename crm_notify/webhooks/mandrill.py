"""Mailchimp Transactional (Mandrill) webhooks.

Contract (https://mailchimp.com/developer/transactional/docs/webhooks/,
https://mandrill.zendesk.com/hc/en-us/articles/360039232513-How-to-Authenticate-Webhook-Requests):

- ``POST`` ``application/x-www-form-urlencoded`` with one field, ``mandrill_events``: a JSON
  array (as text) of up to 1,000 events;
- ``X-Mandrill-Signature``: base64 of HMAC-SHA1 with the webhook's key over the webhook URL
  exactly as entered in Mandrill, followed by each POST field's name and value, fields sorted
  by name. There is no timestamp, so no age check;
- adding a webhook, Mandrill checks the URL with a ``HEAD`` request (see
  :mod:`crm_notify.webhooks.probe`), falling back to a ``POST`` of ``mandrill_events=[]``
  signed with the generic key ``test-webhook``: that empty call is answered 200 too;
- message events (``event``: ``send``, ``delivered``, ``deferral``, ``hard_bounce``,
  ``soft_bounce``, ``open``, ``click``, ``spam``, ``unsub``, ``reject``) carry ``_id`` (the
  message id ``messages/send`` returned), ``ts`` (Unix seconds), ``url`` (clicks) and ``msg``
  (``email``, ``metadata`` with our ``crm_notify_id``, ``bounce_description``, ``diag``,
  ``smtp_events``). Sync events (``type``: ``whitelist`` / ``blacklist``, ``action``,
  ``reject``) and inbound messages are stored as unknown. Mandrill has no event id: a digest
  of the message id, type, time and URL identifies replays.

An item that is not an event object (not an object, or neither ``event`` nor ``type``) is
stored as an unknown event (``malformed``) rather than refusing the whole batch; a body that is
not a form with ``mandrill_events`` holding a JSON array is refused (400). Errors never quote
the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, Self
from urllib.parse import urlsplit

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError, WebhookPayloadError
from crm_notify.webhooks.base import EspWebhook, WebhookRequest, secret_value
from crm_notify.webhooks.events import (
    BounceKind,
    EventType,
    TrackingEvent,
    malformed_event,
    parse_notification_id,
    payload_digest,
    unix_time,
)

#: Mandrill message event type -> our type and bounce kind.
EVENT_TYPES: dict[str, tuple[EventType, BounceKind | None]] = {
    "send": (EventType.SENT, None),
    "delivered": (EventType.DELIVERED, None),
    "deferral": (EventType.DEFERRED, None),
    "hard_bounce": (EventType.BOUNCED, BounceKind.HARD),
    "soft_bounce": (EventType.BOUNCED, BounceKind.SOFT),
    "open": (EventType.OPENED, None),
    "click": (EventType.CLICKED, None),
    "spam": (EventType.COMPLAINED, None),
    "unsub": (EventType.UNSUBSCRIBED, None),
    "reject": (EventType.REJECTED, None),
}
#: The form field holding the events.
EVENTS_FIELD = "mandrill_events"
#: Headers carrying the signature (Mailchimp also documents the newer name).
SIGNATURE_HEADERS = ("x-mandrill-signature", "x-mailchimp-signature")
#: The key Mandrill signs its empty test call with when the HEAD check of a new webhook fails.
TEST_KEY = "test-webhook"


class MandrillWebhook(EspWebhook):
    """Mandrill's signed webhook.

    Parameters:
        key: the webhook's authentication key (shown in Mandrill once the webhook exists).
        url: the webhook URL exactly as entered in Mandrill; ``None``: the URL called.
    """

    provider = "mandrill"
    secret_settings = ("mandrill_webhook_key",)

    def __init__(self, *, key: str, url: str | None = None, tolerance_s: float = 300.0) -> None:
        super().__init__(tolerance_s=tolerance_s)
        self._key = key.encode("utf-8")
        self.url = url

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """From ``mandrill_webhook_key`` and ``mandrill_webhook_url``.

        Raises:
            ConfigurationError: the URL is not an absolute http(s) URL.
        """
        key = secret_value(settings.mandrill_webhook_key)
        if key is None:
            return None
        url = (settings.mandrill_webhook_url or "").strip() or None
        if url is not None and (urlsplit(url).scheme not in {"http", "https"} or "//" not in url):
            raise ConfigurationError(
                "CRM_NOTIFY_MANDRILL_WEBHOOK_URL must be the absolute URL entered in Mandrill"
            )
        return cls(key=key, url=url, tolerance_s=settings.webhook_tolerance_s)

    def validate_request(self, request: WebhookRequest) -> None:
        """``X-Mandrill-Signature`` over the URL and the sorted form fields."""
        given = next((value for name in SIGNATURE_HEADERS if (value := request.header(name))), None)
        if not given:
            raise self.auth_error("the X-Mandrill-Signature header is missing", missing=True)
        fields = self._form(request)
        signed = (self.url or request.url) + "".join(
            name + values[-1] for name, values in sorted(fields.items())
        )
        signature = given.strip().encode("utf-8")
        if hmac.compare_digest(signature, _sign(self._key, signed)):
            return
        # The empty call that checks a new webhook is signed with Mandrill's generic key.
        if fields.get(EVENTS_FIELD, [""])[-1].strip() == "[]" and hmac.compare_digest(
            signature, _sign(TEST_KEY.encode(), signed)
        ):
            return
        raise self.auth_error(
            "the X-Mandrill-Signature does not match (check CRM_NOTIFY_MANDRILL_WEBHOOK_KEY "
            "and that CRM_NOTIFY_MANDRILL_WEBHOOK_URL is the URL exactly as entered in Mandrill)"
        )

    def parse_events(self, request: WebhookRequest) -> list[TrackingEvent]:
        """One event per element of ``mandrill_events``; an element that is not an event
        object becomes an ``unknown`` event (``malformed``).

        Raises:
            WebhookPayloadError: no ``mandrill_events`` field, or it is not a JSON array.
        """
        values = self._form(request).get(EVENTS_FIELD)
        if not values:
            raise self.payload_error(f"the form field {EVENTS_FIELD} is missing")
        try:
            items = json.loads(values[-1])
        except (ValueError, RecursionError) as exc:
            raise self.payload_error(f"{EVENTS_FIELD} is not JSON") from exc
        if not isinstance(items, list):
            raise self.payload_error(f"{EVENTS_FIELD} is not a JSON array")
        return [_event(item) if _is_event(item) else malformed_event(item) for item in items]

    def _form(self, request: WebhookRequest) -> dict[str, list[str]]:
        """The form fields, with an error that does not quote the body (the base's may)."""
        try:
            return request.form(self.provider)
        except WebhookPayloadError:
            # Not `from exc`: its message may quote the body (addresses), which must not reach
            # a log, not even as the cause.
            raise self.payload_error("the body is not form-encoded") from None


def _event(item: dict[str, Any]) -> TrackingEvent:
    msg = _object(item.get("msg"))
    kind = item.get("event")
    if isinstance(kind, str) and kind:
        event_type, bounce_kind = EVENT_TYPES.get(kind, (EventType.UNKNOWN, None))
        provider_type = kind
    else:  # a sync event: {"type": "blacklist", "action": "add", "reject": {...}}
        event_type, bounce_kind = EventType.UNKNOWN, None
        provider_type = ":".join(str(item.get(k)) for k in ("type", "action") if item.get(k))
    reject = _object(item.get("reject"))
    message_id = item.get("_id") or msg.get("_id")
    url = item.get("url") if event_type == EventType.CLICKED else None
    metadata = _object(msg.get("metadata"))
    recipient = msg.get("email") or reject.get("email")
    return TrackingEvent(
        event_type=event_type,
        provider_event_type=provider_type or "unknown",
        provider_message_id=str(message_id) if message_id else None,
        notification_id=parse_notification_id(metadata.get("crm_notify_id")),
        recipient=str(recipient) if recipient else None,
        occurred_at=unix_time(item.get("ts"), numbers_only=True),
        event_id=(
            payload_digest({"_id": message_id, "event": kind, "ts": item.get("ts"), "url": url})
            if message_id and kind
            else payload_digest(item)
        ),
        bounce_kind=bounce_kind,
        url=str(url) if url else None,
        description=_description(msg, reject),
        payload=item,
    )


def _is_event(item: Any) -> bool:
    """A message event (``event``) or a sync event (``type``)."""
    return isinstance(item, dict) and any(
        isinstance(item.get(name), str) and item.get(name) for name in ("event", "type")
    )


def _description(msg: dict[str, Any], reject: dict[str, Any]) -> str | None:
    """The bounce description and SMTP diagnostic, the last SMTP event of a deferral, or a
    sync event's reason."""
    parts = [str(msg.get(k) or "") for k in ("bounce_description", "diag")]
    smtp_events = msg.get("smtp_events")
    if not any(parts) and isinstance(smtp_events, list) and smtp_events:
        last = smtp_events[-1]
        parts.append(str(last.get("diag") or "") if isinstance(last, dict) else "")
    if not any(parts):
        parts.append(str(reject.get("detail") or reject.get("reason") or ""))
    text = ": ".join(part for part in parts if part)
    return text or None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _sign(key: bytes, text: str) -> bytes:
    return base64.b64encode(hmac.new(key, text.encode("utf-8"), hashlib.sha1).digest())
