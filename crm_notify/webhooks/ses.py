"""Amazon SES tracking events, delivered by Amazon SNS.

SES publishes the events of a configuration set (or an identity's feedback notifications)
to an SNS topic; an HTTPS subscription of that topic posts here. Contract
(https://docs.aws.amazon.com/sns/latest/dg/sns-message-and-json-formats.html,
https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html):

- the body is an SNS envelope (JSON, sent as ``text/plain``): ``Type`` ``Notification``,
  ``SubscriptionConfirmation`` or ``UnsubscribeConfirmation``, signed by SNS
  (:mod:`crm_notify.webhooks._sns`); ``TopicArn`` must be one of
  ``CRM_NOTIFY_SES_WEBHOOK_TOPIC_ARNS``. The signed ``Timestamp`` is *not* checked against
  ``CRM_NOTIFY_WEBHOOK_TOLERANCE_S``: SNS keeps the original ``Timestamp`` on every retry (for
  up to an hour with a delivery policy) and does not retry a 4xx answer, so an age check would
  lose the events of an outage for good. The signature covers the message and its
  ``MessageId`` identifies replays (a replayed message is a duplicate and changes nothing);
- a ``SubscriptionConfirmation`` is confirmed by fetching its ``SubscribeURL`` (on an allowed
  SNS host); it carries no events;
- a ``Notification``'s ``Message`` is a JSON *string* holding one SES event: ``eventType``
  (``notificationType`` for identity feedback notifications), ``mail`` (``messageId`` as
  ``SendEmail`` returned it, ``destination``, ``tags`` with our ``crm_notify_id``) and an
  object per type. A bounce, complaint, delivery or delay names its recipients; every other
  type concerns all of ``mail.destination``: one event per recipient. A ``Complaint`` whose
  ``complaintFeedbackType`` is ``not-spam`` (the recipient took it *out* of spam) is stored as
  unknown: it suppresses nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Self

import httpx

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError, WebhookUnavailableError
from crm_notify.webhooks import _sns
from crm_notify.webhooks.base import EspWebhook, WebhookRequest
from crm_notify.webhooks.events import (
    BounceKind,
    EventType,
    TrackingEvent,
    parse_notification_id,
)

logger = logging.getLogger(__name__)

#: SES event type -> our type (``Bounce`` and ``Subscription`` are refined below).
EVENT_TYPES: dict[str, EventType] = {
    "Send": EventType.SENT,
    "Delivery": EventType.DELIVERED,
    "DeliveryDelay": EventType.DEFERRED,
    "Bounce": EventType.BOUNCED,
    "Reject": EventType.REJECTED,
    "Rendering Failure": EventType.REJECTED,
    "Open": EventType.OPENED,
    "Click": EventType.CLICKED,
    "Complaint": EventType.COMPLAINED,
    "Subscription": EventType.UNSUBSCRIBED,
}
#: The object holding the details of each type, and the list of recipients in it (if any).
DETAILS: dict[str, tuple[str, str | None]] = {
    "Bounce": ("bounce", "bouncedRecipients"),
    "Complaint": ("complaint", "complainedRecipients"),
    "Delivery": ("delivery", "recipients"),
    "DeliveryDelay": ("deliveryDelay", "delayedRecipients"),
    "Send": ("send", None),
    "Reject": ("reject", None),
    "Open": ("open", None),
    "Click": ("click", None),
    "Rendering Failure": ("failure", None),
    "Subscription": ("subscription", None),
}
#: The ``Message`` SES publishes once when an SNS topic is added as an event destination.
VALIDATION_MESSAGE = "Successfully validated SNS topic for Amazon SES event publishing."
#: The mail tag carrying our notification id (see the SES adapter's ``EmailTags``).
ID_TAG = "crm_notify_id"
#: ``complaintFeedbackType`` of a feedback report that is no complaint (marked "not spam").
NOT_SPAM = "not-spam"


class SesWebhook(EspWebhook):
    """Amazon SES events from an SNS HTTPS subscription.

    Parameters:
        topic_arns: the SNS topics accepted.
        certificate_hosts: where signing certificates and confirmation URLs may be.
        tolerance_s: not used: SNS messages are accepted whatever their age (see the module
            docstring).
    """

    provider = "ses"
    secret_settings = ("ses_webhook_topic_arns",)

    def __init__(
        self,
        *,
        topic_arns: Collection[str],
        certificate_hosts: _sns.HostPolicy,
        tolerance_s: float = 300.0,
    ) -> None:
        super().__init__(tolerance_s=tolerance_s)
        self.topic_arns = frozenset(topic_arns)
        self.certificates = _sns.CertificateStore(hosts=certificate_hosts)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """From ``ses_webhook_topic_arns`` and ``sns_certificate_hosts``.

        Raises:
            ConfigurationError: a topic that is no SNS ARN, or bad host patterns.
        """
        arns = [a.strip() for a in (settings.ses_webhook_topic_arns or "").split(",") if a.strip()]
        if not arns:
            return None
        for arn in arns:
            parts = arn.split(":")
            if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sns":
                raise ConfigurationError(
                    f"CRM_NOTIFY_SES_WEBHOOK_TOPIC_ARNS: {arn!r} is not an SNS topic ARN "
                    "(arn:aws:sns:REGION:ACCOUNT:TOPIC)"
                )
        try:
            hosts = _sns.HostPolicy.parse(settings.sns_certificate_hosts)
        except ValueError as exc:
            raise ConfigurationError(f"CRM_NOTIFY_SNS_CERTIFICATE_HOSTS: {exc}") from exc
        return cls(topic_arns=arns, certificate_hosts=hosts)

    def validate_request(self, request: WebhookRequest) -> None:
        """A signed SNS message of an accepted topic (of any age: retries keep the
        original ``Timestamp``)."""
        envelope = self._envelope(request)
        header_type = request.header("x-amz-sns-message-type")
        if header_type is not None and header_type != envelope.get("Type"):
            raise self.auth_error("x-amz-sns-message-type does not match the body's Type")
        if not envelope.get("Signature"):
            raise self.auth_error("the SNS message is not signed", missing=True)
        if envelope.get("TopicArn") not in self.topic_arns:
            raise self.auth_error(
                "the SNS topic is not accepted (CRM_NOTIFY_SES_WEBHOOK_TOPIC_ARNS)"
            )
        try:
            _sns.verify_message(envelope, self.certificates)
        except _sns.SnsSignatureError as exc:
            raise self.auth_error(str(exc), missing=exc.missing) from exc
        except _sns.SnsUnavailableError as exc:
            raise WebhookUnavailableError(self.provider, str(exc)) from exc

    def parse_events(self, request: WebhookRequest) -> list[TrackingEvent]:
        """The events of a ``Notification``; a ``SubscriptionConfirmation`` is confirmed
        (and has none)."""
        envelope = self._envelope(request)
        kind = envelope.get("Type")
        if kind == "SubscriptionConfirmation":
            self._confirm(envelope)
            return []
        if kind != "Notification":
            logger.info("ses webhook: SNS %s received for the topic", kind)
            return []
        text = envelope.get("Message")
        if text == VALIDATION_MESSAGE:
            return []
        try:
            ses_event = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            ses_event = None
        if not isinstance(ses_event, dict):
            raise self.payload_error("the SNS Message is not a JSON object (an SES event)")
        return self._events(ses_event, envelope)

    def _envelope(self, request: WebhookRequest) -> dict[str, Any]:
        envelope = request.json(self.provider)
        if not isinstance(envelope, dict):
            raise self.payload_error("the body is not an SNS message (a JSON object)")
        if envelope.get("Type") not in _sns.SIGNED_FIELDS:
            raise self.payload_error(f"Type must be one of {', '.join(_sns.SIGNED_FIELDS)}")
        return envelope

    def _confirm(self, envelope: Mapping[str, Any]) -> None:
        url = str(envelope.get("SubscribeURL") or "")
        if not self.certificates.hosts.allows(url):
            raise self.auth_error(
                "the SubscribeURL is not on an allowed SNS host (CRM_NOTIFY_SNS_CERTIFICATE_HOSTS)"
            )
        try:
            response = httpx.get(url, timeout=_sns.FETCH_TIMEOUT_S, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise WebhookUnavailableError(
                self.provider, f"confirming the subscription failed ({type(exc).__name__})"
            ) from exc
        if response.status_code != 200:
            raise WebhookUnavailableError(
                self.provider,
                f"confirming the subscription failed: SNS answered HTTP {response.status_code}",
            )
        logger.info("ses webhook: SNS subscription confirmed for %s", envelope.get("TopicArn"))

    def _events(
        self, ses_event: dict[str, Any], envelope: Mapping[str, Any]
    ) -> list[TrackingEvent]:
        kind = str(ses_event.get("eventType") or ses_event.get("notificationType") or "")
        mail = _object(ses_event.get("mail"))
        detail_name, recipients_field = DETAILS.get(kind, ("", None))
        detail = _object(ses_event.get(detail_name)) if detail_name else {}
        event_type = EVENT_TYPES.get(kind, EventType.UNKNOWN)
        bounce_kind: BounceKind | None = None
        if kind == "Bounce":
            permanent = detail.get("bounceType") == "Permanent"
            bounce_kind = BounceKind.HARD if permanent else BounceKind.SOFT
        if kind == "Subscription" and not _unsubscribed(detail):
            event_type = EventType.UNKNOWN
        if kind == "Complaint" and detail.get("complaintFeedbackType") == NOT_SPAM:
            event_type = EventType.UNKNOWN
        recipients: list[tuple[str | None, Mapping[str, Any]]]
        if recipients_field is not None:
            recipients = [_recipient(item) for item in _list(detail.get(recipients_field))]
        else:
            recipients = [(str(a), {}) for a in _list(mail.get("destination")) if a]
        if not recipients:
            recipients = [(None, {})]
        tags = _object(mail.get("tags"))
        id_values = _list(tags.get(ID_TAG))
        occurred_at = _parse_time(detail.get("timestamp")) or _parse_time(envelope.get("Timestamp"))
        base_id = str(envelope.get("MessageId") or "")
        return [
            TrackingEvent(
                event_type=event_type,
                provider_event_type=kind or "unknown",
                provider_message_id=str(mail["messageId"]) if mail.get("messageId") else None,
                notification_id=parse_notification_id(id_values[0] if id_values else None),
                recipient=address,
                occurred_at=occurred_at,
                event_id=f"{base_id}:{index}",
                bounce_kind=bounce_kind,
                url=str(detail["link"]) if kind == "Click" and detail.get("link") else None,
                description=_description(kind, detail, extra),
                payload=ses_event,
            )
            for index, (address, extra) in enumerate(recipients)
        ]


def _recipient(item: Any) -> tuple[str | None, Mapping[str, Any]]:
    """A recipient entry: a bare address (``delivery.recipients``) or an object with
    ``emailAddress`` and its own diagnostics."""
    if isinstance(item, dict):
        address = item.get("emailAddress")
        return (str(address) if address else None), item
    return (str(item) if item else None), {}


def _description(kind: str, detail: Mapping[str, Any], recipient: Mapping[str, Any]) -> str | None:
    """The provider's words about the event, for the status history."""
    parts: list[str] = []
    if kind == "Bounce":
        parts.append(f"{detail.get('bounceType', '')}/{detail.get('bounceSubType', '')}")
    elif kind == "DeliveryDelay":
        parts.append(str(detail.get("delayType") or ""))
    elif kind == "Complaint":
        parts.append(
            str(detail.get("complaintFeedbackType") or detail.get("complaintSubType") or "")
        )
    elif kind == "Delivery":
        parts.append(str(detail.get("smtpResponse") or ""))
    elif kind == "Reject":
        parts.append(str(detail.get("reason") or ""))
    elif kind == "Rendering Failure":
        parts.append(str(detail.get("errorMessage") or ""))
    elif kind == "Subscription":
        parts.append(str(detail.get("source") or ""))
    parts.append(str(recipient.get("diagnosticCode") or ""))
    text = ": ".join(part for part in parts if part and part != "/")
    return text or None


def _unsubscribed(subscription: Mapping[str, Any]) -> bool:
    """Whether a ``Subscription`` event withdraws something: everything, or a topic that
    was not opted out before."""
    new = _object(subscription.get("newTopicPreferences"))
    if new.get("unsubscribeAll") is True:
        return True
    old = _object(subscription.get("oldTopicPreferences"))
    before = {
        str(t.get("topicName")): t.get("subscriptionStatus")
        for t in _list(old.get("topicSubscriptionStatus"))
        if isinstance(t, dict)
    }
    return any(
        isinstance(t, dict)
        and t.get("subscriptionStatus") == "OptOut"
        and before.get(str(t.get("topicName"))) != "OptOut"
        for t in _list(new.get("topicSubscriptionStatus"))
    )


def _parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp of SNS or SES (``2017-08-05T00:41:02.669Z``) as aware UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
