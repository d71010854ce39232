"""Sending one request to a subscriber: sign (Standard Webhooks), post, classify the answer.

Every attempt of a delivery carries the same ``webhook-id`` and body, a fresh
``webhook-timestamp`` and its signature. A 2xx answer is success; anything else (a redirect is
not followed), a timeout, a network error or an address the outbound policy refuses is a
failure, retried by the dispatcher (``Retry-After`` is honoured when longer). Logs and errors
never show the URL's query, the headers or the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from crm_notify._net import (
    PUBLIC_ONLY,
    OutboundPolicy,
    ResponseTooLargeError,
    blocked_reason,
    outbound_client,
    read_bounded,
)
from crm_notify.actions.env import expand, expand_headers
from crm_notify.actions.signing import SigningSecret, new_message_id, signature_headers
from crm_notify.clock import now
from crm_notify.esp.http import retry_after_s
from crm_notify.subscriptions.models import WebhookSubscription
from crm_notify.subscriptions.payload import CONTENT_TYPES, encode, ping_payload

#: Seconds to wait for a subscriber to connect, and then for its answer.
REQUEST_TIMEOUT_S = 10.0
#: Bytes of an answer read (the rest is ignored; only errors show it).
MAX_ANSWER_BYTES = 16 * 1024
#: Characters of an answer kept in ``last_error``.
ERROR_BODY_CHARS = 200
#: ``User-Agent`` of every request.
USER_AGENT = "crm-notify-webhooks"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request came to: ``ok`` (2xx), the status (``None`` when none came back), a
    description of a failure, and the wait the subscriber asked for."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


class SubscriptionSender:
    """Sends signed requests to subscribers.

    Parameters:
        environ: where ``${NAME}`` references (secrets, header values) are read from.
        policy: the addresses requests may reach.
        timeout_s: connect and read timeout of one request.
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str],
        policy: OutboundPolicy = PUBLIC_ONLY,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._environ = environ
        self.timeout_s = timeout_s
        self._client = outbound_client(timeout_s=timeout_s, user_agent=USER_AGENT, policy=policy)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def send(self, subscription: WebhookSubscription, *, message_id: str, body: str) -> Attempt:
        """Post ``body`` to ``subscription`` once, signed with its secret."""
        try:
            request = self._request(subscription, message_id=message_id, body=body.encode())
        except (LookupError, ValueError) as exc:  # a ${NAME} not set, a bad secret or header
            return Attempt(False, error=f"configuration: {exc}")
        except httpx.InvalidURL as exc:
            return Attempt(False, error=f"invalid URL: {exc}")
        try:
            response = self._client.send(request, stream=True)
            answer = read_bounded(response, MAX_ANSWER_BYTES, timeout_s=self.timeout_s)
        except ResponseTooLargeError:
            answer = b""
            if not 200 <= response.status_code < 300:
                return Attempt(False, response.status_code, "answered with a too large body")
        except httpx.TimeoutException:
            return Attempt(False, error=f"timeout after {self.timeout_s:g}s")
        except httpx.TransportError as exc:
            return Attempt(False, error=blocked_reason(exc) or f"network error: {exc}")
        except httpx.HTTPError as exc:  # e.g. an answer whose encoding cannot be decoded
            return Attempt(False, error=f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return Attempt(True, status)
        text = " ".join(answer.decode("utf-8", "replace").split())[:ERROR_BODY_CHARS]
        what = "redirected (not followed; fix the URL)" if 300 <= status < 400 else "answered"
        return Attempt(
            False,
            status,
            f"{what} {status}: {text}".rstrip(": "),
            retry_after_s(response.headers.get("Retry-After")),
        )

    def ping(self, subscription: WebhookSubscription) -> Attempt:
        """Send a signed ``webhook.ping`` to ``subscription`` (a test: nothing is queued)."""
        payload = ping_payload(subscription.name, at=now())
        return self.send(
            subscription,
            message_id=new_message_id(),
            body=encode(payload, subscription.content_type),
        )

    def _request(
        self, subscription: WebhookSubscription, *, message_id: str, body: bytes
    ) -> httpx.Request:
        headers = expand_headers(subscription.headers.items(), self._environ)
        headers["Content-Type"] = CONTENT_TYPES[subscription.content_type]
        headers.update(
            signature_headers(
                message_id=message_id,
                timestamp=int(now().timestamp()),
                body=body,
                secret=self.secret(subscription),
            )
        )
        url = expand(subscription.url, self._environ)
        return self._client.build_request("POST", url, headers=headers, content=body)

    def secret(self, subscription: WebhookSubscription) -> SigningSecret:
        """The subscription's signing secret.

        Raises:
            MissingVariableError: its variable is not set.
            ValueError: the value is not a signing secret.
        """
        if subscription.secret_variable is not None:
            return SigningSecret.parse(
                expand("${" + subscription.secret_variable + "}", self._environ)
            )
        if subscription.secret is None:
            raise ValueError("the subscription has no signing secret")
        return SigningSecret.parse(subscription.secret)
