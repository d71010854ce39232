"""``crm-notify rules test``, run as a user runs it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.servers import write_tree
from tests.support.service import run_cli, service_env

WELCOME_RULE = """\
name: welcome
trigger: {identify: {first: true}}
template: welcome
purpose: transactional
"""
PASSING = """\
cases:
  - name: welcome on sign-up
    contact: {user_id: u1, email: alice@example.com}
    expect: [{rule: welcome, template: welcome, at: 0h}]
"""
FAILING = """\
  - name: welcome again on a profile update
    contact: {user_id: u1, email: alice@example.com}
    events:
      - {at: 1h, identify: {first_name: Alice}}
    expect:
      - {rule: welcome, template: welcome, at: 0h}
      - {rule: welcome, template: welcome, at: 1h}
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
            "CRM_NOTIFY_RULES_DIR": str(ROOT / "rules"),
            "CRM_NOTIFY_TEMPLATES_DIR": str(ROOT / "templates"),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
        }
    )


def test_shipped_rule_tests_pass(env: dict[str, str]) -> None:
    # When the tests beside the sample rules run
    result = run_cli(env, "rules", "test", check=False)
    # Then every file is listed, every case passes, and the exit status is 0
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("abandoned_cart", "order_cancelled", "order_shipped", "welcome"):
        assert f"{ROOT / 'rules' / name}.test.yaml" in result.stdout
    assert "FAIL" not in result.stdout
    assert re.search(r"^\d+ cases, 0 failed$", result.stdout, re.MULTILINE)


def test_failing_case_exits_1_with_a_diff(env: dict[str, str], tmp_path: Path) -> None:
    # Given a rules folder with a passing and a failing case
    folder = tmp_path / "rules"
    write_tree(folder, {"welcome.yaml": WELCOME_RULE, "welcome.test.yaml": PASSING + FAILING})
    # When its tests run
    result = run_cli(env, "rules", "test", str(folder), check=False)
    # Then the failure is shown with what was expected and what happened, and the status is 1
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        str(folder / "welcome.test.yaml"),
        "  PASS welcome on sign-up",
        "  FAIL welcome again on a profile update",
        "       expected: welcome welcome at +0s",
        "                 welcome welcome at +1h",
        "       got:      welcome welcome at +0s",
        "       diff (- expected, + got):",
        "           welcome welcome at +0s",
        "         - welcome welcome at +1h",
        "2 cases, 1 failed",
    ]


def test_a_rule_file_runs_its_own_tests(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    write_tree(folder, {"welcome.yaml": WELCOME_RULE, "welcome.test.yaml": PASSING})
    result = run_cli(env, "rules", "test", str(folder / "welcome.yaml"))
    assert result.stdout.splitlines()[-1] == "1 case, 0 failed"


def test_invalid_test_file_exits_2_with_file_and_line(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    broken = PASSING.replace("    expect:", "    expects:")
    write_tree(folder, {"welcome.yaml": WELCOME_RULE, "welcome.test.yaml": broken})
    result = run_cli(env, "rules", "test", str(folder), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{folder / 'welcome.test.yaml'}:4: unknown key 'expects'" in result.stdout


def test_help_describes_the_format(env: dict[str, str]) -> None:
    out = run_cli(env, "rules", "test", "--help").stdout
    for word in ("cases:", "contact:", "events:", "until:", "expect:", "Exit status"):
        assert word in out
