"""build_message: MIME structure, encoding and header-injection defence."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from freezegun import freeze_time

from crm_notify.errors import RenderError
from crm_notify.render import RenderedMessage, build_message, make_message_id

SUBJECT = "Zażółć gęślą jaźń — 🚀 shipped"


def rendered(html: str | None = "<p>Cześć</p>", text: str | None = "Cześć") -> RenderedMessage:
    return RenderedMessage(
        template="order_shipped", language="pl", subject=SUBJECT, html=html, text=text
    )


def build(message: RenderedMessage | None = None, **overrides: Any) -> EmailMessage:
    options: dict[str, Any] = {
        "from_address": "shop@example.com",
        "to_address": "zoe@example.org",
    }
    options.update(overrides)
    return build_message(message or rendered(), **options)


def parse(message: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_multipart_alternative_with_text_then_html() -> None:
    # Given a message with both bodies
    # When it is built and parsed back from bytes
    parsed = parse(build())

    # Then it is multipart/alternative, text first, both UTF-8 and intact
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    assert parts[0].get_content().rstrip("\r\n") == "Cześć"
    assert parts[1].get_content().rstrip("\r\n") == "<p>Cześć</p>"
    assert parsed["MIME-Version"] == "1.0"
    assert all("MIME-Version" not in part for part in parts)


@pytest.mark.parametrize(
    ("html", "text", "content_type"),
    [(None, "plain body", "text/plain"), ("<p>html body</p>", None, "text/html")],
)
def test_single_part_when_only_one_body(
    html: str | None, text: str | None, content_type: str
) -> None:
    # Given a message with one body
    # When it is built
    parsed = parse(build(rendered(html=html, text=text)))

    # Then it is a single, non-multipart part
    assert not parsed.is_multipart()
    assert parsed.get_content_type() == content_type
    assert parsed.get_content().rstrip("\r\n") == (html or text)


def test_utf8_subject_and_name_round_trip_encoded() -> None:
    # Given a non-ASCII subject and a display name with quotes and a comma
    name = 'Zoë "Q", Doe'

    # When the message is built
    message = build(to_name=name)
    raw = message.as_bytes()
    parsed = parse(message)

    # Then the headers are RFC 2047 encoded on the wire and decode to the originals
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    assert header_block.isascii()
    assert b"=?utf-8?" in header_block
    assert parsed["Subject"] == SUBJECT
    (address,) = parsed["To"].addresses
    assert (address.display_name, address.addr_spec) == (name, "zoe@example.org")


def test_message_id_and_date_present() -> None:
    # Given a frozen clock and no Message-ID/Date passed
    with freeze_time("2024-05-01 12:30:00"):
        # When the message is built
        parsed = parse(build())

    # Then a Message-ID on the sender's domain and the clock's Date are set
    assert parsed["Message-ID"].startswith("<")
    assert parsed["Message-ID"].endswith("@example.com>")
    assert parsedate_to_datetime(parsed["Date"]) == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def test_given_message_id_date_and_extra_headers_are_used() -> None:
    # Given explicit Message-ID, Date and extra headers
    when = datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC)
    extra = {"List-Unsubscribe": "<https://example.com/u/1>", "X-Campaign": "spring"}

    # When the message is built
    parsed = parse(build(message_id="<abc@example.com>", date=when, extra_headers=extra))

    # Then they appear unchanged
    assert parsed["Message-ID"] == "<abc@example.com>"
    assert parsedate_to_datetime(parsed["Date"]) == when
    assert parsed["List-Unsubscribe"] == "<https://example.com/u/1>"
    assert parsed["X-Campaign"] == "spring"


@pytest.mark.parametrize(
    ("overrides", "header"),
    [
        ({"message": RenderedMessage("t", "en", "Hi\r\nBcc: x@evil.com", None, "b")}, "Subject"),
        ({"to_name": "Zoe\r\nBcc: x@evil.com"}, "To display name"),
        ({"to_address": "zoe@example.org\nBcc: x@evil.com"}, "To"),
        ({"from_address": "shop@example.com\r"}, "From"),
        ({"extra_headers": {"X-Campaign": "a\r\nBcc: x@evil.com"}}, "X-Campaign"),
        ({"extra_headers": {"X-Campaign": "a\u2028b"}}, "X-Campaign"),
        ({"message_id": "<a@b>\r\nBcc: x@evil.com"}, "Message-ID"),
    ],
)
def test_line_breaks_in_headers_are_refused(overrides: dict[str, Any], header: str) -> None:
    # Given a header value carrying an injected line
    message = overrides.pop("message", None)

    # When the message is built
    # Then a RenderError names the header
    with pytest.raises(RenderError, match=f"^{header} header contains a line break"):
        build(message, **overrides)


@pytest.mark.parametrize(
    "extra",
    [{"Subject": "other"}, {"content-type": "text/plain"}, {"Bad Name": "x"}, {"X:Y": "x"}],
)
def test_extra_headers_cannot_replace_managed_or_be_malformed(extra: dict[str, str]) -> None:
    # Given an extra header that is managed or not a valid field name
    # When the message is built
    # Then it is refused
    with pytest.raises(RenderError, match="extra header name"):
        build(extra_headers=extra)


@pytest.mark.parametrize("address", ["not-an-address", "a@b.com, c@d.com", "@example.com"])
def test_invalid_addresses_are_refused(address: str) -> None:
    # Given an invalid recipient
    # When the message is built
    # Then a RenderError names the To header
    with pytest.raises(RenderError, match=r"^To address"):
        build(to_address=address)


def test_non_ascii_address_uses_smtputf8() -> None:
    # Given a recipient with a non-ASCII local part
    # When the message is built
    message = build(to_address="zoë@example.org")

    # Then the SMTPUTF8 policy writes the address as raw UTF-8 (the stdlib parser cannot
    # decode such headers back, so the bytes are checked)
    assert message.policy == email.policy.SMTPUTF8
    assert "To: zoë@example.org\r\n".encode() in message.as_bytes()


def test_make_message_id() -> None:
    # Given a domain
    # When two ids are made, and one from a domain with a line break
    first, second = make_message_id("example.com"), make_message_id("example.com")

    # Then they are unique and well formed, and the bad domain is refused
    assert first != second
    assert first.startswith("<") and first.endswith("@example.com>")
    with pytest.raises(RenderError):
        make_message_id("example.com\r\nBcc: x")
