"""The Postmark adapter: Postmark's Email API (single message).

Contract (https://postmarkapp.com/developer/user-guide/send-email-with-api,
https://postmarkapp.com/developer/api/email-api, https://postmarkapp.com/developer/api/overview):

- ``POST /email`` on ``https://api.postmarkapp.com``, the server token in the
  ``X-Postmark-Server-Token`` header, ``Accept: application/json``, a JSON body;
- ``From``, ``To`` and ``ReplyTo`` are address strings (``Name <addr>``), ``Subject``,
  ``TextBody`` and ``HtmlBody`` the message, ``MessageStream`` the stream (``outbound``, the
  default transactional stream, unless ``?stream=`` names another);
- ``Headers`` is a list of ``{"Name", "Value"}``: our ``Message-ID``, ``List-Unsubscribe``,
  ``List-Unsubscribe-Post`` and ``X-CRM-Notify-*``;
- ``Metadata`` (string values, echoed in webhooks) carries our notification id and rule,
  ``Tag`` (one per message) the rule;
- ``200`` with ``{"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message": "OK"}``;
  ``401`` for a bad token; ``422`` with ``{"ErrorCode", "Message"}`` for a refused message
  (e.g. ``300`` invalid email request, ``406`` inactive recipient: hard bounce, complaint or
  manual suppression); ``429`` rate limited; ``500``/``503`` Postmark's own failures.

The ``ErrorCode`` of a 422 decides, not only the status: ``100`` (maintenance), ``405`` (not
allowed to send: the account ran out of credits) and ``429`` (rate limit) are worth
retrying; any other code is permanent. Postmark has no idempotency key.
"""

from __future__ import annotations

import email.utils
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
    json_field,
    json_or_none,
    retry_after_s,
    text_body,
    timeout_option,
    tracking,
)

#: The single-message endpoint.
SEND_PATH = "/email"
#: The transactional message stream every server has.
DEFAULT_STREAM = "outbound"
#: Postmark ``ErrorCode`` values that a later attempt may get past.
TRANSIENT_ERROR_CODES = frozenset({100, 405, 429})
#: ``ErrorCode`` of a recipient marked inactive (hard bounce, complaint, suppression).
INACTIVE_RECIPIENT = 406
#: Longest ``Metadata`` value Postmark accepts.
MAX_METADATA_VALUE_CHARS = 80
#: Longest ``Tag`` Postmark accepts.
MAX_TAG_CHARS = 1000
#: Headers not passed in ``Headers``: those the JSON fields carry (lower case).
NOT_PASSED_HEADERS = STRUCTURAL_HEADERS | {"reply-to"}


class PostmarkAdapter(HttpApiAdapter):
    """Deliver through Postmark's Email API.

    Parameters:
        server_token: the Postmark server's API token.
        message_stream: the message stream (``outbound`` by default).
        base_url, timeout_s, transport: see :class:`~crm_notify.esp.http.HttpApiAdapter`.
    """

    name = "postmark"
    default_base_url = "https://api.postmarkapp.com"

    def __init__(
        self,
        *,
        server_token: str,
        message_stream: str = DEFAULT_STREAM,
        **options: Unpack[HttpOptions],
    ) -> None:
        super().__init__(**options)
        self._server_token = server_token
        self.message_stream = message_stream

    @classmethod
    def from_esp_url(cls, url: EspUrl) -> PostmarkAdapter:
        """``postmark://SERVER_TOKEN@[host[:port]][?stream=outbound][&timeout=SECONDS]``.

        Raises:
            ConfigurationError: no server token or a bad timeout.
        """
        if not url.key:
            raise ConfigurationError(
                "CRM_NOTIFY_ESP_URL: postmark needs a server token: postmark://SERVER_TOKEN@"
            )
        return cls(
            server_token=url.key,
            message_stream=url.options.get("stream") or DEFAULT_STREAM,
            base_url=url.base_url,
            timeout_s=timeout_option(url),
        )

    def _request(self, message: EmailMessage) -> ApiRequest:
        senders = address_list(message, "From")
        if not senders:
            raise EspPermanentError(self.name, "message has no From header")
        body: dict[str, Any] = {
            "From": _format(senders[0]),
            "To": ", ".join(_format(a) for a in address_list(message, "To")),
            "Subject": str(message.get("Subject", "")),
            "MessageStream": self.message_stream,
        }
        reply_to = address_list(message, "Reply-To")
        if reply_to:
            body["ReplyTo"] = ", ".join(_format(a) for a in reply_to)
        for subtype, field in (("plain", "TextBody"), ("html", "HtmlBody")):
            text = text_body(message, subtype)
            if text is not None:
                body[field] = text
        headers = [
            {"Name": name, "Value": str(value)}
            for name, value in message.items()
            if name.lower() not in NOT_PASSED_HEADERS
        ]
        if headers:
            body["Headers"] = headers
        metadata = tracking(message)
        if "crm_notify_rule" in metadata:
            body["Tag"] = metadata["crm_notify_rule"][:MAX_TAG_CHARS]
        metadata = {name: value[:MAX_METADATA_VALUE_CHARS] for name, value in metadata.items()}
        if metadata:
            body["Metadata"] = metadata
        return ApiRequest(
            method="POST",
            path=SEND_PATH,
            headers={"X-Postmark-Server-Token": self._server_token, "Accept": "application/json"},
            json=body,
        )

    def _message_id(self, response: httpx.Response, message: EmailMessage) -> str | None:
        return json_field(response, "MessageID")

    def _classify(self, response: httpx.Response) -> None:
        """Map Postmark's ``ErrorCode`` (in a 422, or a 200 that is not ``0``) onto our errors;
        other statuses as the base."""
        answer = json_or_none(response)
        code = answer.get("ErrorCode") if isinstance(answer, dict) else None
        status = response.status_code
        if not isinstance(code, int) or (code == 0 and status == 200):
            super()._classify(response)
            return
        if status != 422 and not 200 <= status < 300:
            super()._classify(response)
            return
        body = response.text[:ERROR_BODY_CHARS]
        text = str(answer.get("Message", "")) if isinstance(answer, dict) else ""
        if code in TRANSIENT_ERROR_CODES:
            raise self._transient(
                response,
                f"provider answered {status} with ErrorCode {code}: {text}",
                retry_after=retry_after_s(response.headers.get("Retry-After")),
            )
        what = "recipient is inactive" if code == INACTIVE_RECIPIENT else "refused the message"
        raise EspPermanentError(
            self.name,
            f"provider {what} (ErrorCode {code}): {text}",
            status_code=status,
            body=body,
        )


def _format(address: tuple[str, str]) -> str:
    """``Name <addr>`` (the name quoted or RFC 2047-encoded as needed), or ``addr``."""
    name, addr = address
    if not name:
        return addr
    if not addr.isascii():  # formataddr refuses an SMTPUTF8 address; Postmark takes UTF-8 JSON
        return f'"{email.utils.quote(name)}" <{addr}>'
    return email.utils.formataddr((name, addr))
