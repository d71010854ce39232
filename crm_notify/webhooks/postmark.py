"""Postmark's webhooks (https://postmarkapp.com/developer/webhooks/webhooks-overview, the pages
of each webhook, and the bounce types of https://postmarkapp.com/developer/api/bounce-api).

- One event per call, a JSON object whose ``RecordType`` says what it is: ``Delivery``,
  ``Bounce``, ``SpamComplaint``, ``Open``, ``Click``, ``SubscriptionChange``;
- ``MessageID`` is the id the send API answered (what the adapter stored), ``Metadata`` echoes
  ours (``crm_notify_id``), the recipient is ``Email`` (bounces, complaints) or ``Recipient``;
  the time is ``DeliveredAt`` / ``BouncedAt`` / ``ReceivedAt`` / ``ChangedAt`` (ISO 8601);
- bounces and complaints have a numeric ``ID`` (our event id); other records have none, so
  their payload's digest is used;
- Postmark does not sign its calls: the webhook URL carries HTTP Basic credentials
  (``https://user:password@host/v1/webhooks/esp/postmark``) that Postmark sends in the
  ``Authorization`` header.

``Bounce`` records are refined by their ``Type`` (:data:`BOUNCE_TYPES`): hard for
``HardBounce`` and ``BadEmailAddress`` (Postmark deactivates the address), soft for the
others that are refusals, deferred for delays (``Transient``, ``DnsError``); types that are
not delivery failures (auto-responders, challenge mails) are stored as unknown.

A ``SubscriptionChange`` that suppresses sending with ``SuppressionReason``
``ManualSuppression`` is the recipient's unsubscribe only when its ``Origin`` is
``Recipient``; a suppression the sender made (``Customer``: the UI or API) or Postmark's staff
made (``Admin``) says nothing about the recipient's consent and is stored as unknown, as is a
suppression for a reason we do not know.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from crm_notify.clock import as_utc
from crm_notify.config import ENV_PREFIX, Settings
from crm_notify.errors import ConfigurationError
from crm_notify.webhooks.base import EspWebhook, WebhookRequest, secret_value
from crm_notify.webhooks.events import (
    BounceKind,
    EventType,
    TrackingEvent,
    parse_notification_id,
    payload_digest,
    text_or_none,
)

#: The setting holding ``user:password``.
AUTH_SETTING = "postmark_webhook_auth"
#: ``RecordType`` -> our type (``Bounce`` and ``SubscriptionChange`` are refined).
RECORD_TYPES = {
    "Delivery": EventType.DELIVERED,
    "Bounce": EventType.BOUNCED,
    "SpamComplaint": EventType.COMPLAINED,
    "Open": EventType.OPENED,
    "Click": EventType.CLICKED,
    "SubscriptionChange": EventType.UNSUBSCRIBED,
}
#: Bounce ``Type`` -> our type and kind (Postmark's bounce type list).
BOUNCE_TYPES: dict[str, tuple[EventType, BounceKind | None]] = {
    "HardBounce": (EventType.BOUNCED, BounceKind.HARD),  # unknown user, mailbox not found
    "BadEmailAddress": (EventType.BOUNCED, BounceKind.HARD),  # not a valid address
    "SoftBounce": (EventType.BOUNCED, BounceKind.SOFT),  # mailbox full, account disabled
    "SpamNotification": (EventType.BOUNCED, BounceKind.SOFT),  # classified as spam, refused
    "VirusNotification": (EventType.BOUNCED, BounceKind.SOFT),
    "Blocked": (EventType.BOUNCED, BounceKind.SOFT),  # ISP block (content, blacklist)
    "DMARCPolicy": (EventType.BOUNCED, BounceKind.SOFT),
    "Unknown": (EventType.BOUNCED, BounceKind.SOFT),  # an NDR Postmark could not classify
    "Transient": (EventType.DEFERRED, None),  # message delayed
    "DnsError": (EventType.DEFERRED, None),  # a temporary DNS error
    "ManuallyDeactivated": (EventType.REJECTED, None),
    "Unconfirmed": (EventType.REJECTED, None),
    "SMTPApiError": (EventType.REJECTED, None),
    "TemplateRenderingFailed": (EventType.REJECTED, None),
    "SpamComplaint": (EventType.COMPLAINED, None),
    "Unsubscribe": (EventType.UNSUBSCRIBED, None),  # an unsubscribe request by reply
}
#: Bounce ``TypeCode`` -> ``Type``, for records without the name.
BOUNCE_TYPE_CODES = {
    1: "HardBounce",
    2: "Transient",
    16: "Unsubscribe",
    32: "Subscribe",
    64: "AutoResponder",
    128: "AddressChange",
    256: "DnsError",
    512: "SpamNotification",
    1024: "OpenRelayTest",
    2048: "Unknown",
    4096: "SoftBounce",
    8192: "VirusNotification",
    16384: "ChallengeVerification",
    100000: "BadEmailAddress",
    100001: "SpamComplaint",
    100002: "ManuallyDeactivated",
    100003: "Unconfirmed",
    100006: "Blocked",
    100007: "SMTPApiError",
    100008: "InboundError",
    100009: "DMARCPolicy",
}
#: ``SuppressionReason`` of a suppressing subscription change -> our type and kind
#: (``ManualSuppression`` only when the recipient made it: :data:`RECIPIENT_ORIGIN`).
SUPPRESSION_REASONS: dict[str, tuple[EventType, BounceKind | None]] = {
    "HardBounce": (EventType.BOUNCED, BounceKind.HARD),
    "SpamComplaint": (EventType.COMPLAINED, None),
    "ManualSuppression": (EventType.UNSUBSCRIBED, None),  # the recipient's unsubscribe
}
#: The ``Origin`` of a suppression the recipient made (others: ``Customer``, ``Admin``).
RECIPIENT_ORIGIN = "Recipient"
#: Fields holding the time of each record type, tried in order.
TIME_FIELDS = ("DeliveredAt", "BouncedAt", "ReceivedAt", "ChangedAt")


class PostmarkWebhook(EspWebhook):
    """Postmark's webhooks, authenticated by HTTP Basic credentials.

    Parameters:
        credentials: ``user:password`` as put in the webhook URL in Postmark.
    """

    provider = "postmark"
    secret_settings = (AUTH_SETTING,)

    def __init__(self, *, credentials: str, tolerance_s: float = 300.0) -> None:
        super().__init__(tolerance_s=tolerance_s)
        self._credentials = credentials

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """The webhook with ``CRM_NOTIFY_POSTMARK_WEBHOOK_AUTH``, or ``None`` when unset.

        Raises:
            ConfigurationError: the value is not ``user:password``.
        """
        credentials = secret_value(settings.postmark_webhook_auth)
        if credentials is None:
            return None
        user, colon, password = credentials.partition(":")
        if not colon or not user or not password:
            raise ConfigurationError(
                f"{ENV_PREFIX}{AUTH_SETTING.upper()}: must be user:password (the credentials "
                "of the webhook URL https://user:password@host/v1/webhooks/esp/postmark)"
            )
        return cls(credentials=credentials, tolerance_s=settings.webhook_tolerance_s)

    def validate_request(self, request: WebhookRequest) -> None:
        """Require the configured HTTP Basic credentials.

        Raises:
            WebhookAuthError: none sent (401) or wrong ones (403).
        """
        self.check_basic_auth(request, self._credentials)

    def parse_events(self, request: WebhookRequest) -> list[TrackingEvent]:
        """The one record of the call.

        Raises:
            WebhookPayloadError: not a JSON object, or an inbound message (wrong webhook).
        """
        record = request.json(self.provider)
        if not isinstance(record, dict):
            raise self.payload_error("the body must be a JSON object (one record per call)")
        if "RecordType" not in record and "FromFull" in record:
            raise self.payload_error(
                "this is an inbound message: point Postmark's inbound webhook elsewhere"
            )
        if not isinstance(record.get("RecordType"), str):
            raise self.payload_error("RecordType: required, a string")
        return [self._event(record)]

    def _event(self, record: dict[str, Any]) -> TrackingEvent:
        record_type = record["RecordType"]
        event_type = RECORD_TYPES.get(record_type, EventType.UNKNOWN)
        provider_type = record_type
        bounce_kind: BounceKind | None = None
        description = text_or_none(record.get("Details"))
        if record_type == "Bounce":
            bounce_type = _bounce_type(record)
            provider_type = f"Bounce/{bounce_type}"
            event_type, bounce_kind = BOUNCE_TYPES.get(bounce_type, (EventType.UNKNOWN, None))
            parts = [text_or_none(record.get("Description")), text_or_none(record.get("Details"))]
            description = " ".join(part for part in parts if part) or None
        elif record_type == "SubscriptionChange":
            reason = str(record.get("SuppressionReason") or "")
            origin = str(record.get("Origin") or "")
            description = f"{reason} ({origin})" if origin else reason or None
            if record.get("SuppressSending") is True:
                provider_type = f"SubscriptionChange/{reason or 'suppressed'}"
                event_type, bounce_kind = SUPPRESSION_REASONS.get(reason, (EventType.UNKNOWN, None))
                if reason == "ManualSuppression" and origin != RECIPIENT_ORIGIN:
                    event_type = EventType.UNKNOWN
            else:  # reactivated: we have no type for a resubscribe
                provider_type, event_type = "SubscriptionChange/reactivated", EventType.UNKNOWN
        metadata = record.get("Metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        bounce_id = record.get("ID")
        return TrackingEvent(
            event_type=event_type,
            provider_event_type=provider_type,
            provider_message_id=text_or_none(record.get("MessageID")),
            notification_id=parse_notification_id(metadata.get("crm_notify_id")),
            recipient=text_or_none(record.get("Email")) or text_or_none(record.get("Recipient")),
            occurred_at=_occurred_at(record),
            event_id=(
                f"bounce-{bounce_id}"
                if record_type in ("Bounce", "SpamComplaint") and bounce_id not in (None, "")
                else payload_digest(record)
            ),
            bounce_kind=bounce_kind,
            url=text_or_none(record.get("OriginalLink"))
            if event_type == EventType.CLICKED
            else None,
            description=description,
            payload=record,
        )


def _bounce_type(record: dict[str, Any]) -> str:
    name = record.get("Type")
    if isinstance(name, str) and name:
        return name
    code = record.get("TypeCode")
    return BOUNCE_TYPE_CODES.get(code, "Unknown") if isinstance(code, int) else "Unknown"


def _occurred_at(record: dict[str, Any]) -> datetime | None:
    for name in TIME_FIELDS:
        value = record.get(name)
        if isinstance(value, str) and value:
            try:
                return as_utc(datetime.fromisoformat(value))
            except ValueError:
                return None
    return None
