"""``crm-notify explain --contact ...``: the timeline as text or JSON."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine

from crm_notify.commands.explain import explain
from crm_notify.config import Settings
from tests.commands.test_suppression_cli import invoke
from tests.test_explain import seed_history


@pytest.fixture
def settings(engine: Engine, make_settings: Callable[..., Settings]) -> Settings:
    seed_history(engine)
    return make_settings(purposes="newsletter")


def test_prints_the_timeline(settings: Settings) -> None:
    result = invoke(explain, settings, "--contact", "alice@example.com")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "alice@example.com (contact 1, user u1, time zone Europe/Warsaw)"
    assert (
        lines[1] == "consent: marketing granted 2026-11-01 10:00 UTC (segment) · newsletter: none"
    )
    assert "  abandoned-cart defer  quiet hours until 08:00 Europe/Warsaw" in lines


def test_filters_and_json(settings: Settings) -> None:
    result = invoke(
        explain,
        settings,
        "--contact",
        "user:u1",
        "--rule",
        "abandoned-cart",
        "--since",
        "2026-11-20T12:00:00Z",
        "--until",
        "2026-11-21",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rule"] == "abandoned-cart"
    assert data["since"] == "2026-11-20T12:00:00+00:00"
    assert data["until"] == "2026-11-22T00:00:00+00:00"
    assert [d["outcome"] for e in data["entries"] for d in e["decisions"]] == ["defer"]


def test_durations_and_bad_values(settings: Settings) -> None:
    # --since 1d on 2026-11-22 12:00: from 2026-11-21 12:00 on
    with freeze_time("2026-11-22T12:00:00Z"):
        recent = invoke(explain, settings, "--contact", "id:1", "--since", "1d")
    assert recent.exit_code == 0
    assert 'Order Updated" (msg-1)\n' not in recent.stdout
    assert "2026-11-23 10:00:01 UTC  scheduler" in recent.stdout
    assert "identify (msg-2)" not in recent.stdout
    assert invoke(explain, settings, "--contact", "id:1", "--since", "soon").exit_code == 2
    assert invoke(explain, settings, "--contact", "alice").exit_code == 2
    missing = invoke(explain, settings, "--contact", "nobody@example.com")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: no contact matches")
