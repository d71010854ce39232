"""Rule tests (``*.test.yaml``): discovery, running on the real engine, reports, invalid files."""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.cli import rules_test
from crm_notify.contacts.models import Contact
from crm_notify.guards import SendAttempt
from crm_notify.guards.consent import ConsentGuard
from crm_notify.render.templates import TemplateStore
from crm_notify.rules import testing
from crm_notify.rules.loader import load_rules, rule_files
from crm_notify.rules.testing import (
    CaseConsentGuard,
    FileResult,
    exit_status,
    find_rule_tests,
    format_results,
    load_rule_test_file,
    run_rule_tests,
)
from tests.support.servers import write_tree

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "rules"

CART_RULE = """
name: cart
trigger:
  idle_for: {entity: cart, after: 48h}
when: cart.status == "open" and cart.products
cancel_on: [Order Completed]
purpose: marketing
steps:
  - {delay: 0h, template: abandoned_cart}
  - {delay: 72h, template: abandoned_cart_reminder}
"""
WELCOME_RULE = """
name: welcome
trigger: {identify: {first: true}}
template: welcome
purpose: transactional
"""
CONTACT = "{user_id: u1, email: alice@example.com, consent: [marketing]}"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    write_tree(tmp_path / "rules", {"cart.yaml": CART_RULE, "welcome.yaml": WELCOME_RULE})
    return tmp_path / "rules"


def run_tests(rules_dir: Path, text: str) -> list[FileResult]:
    path = rules_dir / "cart.test.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), "utf-8")
    return run_rule_tests([path], rules=load_rules(rules_dir))


def problems(rules_dir: Path, text: str) -> list[str]:
    (result,) = run_tests(rules_dir, text)
    assert not result.cases
    return [str(problem) for problem in result.problems]


# --- discovery ------------------------------------------------------------------------------


def test_rule_files_skip_test_files(tmp_path: Path) -> None:
    # Given rule files next to test files of both spellings
    write_tree(
        tmp_path,
        {
            "cart.yaml": CART_RULE,
            "cart.test.yaml": "cases: []\n",
            "sub/welcome.yml": WELCOME_RULE,
            "sub/welcome.test.yml": "not a rule\n",
        },
    )
    # When the rule files are listed and loaded, Then the test files are not among them
    assert [p.relative_to(tmp_path).as_posix() for p in rule_files(tmp_path)] == [
        "cart.yaml",
        "sub/welcome.yml",
    ]
    assert [rule.name for rule in load_rules(tmp_path).rules] == ["cart", "welcome"]


def test_find_rule_tests_in_a_folder_a_test_file_or_beside_a_rule_file(tmp_path: Path) -> None:
    names = ["a.test.yaml", "a.yaml", "b/c.test.yml", ".hidden/d.test.yaml", "e.yaml"]
    write_tree(tmp_path, dict.fromkeys(names, ""))
    found = [p.relative_to(tmp_path).as_posix() for p in find_rule_tests(tmp_path)]
    assert found == ["a.test.yaml", "b/c.test.yml"]
    assert find_rule_tests(tmp_path / "a.yaml") == [tmp_path / "a.test.yaml"]
    assert find_rule_tests(tmp_path / "b/c.test.yml") == [tmp_path / "b/c.test.yml"]
    assert find_rule_tests(tmp_path / "e.yaml") == []


# --- running --------------------------------------------------------------------------------


def test_shipped_rules_have_tests_and_they_pass() -> None:
    # Given the sample rules, each with a test file beside it
    rule_paths = rule_files(SAMPLES)
    test_paths = find_rule_tests(SAMPLES)
    assert [p.name.replace(".test", "") for p in test_paths] == [p.name for p in rule_paths]
    templates = TemplateStore(ROOT / "templates", default_language="en")
    rules = load_rules(SAMPLES, template_exists=templates.exists)
    # When they run, Then every case passes
    results = run_rule_tests(test_paths, rules=rules)
    report = "\n".join(format_results(results))
    assert exit_status(results) == 0, report
    assert "FAIL" not in report and "ERROR" not in report


def test_passing_case_with_timers_and_rule_filter(rules_dir: Path) -> None:
    # Given a case where cart activity at 30h restarts the 48 hours
    results = run_tests(
        rules_dir,
        f"""
        cases:
          - name: restarts
            contact: {CONTACT}
            start: 2026-03-27T12:00:00Z
            events:
              - {{at: 0h, track: Product Added, properties: {{cart_id: C1, product_id: P1}}}}
              - {{at: 30h, track: Cart Viewed, properties: {{cart_id: C1}}}}
            until: 200h
            rule: cart
            expect:
              - {{template: abandoned_cart, at: 78h}}
              - {{template: abandoned_cart_reminder, at: 150h}}
        """,
    )
    # When it ran, Then it passed and the welcome mail was left out by `rule:`
    (case,) = results[0].cases
    assert case.passed
    assert [(s.rule, s.step, s.at.total_seconds() / 3600) for s in case.sent] == [
        ("cart", "step-1", 78),
        ("cart", "step-2", 150),
    ]
    assert format_results(results) == [
        str(rules_dir / "cart.test.yaml"),
        "  PASS restarts",
        "1 case, 0 failed",
    ]
    assert exit_status(results) == 0


