"""The Amazon SES adapter: API v2 ``SendEmail`` with a raw MIME message, SigV4-signed.

Contract (https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendEmail.html):

- ``POST /v2/email/outbound-emails`` on ``https://email.{region}.amazonaws.com``, a JSON body,
  signed with AWS Signature Version 4 for service ``ses``
  (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html),
  implemented in :mod:`crm_notify.esp._sigv4` (no boto3);
- ``Content.Raw.Data``: the base64 of the whole MIME message, so every header we set
  (``Message-ID``, ``List-Unsubscribe``, ``List-Unsubscribe-Post``, ``X-CRM-Notify-*``) is sent
  as built; ``FromEmailAddress`` and ``Destination.ToAddresses`` name the envelope;
- ``EmailTags`` ``crm_notify_id`` (our notification id) and ``crm_notify_rule`` (the rule),
  published to the configuration set's event destinations; ``ConfigurationSetName`` from the
  ``configuration_set`` option;
- success: HTTP 200 ``{"MessageId": "..."}``. SendEmail has no idempotency key.

Errors (https://docs.aws.amazon.com/ses/latest/APIReference-V2/CommonErrors.html): the type
comes in the ``x-amzn-ErrorType`` header (or ``__type`` / ``code`` in the JSON body).
``MessageRejected``, ``MailFromDomainNotVerifiedException``, ``AccountSuspendedException``,
``SendingPausedException``, ``BadRequestException`` (400) and signature/credential errors
(403) are permanent; ``TooManyRequestsException`` (429) and 5xx are transient, and so is
``ThrottlingException``, which AWS answers with HTTP 400 (sending quota or rate exceeded).
"""

from __future__ import annotations

import base64
import re
from email.message import EmailMessage
from typing import Any, Unpack

import httpx

from crm_notify import clock
from crm_notify.errors import ConfigurationError
from crm_notify.esp import _sigv4
from crm_notify.esp.http import (
    RULE_HEADER,
    ApiRequest,
    EspUrl,
    HttpApiAdapter,
    HttpOptions,
    address_list,
    json_field,
    json_or_none,
    notification_id,
    retry_after_s,
    timeout_option,
)

#: The SendEmail operation's path.
SEND_PATH = "/v2/email/outbound-emails"
#: The service name in the SigV4 credential scope.
SIGNING_SERVICE = "ses"
#: Error types that are worth retrying whatever HTTP status they come with.
TRANSIENT_ERROR_TYPES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
#: Tag names carrying our notification id and the rule name.
ID_TAG, RULE_TAG = "crm_notify_id", "crm_notify_rule"
#: Characters SES does not allow in a tag value (ASCII letters, digits, ``_`` and ``-`` only).
_TAG_FORBIDDEN = re.compile(r"[^A-Za-z0-9_-]")
#: A region name as it appears in the API host.
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")


