"""The SMTP adapter: STARTTLS or implicit TLS, authentication, one reused connection per thread.

A stored message is sent as stored when that is byte for byte what ``smtplib``'s
``send_message`` would send after parsing it (:func:`verbatim_envelope` checks this
conservatively); otherwise it is parsed and sent with ``send_message``, as any message is.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import email.utils
import re
import smtplib
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from crm_notify.errors import EspError, EspPermanentError, EspTransientError
from crm_notify.esp.base import STORED_MESSAGE_POLICY, EspAdapter, SendResult

#: Seconds to wait for the SMTP server on connect and on each command.
DEFAULT_TIMEOUT_S = 30.0

#: Longest line ``email``'s generator re-emits unchanged (``policy.max_line_length`` of
#: :data:`~crm_notify.esp.base.STORED_MESSAGE_POLICY`): RFC 5322's limit, so a long
#: ``List-Unsubscribe`` URL is neither refolded nor RFC 2047-encoded.
MAX_VERBATIM_LINE = 998
#: A header's first line as the generator re-emits it: ``Name: value``, one space.
_HEADER_LINE = re.compile(r"[!-9;-~]+: \S")
#: Characters ``str.splitlines`` breaks on besides CR and LF (a header would be re-joined).
_OTHER_LINE_BREAKS = frozenset("\x0b\x0c\x1c\x1d\x1e")


def verbatim_envelope(text: str) -> tuple[str, list[str]] | None:
    """The envelope (sender, recipients) ``smtplib.SMTP.send_message`` would use for the
    parsed ``text``, when it would also send exactly ``text`` as ASCII; else ``None``.

    ``send_message`` re-emits a parsed message line for line when the text is ASCII with
    CRLF line endings, no line is longer than :data:`MAX_VERBATIM_LINE`, every header starts
    ``Name: value``, parts are not nested, and there is no ``Bcc`` (removed when sending) and
    no ``Resent-`` block. Messages built by :func:`crm_notify.render.mime.build_message` are
    like that unless they carry non-ASCII text, which is then sent the long way.
    """
    crlf = text.count("\r\n")
    if not text.isascii() or text.count("\n") != crlf or text.count("\r") != crlf:
        return None
    if not _OTHER_LINE_BREAKS.isdisjoint(text):
        return None
    message = email.parser.Parser(policy=STORED_MESSAGE_POLICY).parsestr(text, headersonly=True)
    maintype, delimiter = message.get_content_maintype(), None
    if maintype == "message":
        return None
    if maintype == "multipart":
        boundary = message.get_boundary()
        if not boundary:  # the generator would invent one
            return None
        delimiter = f"--{boundary}"
    in_headers, top = True, True
    for line in text.split("\r\n"):
        if len(line) > MAX_VERBATIM_LINE:
            return None
        if in_headers:
            if line == "":
                in_headers = top = False
            elif line[:1] not in (" ", "\t"):
                if not _HEADER_LINE.match(line):
                    return None
                if not top and line.lower().startswith(
                    ("content-type: multipart", "content-type: message")
                ):
                    return None
        elif line == delimiter:
            in_headers = True
    if any(name in message for name in ("Resent-Date", "Bcc", "Resent-Bcc")):
        return None
    # As send_message computes them:
    sender = message["Sender"] if "Sender" in message else message["From"]
    from_addr = email.utils.getaddresses([sender])[0][1]
    fields = [f for f in (message["To"], message["Bcc"], message["Cc"]) if f is not None]
    to_addrs = [address for _name, address in email.utils.getaddresses(fields)]
    if not to_addrs:
        return None
    return from_addr, to_addrs


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

    def send_text(self, text: str) -> SendResult:
        """Send a stored message as stored when :func:`verbatim_envelope` allows, else parse it
        and use :meth:`send` (see the module docstring)."""
        envelope = verbatim_envelope(text)
        if envelope is None:
            return super().send_text(text)
        from_addr, to_addrs = envelope
        data = text.encode("ascii")
        try:
            self._transact(lambda client: client.sendmail(from_addr, to_addrs, data))
        except EspError:
            raise
        except OSError as exc:
            raise EspTransientError(self.name, f"network error: {exc}") from exc
        return SendResult(esp=self.name, provider_message_id=None)

    def _deliver(self, message: EmailMessage) -> str | None:
        self._transact(lambda client: client.send_message(message))
        return None

    def _transact(self, send: Callable[[smtplib.SMTP], dict[str, Any]]) -> None:
        # A reused connection may have been closed by the server while idle: reconnect once.
        # Nothing was accepted when the server is found gone, so the retry cannot duplicate.
        for attempt in (1, 2):
            client = self._connection()
            try:
                refused = send(client)
            except smtplib.SMTPServerDisconnected as exc:
                self._drop_connection()
                if attempt == 2:
                    raise EspTransientError(
                        self.name, f"server disconnected: {exc}", maybe_accepted=True
                    ) from exc
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
            except OSError as exc:  # mid-transaction: the message may have been taken
                self._drop_connection()
                raise EspTransientError(
                    self.name, f"network error: {exc}", maybe_accepted=True
                ) from exc
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
