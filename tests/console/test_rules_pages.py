"""The console's rule list (with the lint of the files as they are now), a rule's page with its
dry run for a contact, and the KPI dashboard's charts."""

from __future__ import annotations

import re

import pytest

from tests.console.conftest import ADMIN, Console
from tests.console.test_pages import _signed_in

pytestmark = pytest.mark.usefixtures("users")


def test_the_rule_list_shows_each_rule_and_the_lint_of_the_files_now(
    console_app: Console,
) -> None:
    client, _token = _signed_in(console_app, ADMIN)
    page = client.get("/console/rules")
    assert page.status_code == 200
    assert '<a href="/console/rules/welcome">welcome</a>' in page.text
    assert "first identify" in page.text and "lint OK" in page.text
    assert "Every rule file passes" in page.text
    # When a rule file is broken after the service started
    rules_dir = console_app.runtime.settings.rules_dir
    (rules_dir / "broken.yaml").write_text(
        "name: broken\ntrigger: {event: X}\ntemplate: nope\npurpose: marketing\n", "utf-8"
    )
    page = client.get("/console/rules")
    # Then the lint names the file and the line; the rules running are unchanged
    assert "broken.yaml" in page.text and "template &#39;nope&#39;" in page.text
    assert re.search(r"broken\.yaml:3: ", page.text)
    assert '<a href="/console/rules/broken">' not in page.text


def test_a_rule_page_dry_runs_for_a_contact(console_app: Console) -> None:
    client, _token = _signed_in(console_app, ADMIN)
    page = client.get("/console/rules/welcome")
    assert page.status_code == 200 and "Trigger: <strong>first identify</strong>" in page.text
    # A dry run for a known contact opens their preview of this rule
    found = client.get("/console/rules/welcome", params={"contact": "ada@example.com"})
    assert found.status_code == 303
    assert found.headers["location"] == (
        f"/console/contacts/{console_app.contact_id}/preview?rule=welcome"
    )
    assert "would be sent" in client.get(found.headers["location"]).text
    # An unknown one says so; an unknown rule is a 404
    missing = client.get("/console/rules/welcome", params={"contact": "nobody@example.com"})
    assert "No contact with email or user id “nobody@example.com”" in missing.text
    assert client.get("/console/rules/nope").status_code == 404


def test_the_kpi_dashboard_charts_each_rule(console_app: Console) -> None:
    client, _token = _signed_in(console_app, ADMIN)
    page = client.get("/console/kpis", params={"days": "7"})
    # The welcome mail sent today is counted, and charted as SVG (no script)
    assert "welcome</a> — 1 sent" in page.text
    assert (
        '<svg class="chart" viewBox="0 0 640 180" role="img" aria-label="welcome: sent per day"'
        in (page.text)
    )
    assert page.text.count("<rect ") == 7 and "<script" not in page.text
    assert '<option value="7" selected>' in page.text
    # A period that is not offered falls back to the default
    assert '<option value="14" selected>' in client.get("/console/kpis?days=5").text
