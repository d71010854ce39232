"""The SendGrid adapter: Twilio SendGrid's v3 Mail Send API.

Contract (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send,
https://www.twilio.com/docs/sendgrid/for-developers/sending-email/personalizations):

- ``POST /v3/mail/send`` on ``https://api.sendgrid.com`` (``https://api.eu.sendgrid.com`` for
  EU regional subusers), ``Authorization: Bearer <API key>``, a JSON body;
- ``personalizations[0].to`` holds the recipients, ``from`` / ``reply_to`` are
  ``{"email", "name"}`` objects, ``content`` lists ``text/plain`` before ``text/html``;
- ``headers`` carries our own headers (``Message-ID``, ``List-Unsubscribe``,
  ``List-Unsubscribe-Post``, ``X-CRM-Notify-*``); it must not name the reserved ``x-sg-id``,
  ``x-sg-eid``, ``received``, ``dkim-signature``, ``Content-Type``,
  ``Content-Transfer-Encoding``, ``To``, ``From``, ``Subject``, ``Reply-To``, ``CC``, ``BCC``,
  and non-ASCII values must be encoded (RFC 2047 here);
- ``custom_args`` (string values, echoed in every Event Webhook event) carries our
  notification id and rule; ``categories`` (at most 10, each at most 255 characters) carries
  the rule, for SendGrid's per-category statistics;
- ``202 Accepted`` (``200`` in sandbox mode) with the message id in the ``X-Message-Id``
  response header (https://www.twilio.com/docs/sendgrid/glossary/x-message-id); errors are
  ``{"errors": [{"message", "field", "help"}]}`` with 400/401/403/413, 429 when rate limited
  (``X-RateLimit-Reset`` is a Unix time), 5xx for SendGrid's own failures
  (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors).

SendGrid has no idempotency key for Mail Send.
"""

from __future__ import annotations

import email.utils
import time
from email.message import EmailMessage
from typing import Any, Unpack

import httpx

from crm_notify.errors import ConfigurationError, EspPermanentError
from crm_notify.esp.http import (
    STRUCTURAL_HEADERS,
    ApiRequest,
    EspUrl,
    HttpApiAdapter,
    HttpOptions,
    address_list,
    header_value,
    text_body,
    timeout_option,
    tracking,
)

#: The Mail Send endpoint.
MAIL_SEND_PATH = "/v3/mail/send"
#: The API host of each ``region=`` option.
REGION_HOSTS = {"global": "https://api.sendgrid.com", "eu": "https://api.eu.sendgrid.com"}
#: Longest category name SendGrid accepts.
MAX_CATEGORY_CHARS = 255
#: Headers SendGrid refuses in ``headers`` or that the JSON fields already carry (lower case).
NOT_PASSED_HEADERS = STRUCTURAL_HEADERS | {
    "reply-to",
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
}


class SendGridAdapter(HttpApiAdapter):
    """Deliver through SendGrid's v3 Mail Send API.

    Parameters:
        api_key: a SendGrid API key with the ``mail.send`` scope.
        base_url, timeout_s, transport: see :class:`~crm_notify.esp.http.HttpApiAdapter`.
    """

    name = "sendgrid"
    default_base_url = REGION_HOSTS["global"]

    def __init__(
        self,
        *,
        api_key: str,
        **options: Unpack[HttpOptions],
    ) -> None:
        super().__init__(**options)
        self._api_key = api_key

    @classmethod
    def from_esp_url(cls, url: EspUrl) -> SendGridAdapter:
        """``sendgrid://API_KEY@[host[:port]][?region=eu][&timeout=SECONDS]``.

        Raises:
            ConfigurationError: no API key, an unknown region or a bad timeout.
        """
        if not url.key:
            raise ConfigurationError(
                "CRM_NOTIFY_ESP_URL: sendgrid needs an API key: sendgrid://API_KEY@"
            )
        region = url.options.get("region", "global").strip().lower()
        if region not in REGION_HOSTS:
            raise ConfigurationError(
                f"CRM_NOTIFY_ESP_URL: unknown sendgrid region {region!r} "
                f"(one of {', '.join(sorted(REGION_HOSTS))})"
            )
        return cls(
            api_key=url.key,
            base_url=url.base_url or REGION_HOSTS[region],
            timeout_s=timeout_option(url),
        )

    def _request(self, message: EmailMessage) -> ApiRequest:
        senders = address_list(message, "From")
        if not senders:
            raise EspPermanentError(self.name, "message has no From header")
        personalization: dict[str, Any] = {
            "to": [_email_object(a, quote_name=True) for a in address_list(message, "To")]
        }
        body: dict[str, Any] = {
            "personalizations": [personalization],
            "from": _email_object(senders[0]),
            "subject": str(message.get("Subject", "")),
            "content": _content(message),
        }
        reply_to = address_list(message, "Reply-To")
        if reply_to:
            body["reply_to"] = _email_object(reply_to[0])
        headers = {
            name: header_value(str(value))
            for name, value in message.items()
            if name.lower() not in NOT_PASSED_HEADERS
        }
        if headers:
            body["headers"] = headers
        custom_args = tracking(message)
        if "crm_notify_rule" in custom_args:
            body["categories"] = [custom_args["crm_notify_rule"][:MAX_CATEGORY_CHARS]]
        if custom_args:
            body["custom_args"] = custom_args
        return ApiRequest(
            method="POST",
            path=MAIL_SEND_PATH,
            headers={"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"},
            json=body,
        )

    def _message_id(self, response: httpx.Response, message: EmailMessage) -> str | None:
        value = response.headers.get("X-Message-Id")
        return str(value) if value else None

    def _classify(self, response: httpx.Response) -> None:
        """As the base, but a 429 without ``Retry-After`` waits until ``X-RateLimit-Reset``."""
        if response.status_code == 429 and "Retry-After" not in response.headers:
            raise self._transient(
                response,
                "provider answered 429",
                retry_after=_seconds_until(response.headers.get("X-RateLimit-Reset")),
            )
        super()._classify(response)


def _email_object(address: tuple[str, str], *, quote_name: bool = False) -> dict[str, str]:
    """SendGrid's ``{"email", "name"}``.

    SendGrid does not quote a name holding ``,`` or ``;`` in ``personalizations`` (see
    https://github.com/sendgrid/sendgrid-python/issues/291), so such a name is sent quoted.
    """
    name, addr = address
    obj = {"email": addr}
    if name:
        if quote_name and any(c in name for c in ",;"):
            name = '"' + email.utils.quote(name) + '"'
        obj["name"] = name
    return obj


def _content(message: EmailMessage) -> list[dict[str, str]]:
    """``text/plain`` then ``text/html``, as SendGrid requires that order."""
    content = []
    for subtype in ("plain", "html"):
        text = text_body(message, subtype)
        if text is not None:
            content.append({"type": f"text/{subtype}", "value": text})
    return content


def _seconds_until(reset: str | None) -> float | None:
    """Seconds until the Unix time ``reset`` (``X-RateLimit-Reset``), or ``None``."""
    if not reset or not reset.strip().isdigit():
        return None
    return max(float(reset) - time.time(), 0.0)