def test_without_rule_every_notification_counts_and_at_is_optional(rules_dir: Path) -> None:
    results = run_tests(
        rules_dir,
        f"""
        cases:
          - name: all of them
            contact: {CONTACT}
            events:
              - {{at: 0h, track: Product Added, properties: {{cart_id: C1, product_id: P1}}}}
            expect:
              - {{rule: welcome, template: welcome, at: 0}}
              - {{rule: cart, template: abandoned_cart, at: 48h1m}}
              - {{rule: cart, template: abandoned_cart_reminder}}
        """,
    )
    assert results[0].cases[0].passed


def test_event_dated_before_start_and_late_order(rules_dir: Path) -> None:
    # Given a cart event dated 49 hours before the start, and one whose order arrives late
    results = run_tests(
        rules_dir,
        f"""
        cases:
          - name: backfilled
            contact: {CONTACT}
            events:
              - {{at: 0h, timestamp: -49h, track: Product Added,
                  properties: {{cart_id: C1, product_id: P1}}}}
            until: 1h
            rule: cart
            expect: [{{template: abandoned_cart, at: 0h}}]
          - name: ordered at 40h, reported at 47h
            contact: {CONTACT}
            events:
              - {{at: 0h, track: Product Added, properties: {{cart_id: C1, product_id: P1}}}}
              - {{at: 47h, timestamp: 40h, track: Order Completed,
                  properties: {{order_id: O1, cart_id: C1}}}}
            rule: cart
            expect: []
        """,
    )
    assert [case.passed for case in results[0].cases] == [True, True]


def test_failing_case_shows_expected_got_diff_and_decisions(rules_dir: Path) -> None:
    # Given cases expecting the wrong time, and a send the policy refuses
    results = run_tests(
        rules_dir,
        """
        cases:
          - name: too early
            contact: {user_id: u1, email: alice@example.com, consent: [marketing]}
            events:
              - {at: 0h, track: Product Added, properties: {cart_id: C1, product_id: P1}}
            rule: cart
            expect:
              - {template: abandoned_cart, at: 47h}
              - {template: abandoned_cart_reminder, at: 120h}
          - name: no consent
            contact: {user_id: u1, email: alice@example.com}
            events:
              - {at: 0h, track: Product Added, properties: {cart_id: C1, product_id: P1}}
            until: 48h
            rule: cart
            expect: [{template: abandoned_cart}]
        """,
    )
    # When reported
    report = format_results(results)
    # Then each case fails with expected vs got, a diff, and why nothing was sent
    assert report[1:] == [
        "  FAIL too early",
        "       expected: cart abandoned_cart at +1d23h",
        "                 cart abandoned_cart_reminder at +5d",
        "       got:      cart abandoned_cart at +2d",
        "                 cart abandoned_cart_reminder at +5d",
        "       diff (- expected, + got):",
        "         - cart abandoned_cart at +1d23h",
        "         + cart abandoned_cart at +2d",
        "           cart abandoned_cart_reminder at +5d",
        "  FAIL no consent",
        "       expected: cart abandoned_cart (any time)",
        "       got:      (none)",
        "       decisions:",
        "         +2d cart skip: no marketing consent recorded",
        "2 cases, 2 failed",
    ]
    assert exit_status(results) == 1


def test_case_consent_guard_only_opens_the_listed_purposes_of_the_case_contact(
    engine: Engine,
) -> None:
    rule = next(r for r in load_rules(SAMPLES).rules if r.name == "abandoned-cart")

    def attempt(user_id: str) -> SendAttempt:
        return SendAttempt(
            rule_name=rule.name,
            purpose=str(rule.purpose),
            contact=Contact(id=1, user_id=user_id),
            moment=datetime.now(UTC),
            rule=rule,
        )

    opened = CaseConsentGuard(user_id="u1", purposes=frozenset({str(rule.purpose)}))
    closed = CaseConsentGuard(user_id="u1", purposes=frozenset())
    with Session(engine) as session:
        assert opened.check(session, attempt("u1")) is None
        refusal = ConsentGuard().check(session, attempt("u1"))
        assert refusal is not None and refusal.reason == "no marketing consent recorded"
        assert opened.check(session, attempt("u2")) == refusal
        assert closed.check(session, attempt("u1")) == refusal


