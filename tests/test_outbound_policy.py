"""The outbound address policy: requests to other tools reach public addresses only, unless
configured otherwise (issue 8, safety)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crm_notify._net import (
    PUBLIC_ONLY,
    OutboundPolicy,
    ResponseTooLargeError,
    blocked_reason,
    outbound_client,
    read_bounded,
)
from crm_notify.config import load_settings
from crm_notify.errors import ConfigurationError
from tests.esp._api_server import ApiServer


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


def _get(policy: OutboundPolicy, url: str) -> httpx.Response:
    with outbound_client(timeout_s=2, user_agent="t", policy=policy) as client:
        return client.get(url)


def test_loopback_is_refused_by_default_and_nothing_reaches_it(api: ApiServer) -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        _get(PUBLIC_ONLY, f"{api.url}/x")
    assert blocked_reason(caught.value) == (
        "refused address 127.0.0.1 (loopback); allow it with CRM_NOTIFY_OUTBOUND_ALLOW_NETWORKS"
    )
    assert api.requests == []


def test_a_name_resolving_to_loopback_is_refused_too(api: ApiServer) -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        _get(PUBLIC_ONLY, f"http://localhost:{api.port}/x")
    assert "(loopback)" in (blocked_reason(caught.value) or "")
    assert api.requests == []


def test_an_allowed_network_is_reached(api: ApiServer) -> None:
    api.respond(200, json={"ok": True})
    response = _get(OutboundPolicy.parse("127.0.0.0/8"), f"{api.url}/x")
    assert response.json() == {"ok": True}
    assert api.last.path == "/x"


def test_an_allowed_single_address_does_not_allow_its_neighbours(api: ApiServer) -> None:
    policy = OutboundPolicy.parse("127.0.0.2")
    with pytest.raises(httpx.ConnectError) as caught:
        _get(policy, f"{api.url}/x")
    assert blocked_reason(caught.value) is not None


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "link-local"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "not public"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("fd00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "private"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4
        ("::a9fe:a9fe", "link-local"),  # IPv4-compatible
        ("::ffff:0:a00:1", "private"),  # SIIT of 10.0.0.1
        ("::ffff:0:a9fe:a9fe", "link-local"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo, client 192.0.2.45
        ("fec0::1", "site-local"),
    ],
)
def test_addresses_that_are_not_public_are_refused(address: str, kind: str) -> None:
    reason = PUBLIC_ONLY.refusal(ipaddress.ip_address(address))
    assert reason is not None and f"({kind})" in reason


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "2606:4700::6810:85e5", "8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert PUBLIC_ONLY.refusal(ipaddress.ip_address(address)) is None


def test_named_networks_and_errors() -> None:
    policy = OutboundPolicy.parse(" private , loopback ")
    assert policy.refusal(ipaddress.ip_address("10.9.9.9")) is None
    assert policy.refusal(ipaddress.ip_address("::1")) is None
    assert policy.refusal(ipaddress.ip_address("169.254.169.254")) is not None
    with pytest.raises(ValueError, match="'intranet' is not a network"):
        OutboundPolicy.parse("10.0.0.0/8, intranet")


def test_the_setting_is_checked_at_start_up(tmp_path: Path) -> None:
    named = r"CRM_NOTIFY_OUTBOUND_ALLOW_NETWORKS: '10\.0\.0\.0/33' is not a network"
    with pytest.raises(ConfigurationError, match=named):
        load_settings(None, var_dir=tmp_path, outbound_allow_networks="10.0.0.0/33")
    settings = load_settings(None, var_dir=tmp_path, outbound_allow_networks="loopback")
    assert OutboundPolicy.from_settings(settings) == OutboundPolicy.allow_loopback()


def test_read_bounded_stops_at_the_limit(api: ApiServer) -> None:
    api.respond(200, body=b"x" * 5000)
    api.respond(200, body=b"y" * 10)
    with outbound_client(timeout_s=2, user_agent="t", policy=OutboundPolicy.allow_loopback()) as c:
        with pytest.raises(ResponseTooLargeError, match="larger than 4096 bytes"):
            big = c.send(c.build_request("GET", f"{api.url}/big"), stream=True)
            read_bounded(big, 4096, timeout_s=5)
        small = c.send(c.build_request("GET", f"{api.url}/small"), stream=True)
        assert read_bounded(small, 4096, timeout_s=5) == b"y" * 10
        assert small.is_closed


def test_a_webhook_action_to_a_refused_address_fails_permanently(api: ApiServer) -> None:
    from crm_notify.actions.model import WebhookAction
    from crm_notify.actions.sender import WebhookActionSender
    from crm_notify.errors import EspPermanentError
    from crm_notify.rules.engine import RuleSet

    action = WebhookAction(name="crm", url=f"{api.url}/hook")
    sender = WebhookActionSender(rules=RuleSet(), environ={})
    try:
        request = sender.request_for(action, notification_id=1, body="", message_id="msg_1")
        with pytest.raises(EspPermanentError, match=r"refused address 127\.0\.0\.1 \(loopback\)"):
            sender.send(request)
    finally:
        sender.close()
    assert api.requests == []


def test_an_answer_that_trickles_in_stops_at_the_deadline() -> None:
    # Given a server that sends its headers, then one byte of its body every 0.2 s
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                time.sleep(0.2)
                try:
                    connection.sendall(b"x")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    policy = OutboundPolicy.allow_loopback()
    # When it is read with a one-second read timeout and deadline
    with outbound_client(timeout_s=1, user_agent="t", policy=policy) as client:
        started = time.monotonic()
        response = client.send(
            client.build_request("GET", f"http://127.0.0.1:{port}/"), stream=True
        )
        with pytest.raises(httpx.ReadTimeout, match="did not end in time"):
            read_bounded(response, 4096, timeout_s=1)
    # Then it gives up at the deadline, not after the 20 s the body would take
    assert time.monotonic() - started < 2.5
    listener.close()
