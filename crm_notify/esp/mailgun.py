"""The Mailgun adapter: ``POST /v3/{domain}/messages``.

Contract (https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/messages/post-v3--domain-name--messages,
https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/send-http):

- ``POST https://api.mailgun.net/v3/{domain}/messages`` (EU domains:
  ``https://api.eu.mailgun.net``), HTTP basic auth ``api:KEY``, form fields (sent
  ``application/x-www-form-urlencoded``, which the API accepts as well as multipart);
- ``from``, ``to`` (``Name <address>``), ``subject``, ``text``, ``html``; every other header
  of ours as ``h:Name`` (``h:Message-Id``, ``h:List-Unsubscribe``, ``h:List-Unsubscribe-Post``,
  ``h:Reply-To``, ``h:X-CRM-Notify-*``); custom variables ``v:crm_notify_id`` and
  ``v:crm_notify_rule`` (returned in webhook events as ``user-variables``) and ``o:tag``
  (the rule name) for stats (https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/pass-sending-options).
  Mailgun has no idempotency key.
- success: HTTP 200 ``{"id": "<...>", "message": "Queued. Thank you."}``; the id (without
  the angle brackets, as webhooks report it) is the provider message id.
- errors (https://documentation.mailgun.com/docs/mailgun/quickstart-guide/responses): 400
  (``{"message": ...}``), 401/403 (bad key), 404 (unknown domain) permanent; 429 and 5xx
  transient. A 200 "Mailgun Magnificent API" page means a wrong endpoint (domain or region):
  permanent.
"""

from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any, Unpack
from urllib.parse import quote

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

#: The API host of each Mailgun region (``?region=``).
REGION_HOSTS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
#: The basic-auth user name of the Mailgun API.
API_USER = "api"


class MailgunAdapter(HttpApiAdapter):
    """Sends through Mailgun's HTTP API for one sending domain.

    Parameters:
        api_key: a Mailgun API key (or a domain sending key).
        domain: the sending domain, e.g. ``mg.example.com``.
        region: ``us`` or ``eu``; picks the API host when ``base_url`` is not given.
        base_url, timeout_s, transport: as for :class:`HttpApiAdapter`.
    """

    name = "mailgun"
    default_base_url = REGION_HOSTS["us"]

    def __init__(
        self,
        *,
        api_key: str,
        domain: str,
        region: str = "us",
        **options: Unpack[HttpOptions],
    ) -> None:
        if region not in REGION_HOSTS:
            raise ConfigurationError(
                f"CRM_NOTIFY_ESP_URL: mailgun region must be one of {sorted(REGION_HOSTS)}, "
                f"not {region!r}"
            )
        if not domain or "/" in domain:
            raise ConfigurationError(f"CRM_NOTIFY_ESP_URL: invalid mailgun domain {domain!r}")
        self.default_base_url = REGION_HOSTS[region]
        super().__init__(**options)
        self.domain = domain
        self._api_key = api_key

    @classmethod
    def from_esp_url(cls, url: EspUrl) -> MailgunAdapter:
        """``mailgun://api:KEY@[host[:port]]/DOMAIN[?region=eu]``; option ``timeout``
        (seconds).

        Raises:
            ConfigurationError: no API key or no domain in the URL, or an unknown region.
        """
        if not url.key:
            raise ConfigurationError(
                "CRM_NOTIFY_ESP_URL: mailgun:// needs the API key: mailgun://api:KEY@/DOMAIN"
            )
        if not url.path:
            raise ConfigurationError(
                "CRM_NOTIFY_ESP_URL: mailgun:// needs the sending domain: mailgun://api:KEY@/DOMAIN"
            )
        return cls(
            api_key=url.key,
            domain=url.path,
            region=url.options.get("region", "us").strip().lower() or "us",
            base_url=url.base_url,
            timeout_s=timeout_option(url),
        )

    def _request(self, message: EmailMessage) -> ApiRequest:
        fields: dict[str, Any] = {
            "from": ", ".join(_formatted(message, "From")),
            "to": _formatted(message, "To"),
            "subject": str(message["Subject"] or ""),
        }
        for subtype, field in (("plain", "text"), ("html", "html")):
            text = text_body(message, subtype)
            if text is not None:
                fields[field] = text
        for name, value in message.items():
            if name.lower() not in STRUCTURAL_HEADERS:
                fields[f"h:{name}"] = str(value)
        variables = tracking(message)
        fields.update({f"v:{name}": value for name, value in variables.items()})
        if "crm_notify_rule" in variables:
            fields["o:tag"] = variables["crm_notify_rule"]
        return ApiRequest(
            "POST",
            f"/v3/{quote(self.domain, safe='')}/messages",
            data=fields,
            auth=(API_USER, self._api_key),
        )

    def _classify(self, response: httpx.Response) -> None:
        super()._classify(response)
        if "Mailgun Magnificent API" in response.text:
            raise EspPermanentError(
                self.name,
                f"wrong API endpoint {response.request.url} (check the domain and region)",
                status_code=response.status_code,
                body=response.text[:ERROR_BODY_CHARS],
            )

    def _message_id(self, response: httpx.Response, message: EmailMessage) -> str | None:
        answer = json_or_none(response)
        value = answer.get("id") if isinstance(answer, dict) else None
        if not value:
            return None
        return str(value).strip().strip("<>") or None


def _formatted(message: EmailMessage, header: str) -> list[str]:
    """Each address of every ``header`` field as ``Name <address>``: the name decoded and
    quoted as needed, not RFC 2047-encoded (the API takes UTF-8 and encodes it itself)."""
    return [
        str(Address(display_name=name, addr_spec=addr)) if name else addr
        for name, addr in address_list(message, header)
    ]