def test_call_the_intake_refuses_is_an_error_at_its_line(rules_dir: Path) -> None:
    results = run_tests(
        rules_dir,
        """
        cases:
          - name: line break in a name
            events:
              - at: 1h
                identify: {first_name: "Al\\nice"}
            expect: []
        """,
    )
    (case,) = results[0].cases
    assert case.error is not None and case.error.line == 4
    assert "first_name" in str(case.error)
    assert format_results(results)[1] == "  ERROR line break in a name"
    assert exit_status(results) == 2


def test_documented_examples_are_valid_and_pass(tmp_path: Path) -> None:
    # Given the format examples of the module docstring and of `rules test --help`
    assert testing.__doc__ is not None and rules_test.help is not None
    module_example = testing.__doc__.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    help_example = rules_test.help.split("rules/<name>.test.yaml:\n", 1)[1].split("\n\n", 1)[0]
    paths = [tmp_path / "module.test.yaml", tmp_path / "help.test.yaml"]
    for path, example in zip(paths, (module_example, help_example), strict=True):
        path.write_text(textwrap.dedent(example), "utf-8")
    # When they run against the sample rules, Then they pass
    results = run_rule_tests(paths, rules=load_rules(SAMPLES))
    assert exit_status(results) == 0, "\n".join(format_results(results))
    assert [len(result.cases) for result in results] == [1, 1]


# --- invalid files --------------------------------------------------------------------------

BASE = """
cases:
  - name: one
    contact: {user_id: u1, email: alice@example.com}
    events:
      - at: 1h
        track: Product Added
        properties: {cart_id: C1}
    expect: []
"""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "        track:",
            "        tracks:",
            r":6: unknown key 'tracks' \(did you mean 'track'\?\)",
        ),
        ("      - at: 1h", "      - at: 1 hour", r":5: invalid duration '1 hour'"),
        ("    expect: []", "    expect: [{template: welcome}]", r":8: missing required key 'rule'"),
        ("    expect: []", "    rule: wlecome\n    expect: []", r":8: no rule named 'wlecome'"),
        (
            "    expect: []",
            "    expect: [{rule: welcome, template: abandoned_cart}]",
            r":8: rule 'welcome' never sends template 'abandoned_cart' \(its templates: welcome\)",
        ),
        ("    expect: []", "    until: 30m\n    expect: []", r":8: 'until' \(30m\) is before"),
        (
            "        properties: {cart_id: C1}",
            "        properties: {cart_id: C1}\n      - {at: 0h, track: X}",
            r":8: events must be in arrival order",
        ),
        ("        track: Product Added", "        identify: {}", r":5: .*'properties' goes with"),
        (
            "        track: Product Added\n        properties: {cart_id: C1}",
            "        user_id: u2",
            r":5: .*needs exactly one of 'track', 'identify', 'call' \(found none\)",
        ),
        ("email: alice@example.com", "email: alice@", r":3: .*not a valid Segment call"),
        (
            "  - name: one",
            "  - name: one\n    start: soon",
            r":3: 'cases\[0\].start' should be a date-time .*, got 'soon'",
        ),
        ("    expect: []", "", r":2: missing required key 'expect'"),
    ],
)
def test_invalid_test_file_is_reported_at_its_line(
    rules_dir: Path, old: str, new: str, expected: str
) -> None:
    # Given a valid file with one change
    assert old in BASE
    found = problems(rules_dir, BASE.replace(old, new, 1))
    # Then the problem is reported at its line, and the run exits with 2
    assert any(re.search(expected, problem) for problem in found), found
    (result,) = run_tests(rules_dir, BASE.replace(old, new, 1))
    assert exit_status([result]) == 2


def test_duplicate_case_names_and_yaml_errors(rules_dir: Path) -> None:
    text = BASE + BASE.replace("cases:\n", "")
    assert any(
        ":10: case name 'one' is already used on line 2" in p for p in problems(rules_dir, text)
    )
    assert any(":3:" in p for p in problems(rules_dir, "cases:\n  - name: [unclosed\n"))
    assert problems(rules_dir, "- just a list\n") == [
        f"{rules_dir / 'cart.test.yaml'}:1: a rule test file must be a mapping, got list"
        " (write the cases in a list under 'cases:')"
    ]


def test_valid_file_loads_with_lines(rules_dir: Path) -> None:
    path = rules_dir / "cart.test.yaml"
    path.write_text(BASE.lstrip("\n"), "utf-8")
    loaded, found = load_rule_test_file(path, rules=load_rules(rules_dir))
    assert found == [] and loaded is not None
    (case,) = loaded.cases
    assert (case.name, case.line, case.user_id) == ("one", 2, "u1")
    assert [(call.call.type, call.line) for call in case.calls] == [
        ("identify", 3),
        ("track", 5),
    ]
