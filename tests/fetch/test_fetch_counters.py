"""The user story of issue 8: the recommendation service is slow, the email goes out with
default content, and the console's rule page and ``/metrics`` count how often the fallback was
used — through the running app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crm_notify.app import create_app
from crm_notify.console import create_user
from crm_notify.events.schemas import parse_call
from crm_notify.migrations import upgrade
from crm_notify.runtime import Runtime
from tests.console.conftest import ADMIN, PASSWORD, Console
from tests.console.test_pages import _signed_in
from tests.esp._api_server import Answer, ApiServer
from tests.fetch.conftest import ENVIRON, PRODUCTS, TEMPLATES, reco_rule, reco_url
from tests.support.servers import SmtpSink, serve, write_tree


def _call(obj: dict[str, Any]) -> Any:
    moment = datetime.now(UTC)
    body = {"userId": "u1", "timestamp": moment.isoformat(), **obj}
    return parse_call(body, type_hint=None, received_at=moment)


@pytest.fixture
def app(
    make_settings: Any,
    tmp_path: Path,
    smtp_sink: SmtpSink,
    api: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Console]:
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    rule = reco_rule(reco_url(api), fallback={"products": []})
    write_tree(tmp_path / "rules", {"cart-reco.yaml": json.dumps(rule)})
    write_tree(tmp_path / "templates", TEMPLATES)
    settings = make_settings(
        rules_dir=tmp_path / "rules",
        templates_dir=tmp_path / "templates",
        esp_url=smtp_sink.url,
        metrics_token="s3cret",
    )
    runtime = Runtime.from_settings(settings)
    upgrade(runtime.engine)
    create_user(ADMIN, PASSWORD, role="admin", engine=runtime.engine)
    try:
        with serve(create_app(runtime.settings, runtime=runtime)) as url:
            yield Console(url, runtime, 0, 0, smtp_sink)
    finally:
        runtime.close()


def _fetch_samples(url: str) -> dict[tuple[str, str], float]:
    answer = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200
    return {
        (sample.labels["outcome"], sample.labels["error"]): sample.value
        for family in text_string_to_metric_families(answer.text)
        if family.name == "crm_notify_fetches"
        for sample in family.samples
        if sample.name == "crm_notify_fetches_total"
        and sample.labels["rule"] == "cart-reco"
        and sample.labels["fetch"] == "recommendations"
    }


def test_the_fallback_is_counted_on_the_rule_page_and_in_metrics(
    app: Console, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    assert _fetch_samples(app.url) == {}
    runtime = app.runtime
    traits = {"email": "ala@example.com", "first_name": "Ala"}
    runtime.intake.ingest([_call({"type": "identify", "traits": traits})])
    # Given a recommendation service that answers once, then is too slow twice
    api.respond(200, json=PRODUCTS)
    api.default = Answer(200, json=PRODUCTS, delay_s=3)
    # When three carts are viewed (the embedded broker delivers at once)
    for cart in ("C1", "C2", "C3"):
        runtime.intake.ingest(
            [_call({"type": "track", "event": "Cart Viewed", "properties": {"cart_id": cart}})]
        )
    # Then all three emails went out: one with products, two with the default content
    messages = smtp_sink.wait_for(3)
    texts = [str(m.get_body(("plain",)).get_content()) for m in messages]  # type: ignore[union-attr]
    assert ["Red mug" in text for text in texts] == [True, False, False]
    assert ["(our bestsellers)" in text for text in texts] == [False, True, True]
    # And /metrics counts the fallbacks, with the kind of failure
    assert _fetch_samples(app.url) == {("ok", ""): 1, ("fallback", "timeout"): 2}
    # And the console's rule page shows the step and its counts
    client, _token = _signed_in(app, ADMIN)
    page = client.get("/console/rules/cart-reco")
    assert page.status_code == 200
    assert "<h2>Fetch steps</h2>" in page.text
    assert "recommendations" in page.text and "fallback" in page.text
    row = page.text.split("<td>recommendations</td>", 1)[1].split("</tr>", 1)[0]
    assert [cell.split("</td>")[0] for cell in row.split("<td>")[2:7]] == [
        "1",
        "0",
        "2",
        "0",
        "0",
    ]
    assert '<span class="badge skip">timeout: 2</span>' in row
    # And no URL query (it holds a credential) is shown
    assert "k-42" not in page.text and "RECO_KEY" not in page.text
