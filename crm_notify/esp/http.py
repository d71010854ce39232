"""HTTP plumbing shared by the adapters of providers with a web API, written once.

The base owns the flow: a subclass builds the provider's request from the message
(:meth:`HttpApiAdapter._request`) and reads the provider's message id from a success
(:meth:`HttpApiAdapter._message_id`); the base sends it with one pooled ``httpx`` client,
and maps the answer onto our errors:

- network errors and timeouts, HTTP 429 (honouring ``Retry-After``) and 5xx: transient;
- any other non-2xx: permanent, with the provider's error text (cut) in the message.

A provider that reports some client errors with another status overrides
:meth:`HttpApiAdapter._classify`.
"""

from __future__ import annotations

import email.utils
import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp.base import EspAdapter

#: Seconds to wait for a provider's API on connect and for its answer.
DEFAULT_TIMEOUT_S = 30.0
#: Characters of a provider's error body kept in our error message.
ERROR_BODY_CHARS = 500
#: The header carrying our notification id on every message (set at render time).
NOTIFICATION_ID_HEADER = "X-CRM-Notify-Id"
#: The header carrying the rule's name on every message.
RULE_HEADER = "X-CRM-Notify-Rule"


@dataclass(frozen=True)
class EspUrl:
    """``<provider>://<credentials>@[host[:port]][/path][?options]``, taken apart.

    ``base_url`` is ``https://host[:port]`` (``http://`` with ``insecure=1``, allowed only to
    loopback addresses), or ``None`` when the URL names no host (the provider's own API host
    is then used).
    """

    provider: str
    username: str | None
    password: str | None
    base_url: str | None
    path: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        """The credential of providers with one API key: the password, else the user part."""
        return self.password or self.username


def parse_esp_url(url: str) -> EspUrl:
    """Take an ESP URL apart (credentials URL-decoded).

    Raises:
        ConfigurationError: ``insecure=1`` with a host that is not a loopback address, or an
            invalid port.
    """
    parts = urlsplit(url)
    options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"CRM_NOTIFY_ESP_URL: invalid port: {exc}") from exc
    base_url = None
    if parts.hostname:
        insecure = options.get("insecure", "").strip().lower() in {"1", "true", "yes", "on"}
        if insecure and not _is_loopback(parts.hostname):
            raise ConfigurationError(
                "CRM_NOTIFY_ESP_URL: insecure=1 (plain HTTP) is allowed only to loopback "
                f"addresses, not {parts.hostname!r}"
            )
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        base_url = f"{'http' if insecure else 'https'}://{host}" + (f":{port}" if port else "")
    return EspUrl(
        provider=parts.scheme,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        base_url=base_url,
        path=unquote(parts.path).strip("/"),
        options=options,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ApiRequest:
    """One request to a provider: ``json`` or ``data`` (form fields) as the body."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: dict[str, Any] | None = None
    auth: tuple[str, str] | None = None


class HttpApiAdapter(EspAdapter):
    """Base class of adapters for providers with an HTTP API.

    Parameters:
        base_url: the API's scheme, host and port (the provider's own by default).
        timeout_s: connect and read timeout.
        transport: an ``httpx`` transport (tests).
    """

    #: The provider's API, used when the ESP URL names no host.
    default_base_url = "https://invalid.example"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers={"User-Agent": "crm-notify"},
        )

    def _request(self, message: EmailMessage) -> ApiRequest:
        """The provider's request delivering ``message``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _request()")

    def _message_id(self, response: httpx.Response, message: EmailMessage) -> str | None:
        """The provider's id of the accepted message, from its answer (default: none)."""
        return None

    def _classify(self, response: httpx.Response) -> None:
        """Raise for an answer that is not a success (see the module docstring)."""
        status = response.status_code
        if 200 <= status < 300:
            return
        body = response.text[:ERROR_BODY_CHARS]
        if status == 429 or status >= 500:
            raise EspTransientError(
                self.name,
                f"provider answered {status}: {body}",
                status_code=status,
                body=body,
                retry_after_s=retry_after_s(response.headers.get("Retry-After")),
            )
        raise EspPermanentError(
            self.name, f"provider refused the message: {body}", status_code=status, body=body
        )

    def _deliver(self, message: EmailMessage) -> str | None:
        request = self._request(message)
        try:
            response = self._client.request(
                request.method,
                request.path,
                headers=request.headers,
                json=request.json,
                data=request.data,
                auth=request.auth,
            )
        except httpx.TimeoutException as exc:
            raise EspTransientError(self.name, f"timeout: {exc}") from exc
        except httpx.TransportError as exc:
            raise EspTransientError(self.name, f"network error: {exc}") from exc
        self._classify(response)
        return self._message_id(response, message)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def notification_id(message: EmailMessage) -> str | None:
    """Our notification id, from the message's header (for the provider's metadata)."""
    value = message.get(NOTIFICATION_ID_HEADER)
    return str(value) if value is not None else None
