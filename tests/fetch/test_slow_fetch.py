"""A slow fetch holds up only its own email: the runtime's delivery threads send other emails
meanwhile (no transaction, so no SQLite write lock, stays open while a service answers)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crm_notify.events.schemas import parse_call
from crm_notify.migrations import upgrade
from crm_notify.runtime import Runtime
from tests.esp._api_server import Answer, ApiServer
from tests.fetch.conftest import ENVIRON, PRODUCTS, TEMPLATES, reco_rule, reco_url
from tests.support.servers import SmtpSink, write_tree

#: How long the recommendation service takes to answer (the step waits up to 8 seconds).
SLOW_S = 4.0


def _call(obj: dict[str, Any]) -> Any:
    moment = datetime.now(UTC)
    body = {"userId": "u1", "timestamp": moment.isoformat(), **obj}
    return parse_call(body, type_hint=None, received_at=moment)


@pytest.fixture
def runtime(
    make_settings: Any,
    tmp_path: Path,
    smtp_sink: SmtpSink,
    api: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Runtime]:
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    slow = reco_rule(reco_url(api), timeout="8s", fallback={"products": []})
    note = {
        "name": "order-note",
        "trigger": {"event": "Order Completed"},
        "template": "plain",
        "purpose": "transactional",
    }
    write_tree(
        tmp_path / "rules",
        {f"{rule['name']}.yaml": json.dumps(rule) for rule in (slow, note)},
    )
    write_tree(tmp_path / "templates", TEMPLATES)
    settings = make_settings(
        rules_dir=tmp_path / "rules",
        templates_dir=tmp_path / "templates",
        esp_url=smtp_sink.url,
        worker_threads=4,
    )
    built = Runtime.from_settings(settings)
    upgrade(built.engine)
    built.start_background(scheduler=False)
    yield built
    built.close()


def test_a_slow_fetch_does_not_hold_up_other_sends(
    runtime: Runtime, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given a recommendation service that takes 4 seconds to answer
    api.default = Answer(200, json=PRODUCTS, delay_s=SLOW_S)
    runtime.intake.ingest(
        [_call({"type": "identify", "traits": {"email": "ala@example.com", "first_name": "Ala"}})]
    )
    # When a cart email starts its fetch
    runtime.intake.ingest(
        [_call({"type": "track", "event": "Cart Viewed", "properties": {"cart_id": "C1"}})]
    )
    deadline = time.monotonic() + 10
    while not api.requests:
        assert time.monotonic() < deadline, "the fetch did not start"
        time.sleep(0.02)
    fetch_started = time.monotonic()
    # And another rule's email is decided meanwhile
    runtime.intake.ingest(
        [_call({"type": "track", "event": "Order Completed", "properties": {"order_id": "O1"}})]
    )
    # Then that email reaches the SMTP server before the fetch has its answer
    (first,) = smtp_sink.wait_for(1, timeout=SLOW_S - 1)
    assert first["Subject"] == "Hello"
    assert time.monotonic() - fetch_started < SLOW_S
    # And the cart email follows once the service answered, with its products
    messages = smtp_sink.wait_for(2, timeout=15)
    assert messages[1]["Subject"] == "Picks for Ala"
    assert time.monotonic() - fetch_started >= SLOW_S - 0.5
    assert len(api.requests) == 1
