"""The ESP adapter extension point.

An adapter takes a finished MIME message and hands it to a provider. The base owns the flow
(:meth:`EspAdapter.send` checks the recipients, calls the hook, wraps unexpected errors); a
subclass fills :meth:`EspAdapter._deliver` and, when it holds connections, :meth:`close`.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage

from crm_notify.errors import EspError, EspPermanentError, EspTransientError

#: How stored messages are parsed (and re-emitted by ``smtplib``): SMTP line endings, lines
#: up to RFC 5322's 998 characters kept as they are (a long ``List-Unsubscribe`` URL must not
#: be refolded or RFC 2047-encoded).
STORED_MESSAGE_POLICY = email.policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class SendResult:
    """A provider accepted the message.

    Parameters:
        esp: the adapter's name.
        provider_message_id: the id the provider gave the message (for tracking), if any.
    """

    esp: str
    provider_message_id: str | None


class EspAdapter:
    """Base class of every ESP adapter.

    Subclasses set :attr:`name` and implement :meth:`_deliver`. Adapters are shared by the
    delivery threads of one process and must be thread-safe.
    """

    #: Short name used in logs, the outbox and errors, e.g. ``"smtp"``.
    name = "base"

    def send(self, message: EmailMessage) -> SendResult:
        """Deliver ``message`` to every address in its ``To`` header.

        Raises:
            EspTransientError: the provider may accept it later.
            EspPermanentError: the provider will never accept it.
        """
        if not message.get_all("To"):
            raise EspPermanentError(self.name, "message has no To header")
        try:
            provider_id = self._deliver(message)
        except EspError:
            raise
        except OSError as exc:
            raise EspTransientError(self.name, f"network error: {exc}") from exc
        return SendResult(esp=self.name, provider_message_id=provider_id)

    def send_text(self, text: str) -> SendResult:
        """Deliver a message stored as text (``Notification.message``, SMTP line endings).

        The default parses it and calls :meth:`send`. An adapter may override this to hand
        the text over more directly, provided the provider receives exactly what :meth:`send`
        would have sent.

        Raises:
            EspTransientError: the provider may accept it later.
            EspPermanentError: the provider will never accept it.
        """
        message = email.message_from_string(text, policy=STORED_MESSAGE_POLICY)
        assert isinstance(message, EmailMessage)
        return self.send(message)

    def _deliver(self, message: EmailMessage) -> str | None:
        """Hand ``message`` to the provider and return its message id (if it gives one)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _deliver()")

    def close(self) -> None:
        """Release connections held by this adapter (default: nothing to release)."""
