"""The SMTP adapter against a real aiosmtpd server on loopback."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp import FileAdapter, SmtpAdapter, adapter_from_url
from tests.support.servers import SmtpSink, free_port


def _message(to: str = "alice@example.com", subject: str = "Hello") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "shop@example.com"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    message.set_content("Body text")
    return message


def test_smtp_adapter_delivers_and_reuses_one_connection(smtp_sink: SmtpSink) -> None:
    # Given an adapter for the sink
    adapter = adapter_from_url(smtp_sink.url)
    assert isinstance(adapter, SmtpAdapter)
    # When three messages are sent from one thread
    for n in range(3):
        adapter.send(_message(subject=f"Hello {n}"))
    # Then all arrive, over a single SMTP connection
    received = smtp_sink.wait_for(3)
    assert [m["Subject"] for m in received] == ["Hello 0", "Hello 1", "Hello 2"]
    assert len(adapter._all) == 1
    adapter.close()


def test_smtp_adapter_reconnects_after_the_server_dropped_the_connection(
    smtp_sink: SmtpSink,
) -> None:
    # Given a connection that the server side has since closed
    adapter = adapter_from_url(smtp_sink.url)
    adapter.send(_message(subject="first"))
    assert isinstance(adapter, SmtpAdapter)
    adapter._local.client.sock.close()
    # When another message is sent
    adapter.send(_message(subject="second"))
    # Then it arrives on a new connection
    assert [m["Subject"] for m in smtp_sink.wait_for(2)] == ["first", "second"]
    adapter.close()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("451 4.7.1 Greylisted, try later", EspTransientError),
        ("550 5.1.1 No such user", EspPermanentError),
    ],
)
def test_smtp_refusals_are_classified_by_reply_code(
    smtp_sink: SmtpSink, reply: str, error: type[Exception]
) -> None:
    # Given a server that refuses recipients with the given reply
    smtp_sink.reject_with = reply
    adapter = adapter_from_url(smtp_sink.url)
    # When a message is sent, Then the failure has the matching class and code
    with pytest.raises(error) as excinfo:
        adapter.send(_message())
    assert excinfo.value.status_code == int(reply[:3])  # type: ignore[attr-defined]
    # And the connection stays usable once the server accepts again
    smtp_sink.reject_with = None
    adapter.send(_message(subject="after"))
    assert smtp_sink.wait_for(1)[0]["Subject"] == "after"
    adapter.close()


def test_unreachable_smtp_server_is_a_transient_error() -> None:
    # Given nothing listening on the port
    adapter = adapter_from_url(f"smtp://127.0.0.1:{free_port()}?timeout=2")
    # When sending, Then the failure is worth retrying
    with pytest.raises(EspTransientError):
        adapter.send(_message())


def test_smtp_url_options_are_parsed() -> None:
    adapter = adapter_from_url("smtp://us%40er:p%3Ass@mail.example:587?starttls=1&timeout=5")
    assert isinstance(adapter, SmtpAdapter)
    opts = adapter.options
    assert (opts.host, opts.port, opts.username, opts.password) == (
        "mail.example",
        587,
        "us@er",
        "p:ss",
    )
    assert opts.starttls and not opts.implicit_tls and opts.timeout_s == 5


def test_file_adapter_writes_one_file_per_message_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a file adapter
    adapter = adapter_from_url(f"file://{tmp_path}/out")
    assert isinstance(adapter, FileAdapter)
    # When the same message is delivered twice and another once
    adapter.send(_message(subject="one"))
    adapter.send(_message(subject="one"))
    adapter.send(_message(subject="two"))
    # Then there are two files, not three
    files = sorted((tmp_path / "out").glob("*.eml"))
    assert len(files) == 2
    assert b"Subject: one" in b"".join(f.read_bytes() for f in files)


def test_unknown_esp_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unsupported scheme"):
        adapter_from_url("pigeon://coop")
