"""Telling the integration about a gate: sign, authenticate, POST, map the answer.

:meth:`GateNotifier.prepare` builds the gate notification (:func:`~crm_notify.gates.payload.
gate_payload`) and resolves the endpoint's URL, credentials and signing secret from the
environment; :meth:`GateNotifier.send` makes one attempt; :func:`record_attempt` stores its
outcome on the gate row. Each attempt is signed per Standard Webhooks
(:mod:`crm_notify.actions.signing`) with the same ``webhook-id`` and its own timestamp. The
answer is mapped like a webhook action's:

- 2xx: ``notified``;
- 408, 429, 5xx, timeouts and network errors: retried with exponential backoff (or the
  ``Retry-After`` the endpoint asked for), the next try stored in ``next_delivery_at``;
  a try that would fall after the gate's deadline is not made: ``failed``;
- any other status (3xx: redirects are not followed; 4xx), or credentials that cannot be
  resolved: ``failed``.

A ``failed`` gate keeps its items held; at the deadline the timeout policy decides them.
Logs name the gate, its rule and the status, never the URL, the headers or the body; the
request line httpx itself logs at INFO is logged without its query string
(:class:`HideQueryFilter`).
"""

from __future__ import annotations

import base64
import enum
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import sqlalchemy as sa
from sqlmodel import Session, col

from crm_notify._net import PUBLIC_ONLY, OutboundPolicy, blocked_reason, outbound_client
from crm_notify.actions.env import expand
from crm_notify.actions.signing import (
    MESSAGE_ID_PREFIX,
    SigningSecret,
    default_secret,
    signature_headers,
)
from crm_notify.clock import now
from crm_notify.esp.http import retry_after_s
from crm_notify.gates.model import Gate, GateAuth, GateConfig, GateDelivery, gate_config_from_json
from crm_notify.gates.payload import gate_payload, held_count, held_items

if TYPE_CHECKING:
    from crm_notify.config import Settings

logger = logging.getLogger(__name__)

#: Seconds to wait for the endpoint to connect, and then for its answer.
REQUEST_TIMEOUT_S = 15.0
#: Characters of the endpoint's answer kept in ``Gate.last_error``.
ERROR_BODY_CHARS = 300
#: Statuses besides 5xx that are worth retrying: request timeout, too many requests.
TRANSIENT_STATUSES = frozenset({408, 429})
#: Wait before the second attempt; each later one waits twice as long as the one before.
FIRST_RETRY_DELAY = timedelta(seconds=15)
#: The longest wait between two attempts (a longer ``Retry-After`` is cut to it).
MAX_RETRY_DELAY = timedelta(minutes=15)
#: ``User-Agent`` of every request.
USER_AGENT = "crm-notify"


class AttemptOutcome(enum.StrEnum):
    """What one attempt to notify the integration came to."""

    NOTIFIED = "notified"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class GateAttempt:
    """The outcome of one attempt: the endpoint's status (``None`` when none came back), a
    description of the failure (never the URL or credentials), and the wait it asked for."""

    outcome: AttemptOutcome
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True, repr=False)
class GateRequest:
    """One prepared gate notification; ``repr`` hides the URL and headers (credentials)."""

    gate_id: int
    public_id: str
    rule: str
    url: str
    headers: dict[str, str]
    body: bytes
    secret: SigningSecret | None

    @property
    def message_id(self) -> str:
        """The ``webhook-id``: the same on every attempt for one gate."""
        return MESSAGE_ID_PREFIX + self.public_id

    def __repr__(self) -> str:
        return f"GateRequest(gate={self.public_id!r}, rule={self.rule!r})"


