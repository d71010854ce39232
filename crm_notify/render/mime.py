"""Turn a :class:`RenderedMessage` into a MIME email, refusing header injection."""

from __future__ import annotations

import email.policy
import email.utils
import re
from collections.abc import Mapping
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage

from crm_notify import clock
from crm_notify.errors import RenderError
from crm_notify.render.templates import RenderedMessage

#: Headers build_message sets itself; extra_headers may not replace them.
MANAGED_HEADERS = frozenset(
    {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)

#: CR, LF, NUL and the other characters ``str.splitlines`` treats as line breaks.
FORBIDDEN_IN_HEADERS = frozenset("\r\n\0\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")

#: A header field name (RFC 5322 ftext: printable ASCII except ":").
_FIELD_NAME = re.compile(r"[!-9;-~]+")


def make_message_id(domain: str) -> str:
    """Return a new unique ``<...@domain>`` Message-ID.

    Parameters:
        domain: the right-hand side, usually the sender's domain.

    Raises:
        RenderError: ``domain`` is empty or contains a line break.
    """
    _check_value("Message-ID domain", domain)
    if not domain:
        raise RenderError("Message-ID domain is empty")
    return email.utils.make_msgid(domain=domain)


def build_message(
    rendered: RenderedMessage,
    *,
    from_address: str,
    to_address: str,
    to_name: str | None = None,
    from_name: str | None = None,
    message_id: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    """Build the MIME message: multipart/alternative (text, then HTML) or a single part, UTF-8.

    Parameters:
        rendered: the rendered subject and bodies.
        from_address: the sender's address (``addr-spec``, no display name).
        to_address: the recipient's address.
        to_name: the recipient's display name, encoded as needed.
        from_name: the sender's display name.
        message_id: the Message-ID; a new one on the sender's domain when omitted.
        extra_headers: further headers such as ``List-Unsubscribe``; cannot replace the headers
            set here.
        date: the Date header; ``clock.now()`` when omitted (naive values are UTC).

    Raises:
        RenderError: a header value contains a line break (naming the header), an address is
            invalid, an extra header is malformed or managed, or the message has no body.

    Returns:
        The message, with the ``SMTP`` policy (``SMTPUTF8`` when an address is not ASCII).
    """
    if rendered.html is None and rendered.text is None:
        raise RenderError(f"template {rendered.template!r} rendered no body")
    _check_value("Subject", rendered.subject)
    sender = _address("From", from_address, from_name)
    recipient = _address("To", to_address, to_name)
    extras = dict(extra_headers or {})
    for name, value in extras.items():
        if not _FIELD_NAME.fullmatch(name) or name.lower() in MANAGED_HEADERS:
            raise RenderError(f"extra header name {name!r} is invalid or set by build_message")
        _check_value(name, value)
    if message_id is not None:
        _check_value("Message-ID", message_id)

    ascii_only = all(str(a.addr_spec).isascii() for a in (sender, recipient))
    message = EmailMessage(policy=email.policy.SMTP if ascii_only else email.policy.SMTPUTF8)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = rendered.subject
    message["Date"] = email.utils.format_datetime(clock.as_utc(date or clock.now()))
    message["Message-ID"] = message_id or make_message_id(sender.domain)
    message["MIME-Version"] = "1.0"
    for name, value in extras.items():
        message[name] = value

    if rendered.text is not None:
        message.set_content(rendered.text, subtype="plain", charset="utf-8")
        if rendered.html is not None:
            message.add_alternative(rendered.html, subtype="html", charset="utf-8")
    elif rendered.html is not None:
        message.set_content(rendered.html, subtype="html", charset="utf-8")
    for part in message.iter_parts():
        del part["MIME-Version"]  # set_content adds one to each part; only the top needs it
    return message


def _check_value(header: str, value: str) -> None:
    """Refuse CR, LF, NUL and any other line separator in a header value."""
    if not FORBIDDEN_IN_HEADERS.isdisjoint(value):
        raise RenderError(f"{header} header contains a line break or NUL character")


def _address(header: str, addr_spec: str, display_name: str | None = None) -> Address:
    """Parse ``addr_spec`` strictly; non-ASCII local parts are allowed (SMTPUTF8)."""
    _check_value(header, addr_spec)
    if display_name is not None:
        _check_value(f"{header} display name", display_name)
    username, _, domain = addr_spec.rpartition("@")
    # The parser refuses non-ASCII local parts outright, so check the syntax of an ASCII twin.
    ascii_twin = "".join(c if c.isascii() else "x" for c in username) + "@" + domain
    try:
        parsed = Address(addr_spec=ascii_twin)
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise RenderError(f"{header} address {addr_spec!r} is invalid: {exc}") from exc
    if not parsed.username or not parsed.domain:
        raise RenderError(f"{header} address {addr_spec!r} is invalid: needs local@domain")
    return Address(display_name=display_name or "", username=username, domain=domain)
