"""The HTTP plumbing of API adapters: ESP URLs, and answers mapped onto our errors, against a
real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp.http import ApiRequest, HttpApiAdapter, parse_esp_url, retry_after_s


class Answers:
    """What the server answers next: (status, headers, body, delay)."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, dict[str, str], bytes, float]] = []
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Answers]]:
    answers = Answers()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answers.seen.append((self.command, self.path, dict(self.headers), body))
            status, headers, payload, delay = answers.queue.pop(0)
            time.sleep(delay)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", answers
    httpd.shutdown()
    httpd.server_close()


class EchoAdapter(HttpApiAdapter):
    name = "echo"

    def _request(self, message: EmailMessage) -> ApiRequest:
        return ApiRequest("POST", "/send", headers={"X-Key": "k"}, json={"to": message["To"]})

    def _message_id(self, response: httpx.Response, message: EmailMessage) -> str | None:
        return str(response.json()["id"])


def _message() -> EmailMessage:
    message = EmailMessage()
    message["To"] = "alice@example.com"
    message["From"] = "shop@example.com"
    message.set_content("hi")
    return message


def test_success_returns_the_providers_id_and_sends_the_built_request(
    server: tuple[str, Answers],
) -> None:
    url, answers = server
    answers.queue.append((202, {"Content-Type": "application/json"}, b'{"id": "m-1"}', 0))
    adapter = EchoAdapter(base_url=url)
    result = adapter.send(_message())
    assert (result.esp, result.provider_message_id) == ("echo", "m-1")
    ((method, path, headers, body),) = answers.seen
    assert (method, path, headers["X-Key"]) == ("POST", "/send", "k")
    assert json.loads(body) == {"to": "alice@example.com"}
    adapter.close()


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (429, {"Retry-After": "7"}, EspTransientError, 7.0),
        (503, {}, EspTransientError, None),
        (500, {}, EspTransientError, None),
        (400, {}, EspPermanentError, None),
        (401, {}, EspPermanentError, None),
    ],
)
def test_answers_map_onto_transient_and_permanent_errors(
    server: tuple[str, Answers],
    status: int,
    headers: dict[str, str],
    error: type[Exception],
    retry_after: float | None,
) -> None:
    url, answers = server
    answers.queue.append((status, headers, b'{"errors": ["nope"]}', 0))
    with pytest.raises(error) as excinfo:
        EchoAdapter(base_url=url).send(_message())
    assert getattr(excinfo.value, "status_code", None) == status
    assert "nope" in str(excinfo.value)
    if isinstance(excinfo.value, EspTransientError):
        assert excinfo.value.retry_after_s == retry_after


def test_a_timeout_is_transient(server: tuple[str, Answers]) -> None:
    url, answers = server
    answers.queue.append((200, {}, b'{"id": "late"}', 1.0))
    with pytest.raises(EspTransientError, match="timeout"):
        EchoAdapter(base_url=url, timeout_s=0.2).send(_message())


def test_a_refused_connection_is_transient() -> None:
    with pytest.raises(EspTransientError, match="network error"):
        EchoAdapter(base_url="http://127.0.0.1:9", timeout_s=2).send(_message())


def test_esp_urls_take_credentials_host_path_and_options() -> None:
    url = parse_esp_url("mailgun://api:k%2Fey@/mg.example.com?region=eu")
    assert (url.provider, url.username, url.password, url.key) == ("mailgun", "api", "k/ey", "k/ey")
    assert (url.base_url, url.path, url.options) == (None, "mg.example.com", {"region": "eu"})
    assert parse_esp_url("sendgrid://KEY@").key == "KEY"
    local = parse_esp_url("postmark://T@127.0.0.1:8025?insecure=1")
    assert local.base_url == "http://127.0.0.1:8025"
    assert parse_esp_url("brevo://K@eu.proxy.example").base_url == "https://eu.proxy.example"


def test_plain_http_is_refused_to_anything_but_loopback() -> None:
    with pytest.raises(ConfigurationError, match="only to loopback"):
        parse_esp_url("sendgrid://KEY@api.sendgrid.com?insecure=1")
    assert parse_esp_url("sendgrid://KEY@[::1]:9000?insecure=1").base_url == "http://[::1]:9000"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("120") == 120.0
    later = datetime.now(UTC) + timedelta(seconds=90)
    assert 80 <= (retry_after_s(format_datetime(later, usegmt=True)) or 0) <= 90
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None
