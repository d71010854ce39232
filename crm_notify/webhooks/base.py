"""The tracking-webhook extension point.

A provider's webhook checks that a call is authentic (:meth:`EspWebhook.validate_request`)
and turns its body into :class:`~crm_notify.webhooks.events.TrackingEvent` objects
(:meth:`EspWebhook.parse_events`); the base owns the flow (:meth:`EspWebhook.handle`). Checks
compare secrets in constant time and never put a secret or an address in an error.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import parse_qs

from crm_notify.clock import now
from crm_notify.config import Settings
from crm_notify.errors import WebhookAuthError, WebhookPayloadError
from crm_notify.webhooks.events import TrackingEvent


@dataclass(frozen=True)
class WebhookRequest:
    """One call of a tracking webhook.

    Parameters:
        url: the URL the provider called, as the provider sees it (public base URL, path and
            query): some providers sign it.
        headers: the request headers, names in lower case.
        body: the raw body.
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), or ``None``."""
        return self.headers.get(name.lower())

    def json(self, provider: str) -> Any:
        """The body parsed as JSON.

        Raises:
            WebhookPayloadError: it is not JSON.
        """
        try:
            return json.loads(self.body)
        except RecursionError as exc:
            raise WebhookPayloadError(provider, "the body is nested too deeply") from exc
        except (UnicodeDecodeError, ValueError) as exc:
            # The decoder's message names a position only, never the body's text.
            raise WebhookPayloadError(provider, f"the body is not JSON ({exc})") from exc

    def form(self, provider: str) -> dict[str, list[str]]:
        """The body parsed as ``application/x-www-form-urlencoded``.

        Raises:
            WebhookPayloadError: it is not form-encoded text.
        """
        try:
            text = self.body.decode("utf-8")
            return parse_qs(text, keep_blank_values=True, strict_parsing=bool(text))
        except (UnicodeDecodeError, ValueError) as exc:  # its message quotes the body: left out
            raise WebhookPayloadError(provider, "the body is not form-encoded") from exc


class EspWebhook:
    """Base class of every provider's tracking webhook.

    Subclasses set :attr:`provider`, implement :meth:`validate_request`,
    :meth:`parse_events` and :meth:`from_settings`.

    Parameters:
        tolerance_s: largest age of a signed timestamp, in seconds; ``0`` turns the check off.
    """

    #: The provider, as in its ESP URL scheme, e.g. ``"sendgrid"``.
    provider = "base"
    #: The settings that hold this provider's verification secret (named in errors and docs).
    secret_settings: tuple[str, ...] = ()

    def __init__(self, *, tolerance_s: float = 300.0) -> None:
        self.tolerance_s = tolerance_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """The webhook configured by ``settings``, or ``None`` when its secret is not set."""
        raise NotImplementedError(f"{cls.__name__} must implement from_settings()")

    def handle(self, request: WebhookRequest) -> list[TrackingEvent]:
        """Check ``request`` and return its events.

        Raises:
            WebhookAuthError: the call is not authentic.
            WebhookPayloadError: the body is not in the provider's format.
        """
        self.validate_request(request)
        return self.parse_events(request)

    def validate_request(self, request: WebhookRequest) -> None:
        """Raise :class:`WebhookAuthError` unless ``request`` comes from the provider."""
        raise NotImplementedError(f"{type(self).__name__} must implement validate_request()")

    def parse_events(self, request: WebhookRequest) -> list[TrackingEvent]:
        """The events in an authentic ``request``, one per recipient and event."""
        raise NotImplementedError(f"{type(self).__name__} must implement parse_events()")

    # Helpers for subclasses.

    def auth_error(self, message: str, *, missing: bool = False) -> WebhookAuthError:
        """A :class:`WebhookAuthError` of this provider."""
        return WebhookAuthError(self.provider, message, missing=missing)

    def payload_error(self, message: str) -> WebhookPayloadError:
        """A :class:`WebhookPayloadError` of this provider."""
        return WebhookPayloadError(self.provider, message)

    def check_basic_auth(self, request: WebhookRequest, expected: str) -> None:
        """Require HTTP Basic credentials equal to ``expected`` (``user:password``)."""
        header = request.header("authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            raise self.auth_error("HTTP Basic credentials are required", missing=True)
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.auth_error("the Basic credentials are not base64") from exc
        if not hmac.compare_digest(given, expected.encode("utf-8")):
            raise self.auth_error("wrong HTTP Basic credentials")

    def check_timestamp(self, timestamp: datetime | float | int | str | None) -> None:
        """Refuse a signed timestamp older (or newer) than :attr:`tolerance_s`.

        Accepts Unix seconds (number or digits) or an aware datetime; ``0`` tolerance skips.
        """
        if self.tolerance_s == 0:
            return
        if timestamp is None:
            raise self.auth_error("the signed timestamp is missing", missing=True)
        if isinstance(timestamp, datetime):
            moment = timestamp
        else:
            try:
                moment = datetime.fromtimestamp(float(timestamp), tz=UTC)
            except (TypeError, ValueError, OverflowError, OSError) as exc:
                raise self.auth_error("the signed timestamp is not a number") from exc
        age_s = abs((now() - moment).total_seconds())
        if age_s > self.tolerance_s:
            raise self.auth_error(
                f"the signed timestamp is {age_s:.0f} s away from now (tolerance "
                f"{self.tolerance_s:.0f} s; CRM_NOTIFY_WEBHOOK_TOLERANCE_S=0 turns the check off)"
            )


def secret_value(secret: Any) -> str | None:
    """The text of a ``SecretStr`` or ``str`` setting, ``None`` when unset or empty."""
    if secret is None:
        return None
    text = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
    return text or None
