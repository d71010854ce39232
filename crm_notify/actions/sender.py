"""Delivering a webhook action's notification: render once, sign, send, map the answer.

Called by :meth:`crm_notify.outbox.delivery.DeliveryService.deliver` for a claimed row whose
channel is ``webhook``, after the delivery-time guards (consent, suppression) let it through.
The first attempt renders the body in the sandbox and stores it (``message``) with the
``webhook-id`` (``message_id``), so every retry sends the same bytes under the same id; the
claim's transaction is committed before the request, so none stays open while the receiver
answers. Each attempt is signed anew (Standard Webhooks, :mod:`crm_notify.actions.signing`)
with its own ``webhook-timestamp``.

The answer is mapped like an ESP's:

- 2xx: ``sent``, with ``response_status``;
- 408, 429 and 5xx, timeouts and network errors: :class:`~crm_notify.errors.EspTransientError`
  (with ``Retry-After``), which the delivery service retries exactly as a transient ESP
  failure;
- any other status (3xx: redirects are not followed; 4xx): ``failed``, with the status and the
  start of the answer in ``last_error``.

A row whose rule or action no longer exists, whose body does not render, or whose headers or
secret cannot be resolved fails at once (permanently). Logs name notification ids, rules and
actions, never URLs, headers or bodies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col

from crm_notify._net import PUBLIC_ONLY, OutboundPolicy, blocked_reason, outbound_client
from crm_notify.actions.body import CONTENT_TYPES
from crm_notify.actions.model import WebhookAction
from crm_notify.actions.signing import (
    SigningSecret,
    default_secret,
    new_message_id,
    signature_headers,
)
from crm_notify.clock import now
from crm_notify.db import session_scope
from crm_notify.errors import EspPermanentError, EspTransientError, RenderError
from crm_notify.esp.http import retry_after_s
from crm_notify.outbox import repository
from crm_notify.outbox.models import Notification

if TYPE_CHECKING:
    from crm_notify.config import Settings
    from crm_notify.rules.engine import RuleSet

logger = logging.getLogger(__name__)

#: Seconds to wait for a receiver to connect, and then for its answer (the spec: 15 to 30 s).
REQUEST_TIMEOUT_S = 15.0
#: Characters of a receiver's answer kept in ``last_error``.
ERROR_BODY_CHARS = 300
#: The name webhook rows are recorded under (``Notification.esp``, error messages).
SENDER_NAME = "webhook"
#: Statuses besides 5xx that are worth retrying: request timeout, too many requests.
TRANSIENT_STATUSES = frozenset({408, 429})
#: Seconds to wait between attempts to record a request the receiver accepted.
RECORD_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)
#: ``User-Agent`` of every request.
USER_AGENT = "crm-notify"


@dataclass(frozen=True, slots=True, repr=False)
class WebhookRequest:
    """One prepared request; ``repr`` hides the URL and headers (they may carry credentials)."""

    notification_id: int
    action: str
    method: str
    url: str
    headers: dict[str, str]
    content_type: str | None
    body: bytes
    message_id: str
    secret: SigningSecret | None

    def __repr__(self) -> str:
        return f"WebhookRequest(notification={self.notification_id}, action={self.action!r})"


class WebhookActionSender:
    """Sends the requests of webhook actions (see the module docstring).

    Parameters:
        rules: the loaded rules; a row's action is found by its rule and action name.
        environ: where ``${NAME}`` references are read from (the process environment).
        default_secret: the signing secret of actions without ``secret:``
            (``CRM_NOTIFY_WEBHOOK_SECRET``); ``None``: those are sent unsigned.
        timeout_s: connect and read timeout of one request.
        policy: the addresses requests may reach (default: public ones only).
        transport: an ``httpx`` transport (tests).
    """

    def __init__(
        self,
        *,
        rules: RuleSet,
        environ: Mapping[str, str],
        default_secret: SigningSecret | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        policy: OutboundPolicy = PUBLIC_ONLY,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._rules = rules
        self._environ = environ
        self._default_secret = default_secret
        self._client = outbound_client(
            timeout_s=timeout_s, user_agent=USER_AGENT, policy=policy, transport=transport
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, rules: RuleSet, environ: Mapping[str, str]
    ) -> WebhookActionSender:
        """The sender configured by ``settings`` (``CRM_NOTIFY_WEBHOOK_SECRET``).

        Raises:
            ConfigurationError: ``CRM_NOTIFY_WEBHOOK_SECRET`` is not a signing secret.
        """
        secret = default_secret(settings)
        return cls(
            rules=rules,
            environ=environ,
            default_secret=secret,
            policy=OutboundPolicy.from_settings(settings),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def deliver(self, session: Session, row: Notification) -> str:
        """Deliver one claimed webhook row (its claim's transaction is committed here).

        Parameters:
            session: the claim's session; no transaction is left open on return.
            row: the claimed notification (status ``sending``).

        Raises:
            EspTransientError: the receiver is unavailable or asked to wait: retry later (the
                row is still ``sending``; the caller moves it to ``retrying``).

        Returns:
            ``sent`` or ``failed``.
        """
        notification_id = row.id
        assert notification_id is not None
        engine = session.get_bind()
        assert isinstance(engine, Engine)
        try:
            request = self._prepare(session, row)
        except (RenderError, LookupError, ValueError) as exc:  # MissingVariableError: Lookup
            kind = "render" if isinstance(exc, RenderError) else "action"
            error = f"{kind}: {exc}"
            repository.mark_failed(session=session, notification_id=notification_id, error=error)
            session.commit()
            logger.warning("notification %s (webhook) failed before sending (%s)", row.id, kind)
            return "failed"
        session.commit()  # the claim and the stored body hold; nothing stays locked meanwhile
        try:
            status = self.send(request)
        except EspTransientError as exc:
            with session_scope(engine) as writer:
                _set_status(writer, notification_id, exc.status_code)
            raise
        except EspPermanentError as exc:
            with session_scope(engine) as writer:
                repository.mark_failed(
                    session=writer, notification_id=notification_id, error=str(exc)
                )
                _set_status(writer, notification_id, exc.status_code)
            logger.warning(
                "notification %s: webhook action %s of rule %s refused (status %s)",
                notification_id,
                request.action,
                row.rule,
                exc.status_code,
            )
            return "failed"
        _record(engine, lambda writer: _mark_sent(writer, notification_id, status), notification_id)
        return "sent"

    def send(self, request: WebhookRequest) -> int:
        """Sign and send ``request`` once.

        Raises:
            EspTransientError: a timeout, a network error, or 408, 429 or 5xx (with
                ``Retry-After`` when the receiver gave one).
            EspPermanentError: another status that is not 2xx, a URL httpx refuses, or an
                address the outbound policy refuses.

        Returns:
            The receiver's (2xx) status.
        """
        try:
            http_request = self.http_request(request, timestamp=int(now().timestamp()))
            response = self._client.send(http_request)
        except httpx.TimeoutException as exc:
            raise EspTransientError(SENDER_NAME, f"timeout: {exc}") from exc
        except httpx.TransportError as exc:
            refused = blocked_reason(exc)
            if refused is not None:
                raise EspPermanentError(SENDER_NAME, refused) from exc
            raise EspTransientError(SENDER_NAME, f"network error: {exc}") from exc
        except httpx.InvalidURL as exc:
            raise EspPermanentError(SENDER_NAME, f"invalid URL: {exc}") from exc
        except httpx.RequestError as exc:  # e.g. an answer whose encoding cannot be decoded
            raise EspTransientError(SENDER_NAME, f"{type(exc).__name__}: {exc}") from exc
        except UnicodeEncodeError as exc:  # a header value (from ${NAME}) that is not ASCII
            raise EspPermanentError(
                SENDER_NAME, "a header value is not ASCII text (check its ${NAME} value)"
            ) from exc
        return _classify(response)

    def http_request(self, request: WebhookRequest, *, timestamp: int) -> httpx.Request:
        """The HTTP request :meth:`send` makes for ``request`` at ``timestamp``, built but not
        sent: every header as it goes out (the client's, the action's, ``Content-Type``, the
        signature's) and the body. Used by :meth:`send` and by ``crm-notify preview``.

        Raises:
            httpx.InvalidURL: a URL httpx refuses.
        """
        headers = dict(request.headers)
        if request.content_type is not None:
            headers["Content-Type"] = request.content_type
        headers.update(
            signature_headers(
                message_id=request.message_id,
                timestamp=timestamp,
                body=request.body,
                secret=request.secret,
            )
        )
        return self._client.build_request(
            request.method, request.url, headers=headers, content=request.body or None
        )

    def request_for(
        self, action: WebhookAction, *, notification_id: int, body: str, message_id: str
    ) -> WebhookRequest:
        """The request of ``action`` with ``body`` (see :func:`render_body`): its URL, headers
        and secret resolved from the environment. Nothing is stored or sent.

        Raises:
            MissingVariableError: a referenced variable is not set.
            ValueError: a header value contains a line break or NUL once resolved, or the
                secret is not a signing secret.
        """
        return WebhookRequest(
            notification_id=notification_id,
            action=action.name,
            method=action.method,
            url=action.resolved_url(self._environ),
            headers=action.resolved_headers(self._environ),
            content_type=CONTENT_TYPES[action.content_type] if action.body else None,
            body=body.encode("utf-8"),
            message_id=message_id,
            secret=action.secret(self._environ, self._default_secret),
        )

    def _action(self, row: Notification) -> WebhookAction:
        rule = self._rules.by_name(row.rule)
        for action in rule.actions if rule is not None else ():
            if action.name == row.template:
                return action
        raise LookupError(f"rule {row.rule!r} has no webhook action {row.template!r} any more")

    def _prepare(self, session: Session, row: Notification) -> WebhookRequest:
        """Find the row's action, render and store its body on the first attempt, and resolve
        its headers and secret."""
        assert row.id is not None
        action = self._action(row)
        message_id, text = row.message_id, row.message
        if text is None or message_id is None:
            message_id = new_message_id()
            # ``gate``: what a send gate's integration attached on release (empty without one)
            context = {**row.context, "gate": row.gate_data or {}}
            text = render_body(action, rule=row.rule, context=context, message_id=message_id)
            session.execute(
                sa.update(Notification)
                .where(col(Notification.id) == row.id)
                .values(
                    message=text,
                    message_id=message_id,
                    subject=f"{action.method} {action.target}"[:998],
                )
            )
        return self.request_for(action, notification_id=row.id, body=text, message_id=message_id)


def render_body(
    action: WebhookAction, *, rule: str, context: Mapping[str, Any], message_id: str
) -> str:
    """The body text of a request of ``action``, rendered in the sandbox with ``context`` and
    ``webhook`` (``id``, ``rule``, ``action``); empty for an action without a body.

    Raises:
        RenderError: the body does not render (see
            :meth:`~crm_notify.actions.body.WebhookBody.render`).
    """
    webhook = {"id": message_id, "rule": rule, "action": action.name}
    rendered = action.body.render({**context, "webhook": webhook}) if action.body else None
    return rendered.data.decode("utf-8") if rendered is not None else ""


def deliver_webhook(sender: WebhookActionSender | None, session: Session, row: Notification) -> str:
    """Deliver a claimed webhook row with ``sender``; without one (a process built without
    webhook support), the row fails, saying so.

    Raises:
        EspTransientError: as :meth:`WebhookActionSender.deliver`.

    Returns:
        ``sent`` or ``failed``.
    """
    if sender is not None:
        return sender.deliver(session, row)
    assert row.id is not None
    repository.mark_failed(
        session=session,
        notification_id=row.id,
        error="webhook actions are not set up in this process (no sender configured)",
    )
    session.commit()
    return "failed"


def _classify(response: httpx.Response) -> int:
    status = response.status_code
    if 200 <= status < 300:
        return status
    answer = " ".join(response.text.split())[:ERROR_BODY_CHARS]
    if status in TRANSIENT_STATUSES or status >= 500:
        raise EspTransientError(
            SENDER_NAME,
            f"receiver answered {status}: {answer}",
            status_code=status,
            body=answer,
            retry_after_s=retry_after_s(response.headers.get("Retry-After")),
        )
    what = "redirected (not followed; fix the URL)" if 300 <= status < 400 else "refused"
    raise EspPermanentError(
        SENDER_NAME, f"receiver {what} with {status}: {answer}", status_code=status, body=answer
    )


def _set_status(session: Session, notification_id: int, status: int | None) -> None:
    session.execute(
        sa.update(Notification)
        .where(col(Notification.id) == notification_id)
        .values(response_status=status)
    )


def _mark_sent(session: Session, notification_id: int, status: int) -> None:
    repository.mark_sent(
        session=session, notification_id=notification_id, esp=SENDER_NAME, esp_message_id=None
    )
    _set_status(session, notification_id, status)


def _record(engine: Engine, write: Callable[[Session], None], notification_id: int) -> None:
    """Record an accepted request, waiting out a short database outage: losing this write
    would send the request again after the lease."""
    for delay_s in (*RECORD_RETRY_DELAYS_S, None):
        try:
            with session_scope(engine) as session:
                write(session)
            return
        except OperationalError:
            if delay_s is None:
                logger.error(
                    "notification %s (webhook) was accepted but could not be marked sent; it "
                    "may be sent again after the lease",
                    notification_id,
                )
                raise
            time.sleep(delay_s)
