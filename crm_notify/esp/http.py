"""HTTP plumbing shared by the adapters of providers with a web API, written once.

The base owns the flow: a subclass builds the provider's request from the message
(:meth:`HttpApiAdapter._request`) and reads the provider's message id from a success
(:meth:`HttpApiAdapter._message_id`); the base sends it with one pooled ``httpx`` client,
and maps the answer onto our errors:

- network errors and timeouts, HTTP 429 (honouring ``Retry-After``) and 5xx: transient;
- any other non-2xx: permanent, with the provider's error text (cut) in the message.

A provider that reports some client errors with another status overrides
:meth:`HttpApiAdapter._classify`.

The helpers below (:func:`timeout_option`, :func:`json_or_none`, :func:`address_list`,
:func:`text_body`, :func:`header_value`) are the small pieces every adapter needs to read an
ESP URL, a provider's answer and our message.
"""

from __future__ import annotations

import email.header
import email.utils
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, TypedDict
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from crm_notify._net import is_loopback_host
from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp.base import EspAdapter

#: Seconds to wait for a provider's API on connect and for its answer.
DEFAULT_TIMEOUT_S = 30.0
#: Characters of a provider's error body kept in our error message.
ERROR_BODY_CHARS = 500
#: The header carrying our notification id on every message (set at render time).
NOTIFICATION_ID_HEADER = "X-CRM-Notify-Id"
#: Headers every API carries in its own fields (or sets itself), never as extra headers
#: (lower case); an adapter adds the ones its provider also treats so.
STRUCTURAL_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
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
        if insecure and not is_loopback_host(parts.hostname):
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


@dataclass(frozen=True)
class ApiRequest:
    """One request to a provider: ``json`` or ``data`` (form fields) as the body."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: dict[str, Any] | None = None
    auth: tuple[str, str] | None = None


class HttpOptions(TypedDict, total=False):
    """The keyword arguments every :class:`HttpApiAdapter` subclass passes on to the base."""

    base_url: str | None
    timeout_s: float
    transport: httpx.BaseTransport | None


#: Answers after which the provider may have taken the message all the same: a gateway or
#: load balancer in front of it (502, 504) or its own failure mid-request (500) can answer
#: after the backend queued it. 429 and 503 say it was not taken.
MAYBE_ACCEPTED_STATUSES = frozenset({500, 502, 504})


class HttpApiAdapter(EspAdapter):
    """Base class of adapters for providers with an HTTP API.

    Parameters:
        base_url: the API's scheme, host and port (:attr:`default_base_url` by default).
        timeout_s: connect and read timeout.
        transport: an ``httpx`` transport (tests).

    A subclass takes its own keyword arguments plus ``**options: Unpack[HttpOptions]``, and
    calls ``super().__init__(**options)``; one whose default host depends on its arguments
    (a region) sets ``self.default_base_url`` first.
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
            raise self._transient(
                response,
                f"provider answered {status}",
                retry_after=retry_after_s(response.headers.get("Retry-After")),
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
        except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as exc:
            # The request went out whole; whether the provider took it is unknown.
            what = (
                "timeout waiting for the answer"
                if isinstance(exc, httpx.ReadTimeout)
                else "no answer"
            )
            raise EspTransientError(
                self.name, f"{what} (the provider may have the message): {exc}", maybe_accepted=True
            ) from exc
        except httpx.TimeoutException as exc:
            raise EspTransientError(self.name, f"timeout: {exc}") from exc
        except httpx.TransportError as exc:
            raise EspTransientError(self.name, f"network error: {exc}") from exc
        self._classify(response)
        return self._message_id(response, message)

    def _transient(
        self, response: httpx.Response, what: str, *, retry_after: float | None
    ) -> EspTransientError:
        """The transient error for ``response`` (``what`` leads the message)."""
        body = response.text[:ERROR_BODY_CHARS]
        return EspTransientError(
            self.name,
            f"{what}: {body}",
            status_code=response.status_code,
            body=body,
            retry_after_s=retry_after,
            maybe_accepted=response.status_code in MAYBE_ACCEPTED_STATUSES,
        )

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


def tracking(message: EmailMessage) -> dict[str, str]:
    """Our notification id and rule name as ``crm_notify_id`` / ``crm_notify_rule`` (each only
    when the message has it), for the provider's metadata that its events echo back."""
    values = {"crm_notify_id": notification_id(message), "crm_notify_rule": message[RULE_HEADER]}
    return {name: str(value) for name, value in values.items() if value}


def json_field(response: httpx.Response, name: str) -> str | None:
    """Field ``name`` of a provider's JSON object answer as text, or ``None`` when absent or
    empty (or the answer is no JSON object)."""
    answer = json_or_none(response)
    value = answer.get(name) if isinstance(answer, dict) else None
    return str(value) if value else None


def notification_id(message: EmailMessage) -> str | None:
    """Our notification id, from the message's header (for the provider's metadata)."""
    value = message.get(NOTIFICATION_ID_HEADER)
    return str(value) if value is not None else None


def timeout_option(url: EspUrl) -> float:
    """The ``timeout=`` option of an ESP URL in seconds (default :data:`DEFAULT_TIMEOUT_S`).

    Raises:
        ConfigurationError: the option is not a finite, positive number of seconds.
    """
    raw = url.options.get("timeout")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"CRM_NOTIFY_ESP_URL: timeout must be positive seconds: {raw!r}")
    return value


def json_or_none(response: httpx.Response) -> Any:
    """The JSON of a provider's answer, or ``None`` when its body is not JSON."""
    try:
        return response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
        return None


def address_list(message: EmailMessage, header: str) -> list[tuple[str, str]]:
    """``(display name, address)`` pairs of every ``header`` field, display names decoded.

    Uses the parsed addresses of a ``headerregistry.AddressHeader`` (messages built with a
    modern policy), else parses the field's text; pairs without an address are left out.
    """
    pairs: list[tuple[str, str]] = []
    for value in message.get_all(header) or []:
        parsed = getattr(value, "addresses", None)  # a headerregistry.AddressHeader
        if parsed is None:
            pairs.extend(email.utils.getaddresses([str(value)]))
        else:
            pairs.extend((str(a.display_name), str(a.addr_spec)) for a in parsed)
    return [(name, addr) for name, addr in pairs if addr]


def text_body(message: EmailMessage, subtype: str) -> str | None:
    """The ``text/<subtype>`` body (``plain`` or ``html``) of ``message``, decoded, with
    ``\\n`` line ends, or ``None`` when it has none."""
    part = message.get_body(preferencelist=(subtype,))
    if not isinstance(part, EmailMessage) or part.get_content_subtype() != subtype:
        return None
    return str(part.get_content()).replace("\r\n", "\n")


def header_value(value: str) -> str:
    """``value`` as it may stand in a header: RFC 2047-encoded (UTF-8) when not ASCII."""
    return value if value.isascii() else email.header.Header(value, "utf-8").encode()