class GateNotifier:
    """Sends gate notifications (see the module docstring).

    Parameters:
        secret_key: the key that signs the URIs' tokens.
        base_url: the service's public base URL (the URIs point there).
        environ: where ``${NAME}`` references are read from (the process environment).
        default_secret: the signing secret of gates without ``secret:``
            (``CRM_NOTIFY_WEBHOOK_SECRET``); ``None``: those are sent unsigned.
        timeout_s: connect and read timeout of one request.
        policy: the addresses requests may reach (default: public ones only).
        transport: an ``httpx`` transport (tests).
    """

    def __init__(
        self,
        *,
        secret_key: bytes,
        base_url: str,
        environ: Mapping[str, str],
        default_secret: SigningSecret | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        policy: OutboundPolicy = PUBLIC_ONLY,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._secret_key = secret_key
        self._base_url = base_url
        self._environ = environ
        self._default_secret = default_secret
        self.timeout_s = timeout_s
        self._client = outbound_client(
            timeout_s=timeout_s, user_agent=USER_AGENT, policy=policy, transport=transport
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, secret_key: bytes, environ: Mapping[str, str]
    ) -> GateNotifier:
        """The notifier configured by ``settings`` (``CRM_NOTIFY_WEBHOOK_SECRET``,
        ``CRM_NOTIFY_PUBLIC_URL``).

        Raises:
            ConfigurationError: ``CRM_NOTIFY_WEBHOOK_SECRET`` is not a signing secret.
        """
        secret = default_secret(settings)
        return cls(
            secret_key=secret_key,
            base_url=settings.base_url,
            environ=environ,
            default_secret=secret,
            policy=OutboundPolicy.from_settings(settings),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def prepare(self, session: Session, gate: Gate) -> GateRequest | GateAttempt:
        """The notification of ``gate``, ready to send, read in ``session``.

        Returns:
            The request, or a ``failed`` attempt when its URL, credentials or secret cannot
            be resolved (a variable not set, a header value with a line break, a secret that
            is not one).
        """
        assert gate.id is not None
        try:
            config = gate_config_from_json(gate.config)
        except (KeyError, TypeError, ValueError) as exc:
            return GateAttempt(AttemptOutcome.FAILED, error=f"configuration: unreadable ({exc})")
        items = [] if gate.batch else held_items(session, gate)
        count = len(items) if not gate.batch else held_count(session, gate)
        payload = gate_payload(
            gate,
            config,
            items=items,
            item_count=count,
            base_url=self._base_url,
            secret_key=self._secret_key,
        )
        try:
            url = expand(config.url, self._environ)
            headers = {"Content-Type": "application/json"}
            headers.update(_auth_headers(config.auth, self._environ))
            secret = self._secret(config)
        except (LookupError, ValueError) as exc:  # MissingVariableError is a LookupError
            return GateAttempt(AttemptOutcome.FAILED, error=f"configuration: {exc}")
        return GateRequest(
            gate_id=gate.id,
            public_id=gate.public_id,
            rule=gate.rule,
            url=url,
            headers=headers,
            body=_dumps(payload),
            secret=secret,
        )

    def _secret(self, config: GateConfig) -> SigningSecret | None:
        if config.secret_variable is None:
            return self._default_secret
        return SigningSecret.parse(expand("${" + config.secret_variable + "}", self._environ))

    def http_request(self, request: GateRequest, *, timestamp: int) -> httpx.Request:
        """The HTTP request :meth:`send` makes at ``timestamp``, built but not sent.

        Raises:
            httpx.InvalidURL: a URL httpx refuses.
        """
        headers = dict(request.headers)
        headers.update(
            signature_headers(
                message_id=request.message_id,
                timestamp=timestamp,
                body=request.body,
                secret=request.secret,
            )
        )
        return self._client.build_request(
            "POST", request.url, headers=headers, content=request.body
        )

    def send(self, request: GateRequest) -> GateAttempt:
        """Make one attempt to deliver ``request``.

        Returns:
            ``notified`` (2xx), ``retry`` (408, 429, 5xx, timeout, network error) or
            ``failed`` (any other answer, a URL httpx refuses, or an address the outbound
            policy refuses).
        """
        try:
            response = self._client.send(
                self.http_request(request, timestamp=int(now().timestamp()))
            )
        except httpx.TimeoutException as exc:
            attempt = GateAttempt(AttemptOutcome.RETRY, error=f"timeout ({type(exc).__name__})")
        except httpx.TransportError as exc:
            refused = blocked_reason(exc)
            attempt = (
                GateAttempt(AttemptOutcome.FAILED, error=refused)
                if refused is not None
                else GateAttempt(
                    AttemptOutcome.RETRY, error=f"network error ({type(exc).__name__})"
                )
            )
        except httpx.InvalidURL:
            attempt = GateAttempt(AttemptOutcome.FAILED, error="invalid URL")
        except httpx.RequestError as exc:  # e.g. an answer whose encoding cannot be decoded
            attempt = GateAttempt(AttemptOutcome.RETRY, error=f"{type(exc).__name__}")
        except UnicodeEncodeError:  # a header value (from ${NAME}) that is not ASCII
            attempt = GateAttempt(AttemptOutcome.FAILED, error="a header value is not ASCII text")
        else:
            attempt = classify(response)
        log = logger.info if attempt.outcome is AttemptOutcome.NOTIFIED else logger.warning
        log(
            "gate %s of rule %s: notification %s (status %s)",
            request.public_id,
            request.rule,
            attempt.outcome.value,
            attempt.status,
        )
        return attempt


def classify(response: httpx.Response) -> GateAttempt:
    """The outcome an answer of the integration's endpoint means (see the module docstring)."""
    status = response.status_code
    if 200 <= status < 300:
        return GateAttempt(AttemptOutcome.NOTIFIED, status=status)
    answer = " ".join(response.text.split())[:ERROR_BODY_CHARS]
    if status in TRANSIENT_STATUSES or status >= 500:
        return GateAttempt(
            AttemptOutcome.RETRY,
            status=status,
            error=f"endpoint answered {status}: {answer}",
            retry_after_s=retry_after_s(response.headers.get("Retry-After")),
        )
    what = "redirected (not followed; fix the URL)" if 300 <= status < 400 else "refused"
    return GateAttempt(
        AttemptOutcome.FAILED, status=status, error=f"endpoint {what} with {status}: {answer}"
    )


def retry_delay(attempts: int, asked_s: float | None = None) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: :data:`FIRST_RETRY_DELAY` doubled
    each time, or the wait the endpoint asked for when longer, at most
    :data:`MAX_RETRY_DELAY`."""
    delay: timedelta = FIRST_RETRY_DELAY * (2 ** min(max(attempts - 1, 0), 16))
    if asked_s is not None:
        delay = max(delay, timedelta(seconds=asked_s))
    return min(delay, MAX_RETRY_DELAY)


def record_attempt(
    *, session: Session, gate_id: int, attempt: GateAttempt, moment: datetime | None = None
) -> GateDelivery | None:
    """Store the outcome of an attempt on gate ``gate_id`` (still ``pending`` delivery).

    A ``retry`` is due again after :func:`retry_delay` of the attempts made so far; when that
    falls at or after the deadline, the delivery is ``failed`` instead.

    Returns:
        The gate's delivery status now, or ``None`` when it was no longer ``pending`` (another
        runner recorded it first) and nothing was written.
    """
    moment = moment or now()
    gate = session.get(Gate, gate_id)
    if gate is None or gate.delivery != GateDelivery.PENDING:
        return None
    values: dict[str, object] = {"response_status": attempt.status, "last_error": attempt.error}
    if attempt.outcome is AttemptOutcome.NOTIFIED:
        values.update(delivery=GateDelivery.NOTIFIED.value, next_delivery_at=None)
    elif attempt.outcome is AttemptOutcome.RETRY:
        due = moment + retry_delay(gate.delivery_attempts, attempt.retry_after_s)
        if due >= gate.deadline:
            values.update(
                delivery=GateDelivery.FAILED.value,
                next_delivery_at=None,
                last_error=f"{attempt.error}; no attempt left before the deadline",
            )
        else:
            values.update(next_delivery_at=due)
    else:
        values.update(delivery=GateDelivery.FAILED.value, next_delivery_at=None)
    result = session.execute(
        sa.update(Gate)
        .where(col(Gate.id) == gate_id)
        .where(col(Gate.delivery) == GateDelivery.PENDING.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.expire(gate)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return GateDelivery(str(values.get("delivery", GateDelivery.PENDING.value)))


def _auth_headers(auth: GateAuth | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The credentials headers of ``auth``, with ``${NAME}`` references resolved.

    Raises:
        MissingVariableError: a referenced variable is not set.
        ValueError: a value contains a line break or NUL once resolved.
    """
    if auth is None:
        return {}
    if auth.basic is not None:
        credentials = expand(auth.basic, environ)
        if ":" not in credentials:
            credentials += ":"
        encoded = base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        return {"Authorization": f"Basic {encoded}"}
    if auth.header is not None and auth.token is not None:
        token = expand(auth.token, environ)
        if any(char in token for char in "\r\n\0"):
            raise ValueError(f"auth header {auth.header}: its value contains a line break or NUL")
        return {auth.header: token}
    return {}


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
