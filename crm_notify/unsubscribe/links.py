"""Unsubscribe and preference links for the notifications being rendered."""

from __future__ import annotations

from crm_notify.guards.consent import TRANSACTIONAL
from crm_notify.outbox.models import Notification
from crm_notify.unsubscribe.tokens import make_token, preferences_url, unsubscribe_url


class UnsubscribeLinks:
    """Builds a notification's signed links on the service's public base URL.

    Parameters:
        base_url: ``Settings.base_url`` (``CRM_NOTIFY_PUBLIC_URL``).
        secret_key: from :func:`crm_notify.unsubscribe.tokens.load_secret_key`.
    """

    def __init__(self, *, base_url: str, secret_key: bytes) -> None:
        self.base_url = base_url.rstrip("/")
        self._secret_key = secret_key

    def for_notification(self, notification: Notification) -> tuple[str, str] | None:
        """``(unsubscribe_url, preferences_url)``, or ``None`` for transactional mail and
        mail to no contact."""
        if notification.purpose == TRANSACTIONAL or notification.contact_id is None:
            return None
        token = make_token(
            self._secret_key,
            contact_id=notification.contact_id,
            purpose=notification.purpose,
            notification_id=notification.id,
        )
        return unsubscribe_url(self.base_url, token), preferences_url(self.base_url, token)