class SesAdapter(HttpApiAdapter):
    """Sends through Amazon SES (API v2), signing each request with SigV4.

    Parameters:
        access_key_id, secret_access_key: the IAM credentials (``ses:SendEmail``).
        region: the SES region, e.g. ``eu-west-1`` (also part of the signature).
        session_token: for temporary credentials.
        configuration_set: the configuration set whose event destinations get the tags.
        base_url, timeout_s, transport: as for :class:`HttpApiAdapter`; the base URL
            defaults to ``https://email.{region}.amazonaws.com``.
    """

    name = "ses"
    default_base_url = "https://email.us-east-1.amazonaws.com"

    def __init__(
        self,
        *,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        session_token: str | None = None,
        configuration_set: str | None = None,
        **options: Unpack[HttpOptions],
    ) -> None:
        self.default_base_url = f"https://email.{region}.amazonaws.com"
        super().__init__(**options)
        self.region = region
        self.configuration_set = configuration_set
        self._credentials = _sigv4.Credentials(access_key_id, secret_access_key, session_token)
        # The signature covers the exact body bytes httpx sends, which exist only once the
        # request is built: sign in a request hook (ApiRequest carries no signing step).
        self._client.event_hooks = {"request": [self._sign], "response": []}

    @classmethod
    def from_esp_url(cls, url: EspUrl) -> SesAdapter:
        """``ses://ACCESS_KEY_ID:SECRET@[host[:port]]?region=eu-west-1`` (the secret
        URL-encoded: ``/`` as ``%2F``, ``+`` as ``%2B``); options ``configuration_set``,
        ``timeout`` (seconds).

        Raises:
            ConfigurationError: a credential or the region is missing or invalid.
        """
        if not url.username or not url.password:
            raise ConfigurationError(
                "CRM_NOTIFY_ESP_URL: ses:// needs ACCESS_KEY_ID:SECRET_ACCESS_KEY@ credentials"
            )
        region = url.options.get("region", "").strip()
        if not _REGION.fullmatch(region):
            raise ConfigurationError(
                "CRM_NOTIFY_ESP_URL: ses:// needs ?region=<AWS region>, e.g. region=eu-west-1"
            )
        return cls(
            access_key_id=url.username,
            secret_access_key=url.password,
            region=region,
            configuration_set=url.options.get("configuration_set") or None,
            base_url=url.base_url,
            timeout_s=timeout_option(url),
        )

    def _request(self, message: EmailMessage) -> ApiRequest:
        senders = _addr_specs(message, "From")
        body: dict[str, Any] = {
            "FromEmailAddress": senders[0] if senders else "",
            "Destination": {"ToAddresses": _addr_specs(message, "To")},
            "Content": {"Raw": {"Data": base64.b64encode(message.as_bytes()).decode("ascii")}},
        }
        tags = [
            {"Name": name, "Value": _tag_value(value)}
            for name, value in (
                (ID_TAG, notification_id(message)),
                (RULE_TAG, message[RULE_HEADER]),
            )
            if value
        ]
        if tags:
            body["EmailTags"] = tags
        if self.configuration_set:
            body["ConfigurationSetName"] = self.configuration_set
        return ApiRequest("POST", SEND_PATH, json=body)

    def _sign(self, request: httpx.Request) -> None:
        headers = _sigv4.sign_headers(
            credentials=self._credentials,
            region=self.region,
            service=SIGNING_SERVICE,
            method=request.method,
            host=request.headers["Host"],
            raw_path=request.url.raw_path.split(b"?", 1)[0].decode("ascii"),
            raw_query=request.url.query.decode("ascii"),
            headers={"Content-Type": request.headers.get("Content-Type", "")},
            payload=request.content,
            when=clock.now(),
        )
        request.headers.update(headers)

    def _classify(self, response: httpx.Response) -> None:
        if response.status_code < 300:
            return
        error_type = _error_type(response)
        if error_type in TRANSIENT_ERROR_TYPES and response.status_code < 500:
            raise self._transient(
                response,
                error_type,
                retry_after=retry_after_s(response.headers.get("Retry-After")),
            )
        super()._classify(response)

    def _message_id(self, response: httpx.Response, message: EmailMessage) -> str | None:
        return json_field(response, "MessageId")


def _addr_specs(message: EmailMessage, header: str) -> list[str]:
    """The bare addresses of every ``header`` field."""
    return [address for _name, address in address_list(message, header)]


def _error_type(response: httpx.Response) -> str:
    """The AWS error type, without the namespace (``x-amzn-ErrorType`` or the JSON body)."""
    value = str(response.headers.get("x-amzn-ErrorType", ""))
    if not value:
        data = json_or_none(response)
        if isinstance(data, dict):
            value = str(data.get("__type") or data.get("code") or data.get("Code") or "")
    return value.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def _tag_value(value: str) -> str:
    """A tag value SES accepts: disallowed characters replaced with ``_``, 256 at most."""
    return _TAG_FORBIDDEN.sub("_", str(value))[:256]
