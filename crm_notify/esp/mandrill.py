"""The Mailchimp Transactional (Mandrill) adapter: ``messages/send``.

Contract (https://mailchimp.com/developer/transactional/api/messages/send-new-message/):

- ``POST https://mandrillapp.com/api/1.0/messages/send.json``, JSON, the API key in the body
  (``key``), the message under ``message``: ``from_email``, ``from_name``, ``subject``,
  ``text``, ``html``, ``to`` (``[{"email", "name", "type": "to"}]``), ``headers`` (our other
  headers: ``Message-ID``, ``List-Unsubscribe``, ``List-Unsubscribe-Post``, ``Reply-To``,
  ``X-CRM-Notify-*``; "most headers are allowed"), ``metadata``
  (``{"crm_notify_id", "crm_notify_rule"}``, returned in webhook events as ``msg.metadata``)
  and ``tags`` (the rule name; at most 50 characters, no leading underscore). Mandrill has
  no idempotency key.
- success: HTTP 200 with one result per recipient ``{"email", "status", "reject_reason",
  "queued_reason", "_id"}``; ``status`` is ``sent``, ``queued`` or ``scheduled`` (accepted:
  the first ``_id`` is the provider message id) or ``rejected`` / ``invalid`` (a permanent
  failure when no recipient was accepted).
- errors: HTTP 500 with ``{"status": "error", "code", "name", "message"}``
  (https://mailchimp.com/developer/transactional/docs/fundamentals/#api-errors): ``name``
  ``GeneralError`` and ``ServiceUnavailable`` are transient, every other name
  (``Invalid_Key``, ``ValidationError``, ``PaymentRequired``, ``Unknown_Subaccount``, ...)
  is permanent; a 500 without that body, other 5xx and 429 are transient.
"""

from __future__ import annotations

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
    json_or_none,
    text_body,
    timeout_option,
    tracking,
)

#: The send endpoint, under the API host.
SEND_PATH = "/api/1.0/messages/send.json"
#: Error names Mandrill answers with HTTP 500 that are worth retrying.
TRANSIENT_ERROR_NAMES = frozenset({"GeneralError", "ServiceUnavailable"})
#: Per-recipient statuses of an accepted message.
ACCEPTED_STATUSES = frozenset({"sent", "queued", "scheduled"})
#: Mandrill's limit on the length of a tag.
MAX_TAG_CHARS = 50


class MandrillAdapter(HttpApiAdapter):
    """Sends through Mailchimp Transactional (Mandrill).

    Parameters:
        api_key: a Mandrill API key (not a Mailchimp marketing key).
        base_url, timeout_s, transport: as for :class:`HttpApiAdapter`.
    """

    name = "mandrill"
    default_base_url = "https://mandrillapp.com"

    def __init__(
        self,
        *,
        api_key: str,
        **options: Unpack[HttpOptions],
    ) -> None:
        super().__init__(**options)
        self._api_key = api_key

    @classmethod
    def from_esp_url(cls, url: EspUrl) -> MandrillAdapter:
        """``mandrill://KEY@[host[:port]]``; option ``timeout`` (seconds).

        Raises:
            ConfigurationError: no API key in the URL.
        """
        if not url.key:
            raise ConfigurationError("CRM_NOTIFY_ESP_URL: mandrill:// needs the API key: KEY@")
        return cls(api_key=url.key, base_url=url.base_url, timeout_s=timeout_option(url))

    def _request(self, message: EmailMessage) -> ApiRequest:
        from_name, from_email = _first_address(message, "From")
        payload: dict[str, Any] = {
            "from_email": from_email,
            "subject": str(message["Subject"] or ""),
            "to": [_recipient(name, address) for name, address in address_list(message, "To")],
        }
        if from_name:
            payload["from_name"] = from_name
        for subtype, field in (("plain", "text"), ("html", "html")):
            text = text_body(message, subtype)
            if text is not None:
                payload[field] = text
        headers = {
            name: str(value)
            for name, value in message.items()
            if name.lower() not in STRUCTURAL_HEADERS
        }
        if headers:
            payload["headers"] = headers
        metadata = tracking(message)
        if rule := metadata.get("crm_notify_rule"):
            tag = rule.lstrip("_")[:MAX_TAG_CHARS]
            if tag:
                payload["tags"] = [tag]
        if metadata:
            payload["metadata"] = metadata
        return ApiRequest("POST", SEND_PATH, json={"key": self._api_key, "message": payload})

    def _classify(self, response: httpx.Response) -> None:
        # Mandrill reports client errors (bad key, invalid request) with HTTP 500 and a name.
        if response.status_code == 500:
            error = json_or_none(response)
            if isinstance(error, dict) and error.get("status") == "error":
                name = str(error.get("name") or "")
                if name and name not in TRANSIENT_ERROR_NAMES:
                    body = response.text[:ERROR_BODY_CHARS]
                    raise EspPermanentError(
                        self.name,
                        f"{name}: {error.get('message', '')}",
                        status_code=response.status_code,
                        body=body,
                    )
        super()._classify(response)

    def _message_id(self, response: httpx.Response, message: EmailMessage) -> str | None:
        results = json_or_none(response)
        if not isinstance(results, list):
            return None  # accepted (HTTP 200) but unreadable: never risk sending it twice
        accepted = [
            r for r in results if isinstance(r, dict) and r.get("status") in ACCEPTED_STATUSES
        ]
        if accepted:
            value = accepted[0].get("_id")
            return str(value) if value else None
        refusals = [
            f"{r.get('email')}: {r.get('status')}"
            + (f" ({r['reject_reason']})" if r.get("reject_reason") else "")
            for r in results
            if isinstance(r, dict)
        ]
        if not refusals:
            return None
        body = response.text[:ERROR_BODY_CHARS]
        raise EspPermanentError(
            self.name,
            "recipient rejected: " + "; ".join(refusals),
            status_code=response.status_code,
            body=body,
        )


def _recipient(name: str, address: str) -> dict[str, str]:
    recipient = {"email": address, "type": "to"}
    if name:
        recipient["name"] = name
    return recipient


def _first_address(message: EmailMessage, header: str) -> tuple[str, str]:
    found = address_list(message, header)
    return found[0] if found else ("", "")
