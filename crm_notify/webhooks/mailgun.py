"""Mailgun's webhooks (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-payloads,
https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks,
https://documentation.mailgun.com/docs/mailgun/user-manual/events/event-types).

- One event per call: a JSON body ``{"signature": {"timestamp", "token", "signature"},
  "event-data": {...}}``; ``signature`` is the hex HMAC-SHA256 of ``timestamp + token`` with
  the domain's HTTP webhook signing key. Events of a subaccount's domain carry a
  ``parent-signature`` made with the primary account's key: either one may match.
- The signature covers ``timestamp + token`` only, not ``event-data``: a captured signed call
  could carry forged ``event-data``. Mailgun sends one event per call with a fresh random
  ``token``, so the token is the event id (as anymail does): any second use of a token is a
  duplicate and changes nothing, whatever its ``event-data``.
- ``event-data``: ``event``, ``timestamp`` (Unix seconds, fractional), ``id`` (unique only
  within a day), ``recipient``,
  ``message.headers.message-id`` (the id the send API answered, without angle brackets),
  ``user-variables`` (our ``v:crm_notify_id``; ``[]`` when there are none), ``severity`` and
  ``reason`` of ``failed`` events, ``delivery-status`` (SMTP code and message), ``url`` of
  ``clicked``.
- ``failed`` with ``severity: temporary`` is retried by Mailgun (deferred); ``permanent`` is a
  bounce: hard when the recipient's server refused the address (``reason`` ``bounce``) or it
  is on Mailgun's bounce list (``suppress-bounce``), soft otherwise (``old``: retries gave up;
  ``generic``, ``esp-block``: refused for other reasons); ``suppress-unsubscribe`` and
  ``suppress-complaint`` were not sent at all (rejected).

The legacy form-encoded webhooks (retired in 2023) are answered 406, which tells Mailgun not
to retry.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Self

from crm_notify.config import ENV_PREFIX, Settings
from crm_notify.webhooks.base import EspWebhook, WebhookRequest, secret_value
from crm_notify.webhooks.events import (
    BounceKind,
    EventType,
    TrackingEvent,
    parse_notification_id,
    text_or_none,
    unix_time,
)

#: Mailgun's ``event`` -> our type (``failed`` is refined by ``severity`` and ``reason``).
EVENT_TYPES = {
    "accepted": EventType.QUEUED,
    "rejected": EventType.REJECTED,
    "delivered": EventType.DELIVERED,
    "failed": EventType.BOUNCED,
    "opened": EventType.OPENED,
    "clicked": EventType.CLICKED,
    "unsubscribed": EventType.UNSUBSCRIBED,
    "complained": EventType.COMPLAINED,
}
#: Permanent-failure reasons that condemn the address (hard bounce, suppressed).
HARD_REASONS = frozenset({"bounce", "suppress-bounce"})
#: Permanent-failure reasons where Mailgun did not send because of an earlier opt-out.
NOT_SENT_REASONS = frozenset({"suppress-unsubscribe", "suppress-complaint"})
#: The answer that tells Mailgun a call is rejected and must not be retried.
DO_NOT_RETRY_STATUS = 406
#: Longest signature token used as it is in the event id (longer ones are hashed).
MAX_TOKEN_CHARS = 128


class MailgunWebhook(EspWebhook):
    """Mailgun's signed webhooks.

    Parameters:
        signing_key: the HTTP webhook signing key (Mailgun console: API Security).
        tolerance_s: see :class:`~crm_notify.webhooks.base.EspWebhook`.
    """

    provider = "mailgun"
    secret_settings = ("mailgun_webhook_signing_key",)

    def __init__(self, *, signing_key: str, tolerance_s: float = 300.0) -> None:
        super().__init__(tolerance_s=tolerance_s)
        self._key = signing_key.encode("utf-8")

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """The webhook with ``CRM_NOTIFY_MAILGUN_WEBHOOK_SIGNING_KEY``, or ``None`` unset."""
        key = secret_value(settings.mailgun_webhook_signing_key)
        if key is None:
            return None
        return cls(signing_key=key.strip(), tolerance_s=settings.webhook_tolerance_s)

    def validate_request(self, request: WebhookRequest) -> None:
        """Check the body's ``signature`` block (or ``parent-signature``) and its timestamp.

        Raises:
            WebhookPayloadError: the body is not a JSON object (406 for a legacy form webhook).
            WebhookAuthError: the block is missing (401), the signature is wrong or the
                timestamp too old (403).
        """
        block = self._body(request).get("signature")
        if not isinstance(block, dict) or not all(
            isinstance(block.get(name), str | int) for name in ("timestamp", "token", "signature")
        ):
            raise self.auth_error(
                "the body has no signature block (timestamp, token, signature)", missing=True
            )
        timestamp, token = str(block["timestamp"]), str(block["token"])
        expected = (
            hmac.new(self._key, f"{timestamp}{token}".encode(), hashlib.sha256)
            .hexdigest()
            .encode("ascii")
        )
        given = [block.get("signature"), block.get("parent-signature")]
        if not any(
            isinstance(value, str)
            and hmac.compare_digest(value.strip().lower().encode("utf-8"), expected)
            for value in given
        ):
            raise self.auth_error(
                f"wrong signature (is {ENV_PREFIX}MAILGUN_WEBHOOK_SIGNING_KEY the HTTP webhook "
                "signing key of this domain's account?)"
            )
        self.check_timestamp(timestamp)

    def parse_events(self, request: WebhookRequest) -> list[TrackingEvent]:
        """The one event of the call.

        Raises:
            WebhookPayloadError: ``event-data`` is missing or has no ``event``.
        """
        body = self._body(request)
        data = body.get("event-data")
        if not isinstance(data, dict) or not isinstance(data.get("event"), str):
            raise self.payload_error("event-data: required, an object with an 'event' field")
        return [self._event(data, token=str(body["signature"]["token"]))]

    def _body(self, request: WebhookRequest) -> dict[str, Any]:
        content_type = request.header("content-type") or ""
        if "json" not in content_type.lower() and not request.body.lstrip().startswith(b"{"):
            error = self.payload_error(
                "the body is not JSON: legacy (form-encoded) Mailgun webhooks are not "
                "supported; add the URL under Sending > Webhooks"
            )
            error.status_code = DO_NOT_RETRY_STATUS
            raise error
        body = request.json(self.provider)
        if not isinstance(body, dict):
            raise self.payload_error("the body must be a JSON object")
        return body

    def _event(self, data: dict[str, Any], *, token: str) -> TrackingEvent:
        name = data["event"]
        event_type = EVENT_TYPES.get(name, EventType.UNKNOWN)
        bounce_kind = None
        reason = str(data.get("reason") or "")
        status = _dig(data, "delivery-status")
        description = text_or_none(status.get("message")) or text_or_none(status.get("description"))
        if name == "failed":
            if data.get("severity") == "temporary":
                event_type = EventType.DEFERRED
            elif reason in NOT_SENT_REASONS:
                event_type, bounce_kind = EventType.REJECTED, BounceKind.HARD
            else:
                bounce_kind = BounceKind.HARD if reason in HARD_REASONS else BounceKind.SOFT
            if reason:
                description = f"{reason}: {description}" if description else reason
        elif name == "rejected":
            reject = _dig(data, "reject")
            description = text_or_none(reject.get("reason")) or text_or_none(
                reject.get("description")
            )
        variables = data.get("user-variables")
        variables = variables if isinstance(variables, dict) else {}
        headers = _dig(data, "message", "headers")
        return TrackingEvent(
            event_type=event_type,
            provider_event_type=f"failed/{reason}" if name == "failed" and reason else name,
            provider_message_id=_message_id(headers.get("message-id")),
            notification_id=parse_notification_id(variables.get("crm_notify_id")),
            recipient=text_or_none(data.get("recipient")),
            occurred_at=unix_time(data.get("timestamp")),
            event_id=_event_id(token),
            bounce_kind=bounce_kind,
            url=text_or_none(data.get("url")) if event_type == EventType.CLICKED else None,
            description=description,
            payload=data,
        )


def _event_id(token: str) -> str:
    """The event id of a call: its signature token (Mailgun's are 50 characters; a longer
    one is hashed so it fits the event key)."""
    if len(token) <= MAX_TOKEN_CHARS:
        return f"token:{token}"
    return "token-sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def _message_id(value: Any) -> str | None:
    """The message id as the adapter stores it: without angle brackets."""
    text = (text_or_none(value) or "").strip().strip("<>")
    return text or None


def _dig(data: dict[str, Any], *path: str) -> dict[str, Any]:
    for name in path:
        value = data.get(name)
        if not isinstance(value, dict):
            return {}
        data = value
    return data
