"""Delivering one notification: claim, render once, hand to the ESP, record the outcome.

Called by the ``deliver_notification`` actor with a notification id. Safe to call any number of
times for the same id: only a claimable row is worked on, and a sent row is never sent again.
"""

from __future__ import annotations

import email
import email.policy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parseaddr
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from crm_notify.clock import now
from crm_notify.db import session_scope
from crm_notify.errors import EspPermanentError, EspTransientError, RenderError
from crm_notify.esp.base import EspAdapter
from crm_notify.outbox import repository
from crm_notify.outbox.models import Notification
from crm_notify.render.mime import build_message, make_message_id
from crm_notify.render.templates import TemplateStore

logger = logging.getLogger(__name__)

#: Backoff before retry n (1-based), capped at the last value.
RETRY_BACKOFF = (
    timedelta(seconds=10),
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
)


#: Seconds to wait between attempts to record a send the provider accepted.
MARK_SENT_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)

#: Length of the ``subject`` column (the header itself is folded, not cut).
SUBJECT_COLUMN_CHARS = 998


def _display_name(contact: dict[str, Any]) -> str | None:
    """The recipient's display name from contact data, or ``None``; only strings count."""
    name = contact.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    parts = [
        p.strip()
        for p in (contact.get("first_name"), contact.get("last_name"))
        if isinstance(p, str) and p.strip()
    ]
    return " ".join(parts) or None


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one call of :meth:`DeliveryService.deliver` did.

    ``status`` is ``skipped`` (not claimable), ``sent``, ``retrying`` or ``failed``;
    ``retry_in`` is set for ``retrying``.
    """

    status: str
    retry_in: timedelta | None = None


class DeliveryService:
    """Delivers notifications by id.

    Parameters:
        engine: the database.
        templates: where templates are rendered from.
        adapter: the ESP adapter.
        mail_from: the From header.
        max_attempts: attempts before a transient failure becomes ``failed``.
        schedule_retry: called with (notification id, delay) after a transient failure.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        templates: TemplateStore,
        adapter: EspAdapter,
        mail_from: str,
        max_attempts: int,
        schedule_retry: Callable[[int, timedelta], None] | None = None,
    ) -> None:
        self._engine = engine
        self._templates = templates
        self._adapter = adapter
        self._max_attempts = max_attempts
        self._schedule_retry = schedule_retry
        self._from_name, self._from_address = parseaddr(mail_from)
        self._domain = self._from_address.rpartition("@")[2] or "localhost"

    def deliver(self, notification_id: int) -> DeliveryOutcome:
        """Attempt delivery of one notification; see the module docstring."""
        with session_scope(self._engine) as session:
            row = repository.claim_for_delivery(session=session, notification_id=notification_id)
            if row is None:
                return DeliveryOutcome("skipped")
            text, attempts = row.message, row.attempts
            if text is None:
                try:
                    rendered = self._render(row)
                except Exception as exc:  # any failure to build the message is permanent
                    session.expire(row)
                    kind = "render" if isinstance(exc, RenderError) else type(exc).__name__
                    repository.mark_failed(
                        session=session, notification_id=notification_id, error=f"{kind}: {exc}"
                    )
                    logger.warning("notification %s failed to render (%s)", notification_id, kind)
                    return DeliveryOutcome("failed")
                repository.store_message(
                    session=session, notification_id=notification_id, **rendered
                )
                text = rendered["message"]
        try:
            result = self._adapter.send_text(text)
        except EspTransientError as exc:
            return self._after_transient(notification_id, attempts, exc)
        except EspPermanentError as exc:
            with session_scope(self._engine) as session:
                repository.mark_failed(
                    session=session, notification_id=notification_id, error=str(exc)
                )
            logger.warning(
                "notification %s rejected permanently by %s (status %s)",
                notification_id,
                exc.esp,
                exc.status_code,
            )
            return DeliveryOutcome("failed")
        self._record_sent(notification_id, result.esp, result.provider_message_id)
        return DeliveryOutcome("sent")

    def _record_sent(self, notification_id: int, esp: str, esp_message_id: str | None) -> None:
        # The provider has the message now: losing this write would mean a second send after
        # the lease, so a short database outage is waited out here.
        for delay_s in (*MARK_SENT_RETRY_DELAYS_S, None):
            try:
                with session_scope(self._engine) as session:
                    repository.mark_sent(
                        session=session,
                        notification_id=notification_id,
                        esp=esp,
                        esp_message_id=esp_message_id,
                    )
                return
            except OperationalError:
                if delay_s is None:
                    logger.error(
                        "notification %s was sent but could not be marked sent; it may be "
                        "sent again after the lease",
                        notification_id,
                    )
                    raise
                time.sleep(delay_s)

    def _render(self, row: Notification) -> dict[str, str]:
        """The message of ``row`` and the columns stored with it (see ``store_message``)."""
        rendered = self._templates.render(row.template, row.context, language=row.language)
        message_id = make_message_id(self._domain)
        contact = row.context.get("contact") or {}
        name = _display_name(contact)
        message = build_message(
            rendered,
            from_address=self._from_address,
            from_name=self._from_name or None,
            to_address=row.to_address,
            to_name=name,
            message_id=message_id,
            extra_headers={"X-CRM-Notify-Id": str(row.id), "X-CRM-Notify-Rule": row.rule},
        )
        return {
            "message": message.as_string(policy=email.policy.SMTP),
            "message_id": message_id,
            "subject": rendered.subject[:SUBJECT_COLUMN_CHARS],
            "language": rendered.language,
        }

    def _after_transient(
        self, notification_id: int, attempts: int, exc: EspTransientError
    ) -> DeliveryOutcome:
        with session_scope(self._engine) as session:
            if attempts >= self._max_attempts:
                repository.mark_failed(
                    session=session,
                    notification_id=notification_id,
                    error=f"gave up after {attempts} attempts: {exc}",
                )
                return DeliveryOutcome("failed")
            delay = RETRY_BACKOFF[min(attempts, len(RETRY_BACKOFF)) - 1]
            if exc.retry_after_s is not None:
                delay = max(delay, timedelta(seconds=exc.retry_after_s))
            repository.mark_retrying(
                session=session,
                notification_id=notification_id,
                error=str(exc),
                next_attempt_at=now() + delay,
            )
        logger.info(
            "notification %s will be retried in %s (%s, status %s)",
            notification_id,
            delay,
            exc.esp,
            exc.status_code,
        )
        if self._schedule_retry is not None:
            self._schedule_retry(notification_id, delay)
        return DeliveryOutcome("retrying", retry_in=delay)
