"""SendGrid's Event Webhook, signed (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event,
https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features).

- The body is a JSON array of events, one per recipient and event, batched;
- each event has ``event``, ``email``, ``timestamp`` (Unix seconds), ``sg_event_id`` (unique:
  our event id), ``sg_message_id`` (``<X-Message-Id>.filter...``: the part before the filter
  suffix is what the adapter stored from the ``X-Message-Id`` answer header), and our
  ``custom_args`` as top-level keys (``crm_notify_id``);
- the Signed Event Webhook signs ``timestamp + raw body`` with ECDSA P-256 / SHA-256: the
  base64 DER signature is in ``X-Twilio-Email-Event-Webhook-Signature``, the timestamp in
  ``X-Twilio-Email-Event-Webhook-Timestamp``; the verification key is shown (base64 DER
  SubjectPublicKeyInfo) in the console under Mail Settings > Event Webhook.

``bounce`` events have ``type`` ``bounce`` (permanent: SendGrid suppresses the address) or
``blocked`` (the message was refused, not the address: SendGrid does not suppress), and a
``bounce_classification``. Only ``type: bounce`` is hard: a bounce without a ``type``, or with
one we do not know, is soft (the type is kept in the description).

One item of a batch that is not an event object (not an object, or no ``event``) is stored as
an unknown event (``malformed``) rather than refusing the whole batch, which SendGrid would
retry, events and all.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crm_notify.config import ENV_PREFIX, Settings
from crm_notify.errors import ConfigurationError
from crm_notify.webhooks.base import EspWebhook, WebhookRequest
from crm_notify.webhooks.events import (
    BounceKind,
    EventType,
    TrackingEvent,
    malformed_event,
    parse_notification_id,
    payload_digest,
    text_or_none,
    unix_time,
)

#: The header holding the base64 ECDSA signature.
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
#: The header holding the signed Unix timestamp.
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
#: The setting holding the verification key.
KEY_SETTING = "sendgrid_webhook_public_key"
#: SendGrid's ``event`` -> our type (``bounce`` is refined by its ``type``).
EVENT_TYPES = {
    "processed": EventType.QUEUED,
    "deferred": EventType.DEFERRED,
    "delivered": EventType.DELIVERED,
    "dropped": EventType.REJECTED,
    "bounce": EventType.BOUNCED,
    "open": EventType.OPENED,
    "click": EventType.CLICKED,
    "spamreport": EventType.COMPLAINED,
    "unsubscribe": EventType.UNSUBSCRIBED,
    "group_unsubscribe": EventType.UNSUBSCRIBED,
}
#: Bounce ``type`` -> kind: ``blocked`` is a refusal of the message, not of the address; any
#: other (or no) type is soft too: only ``bounce`` condemns the address.
BOUNCE_KINDS = {"bounce": BounceKind.HARD, "blocked": BounceKind.SOFT}
#: Where the ``X-Message-Id`` part of an ``sg_message_id`` ends.
_MESSAGE_ID_SUFFIX = re.compile(r"\.(?:filter|recvd)")


class SendGridWebhook(EspWebhook):
    """SendGrid's signed Event Webhook.

    Parameters:
        public_key: the Signed Event Webhook verification key.
        tolerance_s: see :class:`~crm_notify.webhooks.base.EspWebhook`.
    """

    provider = "sendgrid"
    secret_settings = (KEY_SETTING,)

    def __init__(self, *, public_key: ec.EllipticCurvePublicKey, tolerance_s: float = 300.0):
        super().__init__(tolerance_s=tolerance_s)
        self.public_key = public_key

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """The webhook with ``CRM_NOTIFY_SENDGRID_WEBHOOK_PUBLIC_KEY``, or ``None`` unset.

        Raises:
            ConfigurationError: the key is not a base64 (or PEM) ECDSA P-256 public key.
        """
        text = (settings.sendgrid_webhook_public_key or "").strip()
        if not text:
            return None
        return cls(public_key=load_public_key(text), tolerance_s=settings.webhook_tolerance_s)

    def validate_request(self, request: WebhookRequest) -> None:
        """Check the ECDSA signature of ``timestamp + body`` and the timestamp's age.

        Raises:
            WebhookAuthError: headers missing (401), signature wrong or timestamp too old (403).
        """
        signature = (request.header(SIGNATURE_HEADER) or "").strip()
        timestamp = (request.header(TIMESTAMP_HEADER) or "").strip()
        if not signature or not timestamp:
            raise self.auth_error(
                f"{SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required (turn on the Signed "
                "Event Webhook in SendGrid's Mail Settings)",
                missing=True,
            )
        try:
            der = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.auth_error(f"{SIGNATURE_HEADER} is not base64") from exc
        try:
            self.public_key.verify(
                der, timestamp.encode("utf-8") + request.body, ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature as exc:
            raise self.auth_error(
                f"wrong signature (is {ENV_PREFIX}{KEY_SETTING.upper()} the key SendGrid shows?)"
            ) from exc
        self.check_timestamp(timestamp)

    def parse_events(self, request: WebhookRequest) -> list[TrackingEvent]:
        """The events of the batch, in order.

        Items that are not event objects become ``unknown`` events (``malformed``).

        Raises:
            WebhookPayloadError: the body is not a JSON array.
        """
        batch = request.json(self.provider)
        if not isinstance(batch, list):
            raise self.payload_error("the body must be a JSON array of events")
        return [
            self._event(raw)
            if isinstance(raw, dict) and isinstance(raw.get("event"), str) and raw["event"]
            else malformed_event(raw)
            for raw in batch
        ]

    def _event(self, raw: dict[str, Any]) -> TrackingEvent:
        name = raw["event"]
        event_type = EVENT_TYPES.get(name, EventType.UNKNOWN)
        bounce_kind = None
        description = text_or_none(raw.get("reason")) or text_or_none(raw.get("response"))
        provider_type = name
        if event_type == EventType.BOUNCED:
            bounce_type = text_or_none(raw.get("type"))
            bounce_kind = BOUNCE_KINDS.get(bounce_type or "", BounceKind.SOFT)
            provider_type = f"bounce/{bounce_type or 'untyped'}"
            parts = [
                f"type {bounce_type}" if bounce_type else "no type",
                text_or_none(raw.get("bounce_classification")),
                description,
            ]
            description = ": ".join(part for part in parts if part)
        return TrackingEvent(
            event_type=event_type,
            provider_event_type=provider_type,
            provider_message_id=provider_message_id(raw.get("sg_message_id")),
            notification_id=parse_notification_id(raw.get("crm_notify_id")),
            recipient=text_or_none(raw.get("email")),
            occurred_at=unix_time(raw.get("timestamp")),
            event_id=text_or_none(raw.get("sg_event_id")) or payload_digest(raw),
            bounce_kind=bounce_kind,
            url=text_or_none(raw.get("url")) if event_type == EventType.CLICKED else None,
            description=description,
            payload=raw,
        )


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key from SendGrid's base64 DER (or a PEM block).

    Raises:
        ConfigurationError: not an ECDSA P-256 public key (the variable is named).
    """
    variable = f"{ENV_PREFIX}{KEY_SETTING.upper()}"
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ConfigurationError(
            f"{variable}: not a public key: paste the verification key SendGrid shows under "
            "Mail Settings > Event Webhook > Signature Verification"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigurationError(f"{variable}: not an ECDSA P-256 public key")
    return key


def provider_message_id(value: Any) -> str | None:
    """The ``X-Message-Id`` part of an ``sg_message_id`` (what the adapter stored).

    ``"W1hMf3pUTgS6.filterdrecv-5645d9c87f-78xgx-1-5ECC5A42-1F.0"`` -> ``"W1hMf3pUTgS6"``;
    old ids held dots themselves (``"14c5d75ce93.dfd.64b469.filter0001.16648..."``), so the
    cut is at the ``.filter`` / ``.recvd`` suffix, else at the first dot.
    """
    text = text_or_none(value)
    if not text:
        return None
    match = _MESSAGE_ID_SUFFIX.search(text)
    return (text[: match.start()] if match else text.split(".", 1)[0]) or None
