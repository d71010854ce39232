"""The Brevo adapter: Brevo's API v3 transactional email (``sendTransacEmail``).

Contract (https://developers.brevo.com/reference/sendtransacemail,
https://developers.brevo.com/docs/send-a-transactional-email):

- ``POST /v3/smtp/email`` on ``https://api.brevo.com``, the key in the ``api-key`` header, a
  JSON body;
- ``sender``, ``to[]`` and ``replyTo`` are ``{"email", "name"}`` objects; ``subject``,
  ``htmlContent`` and ``textContent`` carry the message (one body is enough);
- ``headers`` carries custom headers only ("not the standard headers"; names are
  Title-Cased by Brevo): our ``List-Unsubscribe``, ``List-Unsubscribe-Post`` and
  ``X-CRM-Notify-*``, plus Brevo's own ``X-Mailin-custom`` (a string echoed in every webhook
  event; here JSON with our notification id and rule) and ``idempotencyKey``
  (https://developers.brevo.com/docs/heterogenous-versions-batch-emails: a UUID; a repeat
  within its 30-minute TTL is refused with the error code ``duplicate_parameter`` and not
  sent again). The ``Message-ID`` is Brevo's (standard headers are not passed); it comes back
  as ``messageId``;
- ``tags`` carries the rule name (echoed in webhook events as ``tags``);
- ``201 Created`` with ``{"messageId": "<...>"}``; errors are ``{"code", "message"}`` (400
  ``invalid_parameter`` / ``missing_parameter`` ..., 401 ``unauthorized``), 429 when rate
  limited, with ``x-sib-ratelimit-reset`` in seconds
  (https://developers.brevo.com/docs/limit-headers).

The idempotency key is derived from the message's ``Message-ID`` (which a stored
notification keeps across retries), so a retry after a timeout whose first request did reach
Brevo is answered ``duplicate_parameter``: that is reported as accepted (without Brevo's id),
never as a failure that a replay would send twice.
"""

from __future__ import annotations

import json
import logging
import uuid
from email.message import EmailMessage
from typing import Any, Unpack

import httpx

from crm_notify.errors import ConfigurationError, EspPermanentError
from crm_notify.esp.http import (
    ERROR_BODY_CHARS,
    STRUCTURAL_HEADERS,
    ApiRequest,
    EspUrl,
    HttpApiAdapter,
    HttpOptions,
    address_list,
    header_value,
    json_field,
    json_or_none,
    notification_id,
    retry_after_s,
    text_body,
    timeout_option,
    tracking,
)

logger = logging.getLogger(__name__)

#: The transactional email endpoint.
SEND_PATH = "/v3/smtp/email"
#: Headers not passed in ``headers``: standard ones, and those the JSON fields carry
#: (lower case).
NOT_PASSED_HEADERS = STRUCTURAL_HEADERS | {"reply-to", "message-id", "sender", "return-path"}
#: Brevo's header whose string value its webhooks echo back.
CUSTOM_DATA_HEADER = "X-Mailin-custom"
#: Brevo's header (in the JSON ``headers``) naming the request's idempotency key.
IDEMPOTENCY_HEADER = "idempotencyKey"
#: The error code of a request whose idempotency key was used within its TTL.
DUPLICATE_CODE = "duplicate_parameter"
#: Namespace of the idempotency keys derived from a Message-ID.
IDEMPOTENCY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:crm-notify:brevo:idempotency")


class BrevoAdapter(HttpApiAdapter):
    """Deliver through Brevo's transactional email API.

    Parameters:
        api_key: a Brevo API v3 key.
        base_url, timeout_s, transport: see :class:`~crm_notify.esp.http.HttpApiAdapter`.
    """

    name = "brevo"
    default_base_url = "https://api.brevo.com"

    def __init__(
        self,
        *,
        api_key: str,
        **options: Unpack[HttpOptions],
    ) -> None:
        super().__init__(**options)
        self._api_key = api_key

    @classmethod
    def from_esp_url(cls, url: EspUrl) -> BrevoAdapter:
        """``brevo://API_KEY@[host[:port]][?timeout=SECONDS]``.

        Raises:
            ConfigurationError: no API key or a bad timeout.
        """
        if not url.key:
            raise ConfigurationError("CRM_NOTIFY_ESP_URL: brevo needs an API key: brevo://API_KEY@")
        return cls(api_key=url.key, base_url=url.base_url, timeout_s=timeout_option(url))

    def _request(self, message: EmailMessage) -> ApiRequest:
        senders = address_list(message, "From")
        if not senders:
            raise EspPermanentError(self.name, "message has no From header")
        body: dict[str, Any] = {
            "sender": _email_object(senders[0]),
            "to": [_email_object(a) for a in address_list(message, "To")],
            "subject": str(message.get("Subject", "")),
        }
        reply_to = address_list(message, "Reply-To")
        if reply_to:
            body["replyTo"] = _email_object(reply_to[0])
        for subtype, field in (("html", "htmlContent"), ("plain", "textContent")):
            text = text_body(message, subtype)
            if text is not None:
                body[field] = text
        headers = {
            name: header_value(str(value))
            for name, value in message.items()
            if name.lower() not in NOT_PASSED_HEADERS
        }
        custom = tracking(message)
        if "crm_notify_rule" in custom:
            body["tags"] = [custom["crm_notify_rule"]]
        if custom:
            headers[CUSTOM_DATA_HEADER] = json.dumps(custom, separators=(",", ":"))
        headers[IDEMPOTENCY_HEADER] = idempotency_key(message)
        body["headers"] = headers
        return ApiRequest(
            method="POST",
            path=SEND_PATH,
            headers={"api-key": self._api_key, "Accept": "application/json"},
            json=body,
        )

    def _message_id(self, response: httpx.Response, message: EmailMessage) -> str | None:
        return json_field(response, "messageId")

    def _classify(self, response: httpx.Response) -> None:
        """As the base, except: a repeated idempotency key means the message was accepted
        before; a 429 without ``Retry-After`` waits ``x-sib-ratelimit-reset`` seconds."""
        status = response.status_code
        if status == 400:
            answer = json_or_none(response)
            if isinstance(answer, dict) and answer.get("code") == DUPLICATE_CODE:
                logger.warning(
                    "brevo: idempotency key already used, the message was accepted before: %s",
                    response.text[:ERROR_BODY_CHARS],
                )
                return
        if status == 429 and "Retry-After" not in response.headers:
            raise self._transient(
                response,
                "provider answered 429",
                retry_after=retry_after_s(response.headers.get("x-sib-ratelimit-reset")),
            )
        super()._classify(response)


def idempotency_key(message: EmailMessage) -> str:
    """A UUID stable across retries of ``message``: from its Message-ID, else our
    notification id, else a new random one."""
    seed = message.get("Message-ID") or (
        f"notification:{notification_id(message)}" if notification_id(message) else None
    )
    if seed is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, str(seed).strip()))


def _email_object(address: tuple[str, str]) -> dict[str, str]:
    name, addr = address
    return {"email": addr, "name": name} if name else {"email": addr}
