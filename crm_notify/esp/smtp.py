"""The SMTP adapter: STARTTLS or implicit TLS, authentication, one reused connection per thread."""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage

from crm_notify.errors import EspPermanentError, EspTransientError
from crm_notify.esp.base import EspAdapter

#: Seconds to wait for the SMTP server on connect and on each command.
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SmtpOptions:
    """Where and how to connect.

    Parameters:
        host, port: the server.
        username, password: for AUTH, when both are given.
        starttls: upgrade a plain connection with STARTTLS (port 587).
        implicit_tls: connect with TLS from the start (``smtps://``, port 465).
        timeout_s: socket timeout in seconds.
        verify_tls: check the server certificate (turn off only for test servers).
    """

    host: str
    port: int = 25
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    implicit_tls: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    verify_tls: bool = True


class SmtpAdapter(EspAdapter):
    """Sends through an SMTP server, keeping one open connection per delivery thread."""

    name = "smtp"

    def __init__(self, options: SmtpOptions) -> None:
        self.options = options
        self._local = threading.local()
        self._all: list[smtplib.SMTP] = []
        self._all_lock = threading.Lock()

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.options.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> smtplib.SMTP:
        opts = self.options
        client: smtplib.SMTP
        if opts.implicit_tls:
            client = smtplib.SMTP_SSL(
                opts.host, opts.port, timeout=opts.timeout_s, context=self._tls_context()
            )
        else:
            client = smtplib.SMTP(opts.host, opts.port, timeout=opts.timeout_s)
            if opts.starttls:
                client.starttls(context=self._tls_context())
        if opts.username and opts.password:
            try:
                client.login(opts.username, opts.password)
            except smtplib.SMTPAuthenticationError as exc:
                client.close()
                raise EspPermanentError(
                    self.name, "authentication failed", status_code=exc.smtp_code
                ) from exc
        with self._all_lock:
            self._all.append(client)
        return client

    def _connection(self) -> smtplib.SMTP:
        client: smtplib.SMTP | None = getattr(self._local, "client", None)
        if client is None:
            client = self._connect()
            self._local.client = client
        return client

    def _drop_connection(self) -> None:
        client: smtplib.SMTP | None = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._all_lock:
                if client in self._all:
                    self._all.remove(client)
            with contextlib.suppress(OSError):
                client.close()

    def _deliver(self, message: EmailMessage) -> str | None:
        # A reused connection may have been closed by the server while idle: reconnect once.
        # Nothing was accepted when the server is found gone, so the retry cannot duplicate.
        for attempt in (1, 2):
            client = self._connection()
            try:
                refused = client.send_message(message)
            except smtplib.SMTPServerDisconnected as exc:
                self._drop_connection()
                if attempt == 2:
                    raise EspTransientError(self.name, f"server disconnected: {exc}") from exc
                continue
            except smtplib.SMTPRecipientsRefused as exc:
                self._reset(client)
                codes = [code for code, _msg in exc.recipients.values()]
                error_cls = (
                    EspTransientError if all(400 <= c < 500 for c in codes) else EspPermanentError
                )
                raise error_cls(self.name, "all recipients refused", status_code=codes[0]) from exc
            except smtplib.SMTPResponseException as exc:
                self._reset(client)
                text = (
                    exc.smtp_error.decode("utf-8", "replace")
                    if isinstance(exc.smtp_error, bytes)
                    else str(exc.smtp_error)
                )
                if 400 <= exc.smtp_code < 500:
                    raise EspTransientError(self.name, text, status_code=exc.smtp_code) from exc
                raise EspPermanentError(self.name, text, status_code=exc.smtp_code) from exc
            except OSError as exc:
                self._drop_connection()
                raise EspTransientError(self.name, f"network error: {exc}") from exc
            if refused:
                codes = [code for code, _msg in refused.values()]
                raise EspPermanentError(self.name, "some recipients refused", status_code=codes[0])
            return None
        return None  # pragma: no cover - the loop always returns or raises

    def _reset(self, client: smtplib.SMTP) -> None:
        try:
            client.rset()
        except (smtplib.SMTPException, OSError):
            self._drop_connection()

    def close(self) -> None:
        """Close every connection this adapter opened, in any thread."""
        with self._all_lock:
            clients, self._all = self._all, []
        for client in clients:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
