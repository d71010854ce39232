"""Rule tests of gated rules (issue 6): the case plays the integration (``gate:`` release,
reject or none, ``after`` the gate opened), a held send counts when it is released, and the
rule's follow-ups (another template, a retry later) show up as sends."""

from __future__ import annotations

import textwrap
from pathlib import Path

from crm_notify.rules.loader import load_rules
from crm_notify.rules.testing import CaseResult, run_rule_tests
from tests.support.servers import write_tree

GATED_CART = """
name: cart
trigger:
  idle_for: {entity: cart, after: 48h}
cancel_on: [Order Completed]
purpose: transactional
template: abandoned_cart
gate:
  url: https://gate.example/crm
  timeout: 2h
  on_timeout: drop
  on_rejected: {template: abandoned_cart_reminder}
  on_timed_out: {retry_after: 1d}
"""
EVENTS = "[{at: 0h, track: Product Added, properties: {cart_id: C1, product_id: P1}}]"
CONTACT = "{user_id: u1, email: alice@example.com}"


def _run(
    tmp_path: Path, gate: str, *, events: str = EVENTS, until: str = "100h", expect: str = "[]"
) -> CaseResult:
    rules_dir = tmp_path / "rules"
    write_tree(rules_dir, {"cart.yaml": GATED_CART})
    case = f"""
        cases:
          - name: gated
            contact: {CONTACT}
            events: {events}
            until: {until}
            rule: cart
            {gate}
            expect: {expect}
        """
    path = rules_dir / "cart.test.yaml"
    path.write_text(textwrap.dedent(case).lstrip("\n"), "utf-8")
    [result] = run_rule_tests([path], rules=load_rules(rules_dir))
    assert not result.problems, result.problems
    [outcome] = result.cases
    assert outcome.error is None
    return outcome


def _sent(tmp_path: Path, gate: str, **options: str) -> list[str]:
    return [sent.describe() for sent in _run(tmp_path, gate, **options).sent]


def test_without_a_gate_answer_held_sends_are_released_at_once(tmp_path: Path) -> None:
    assert _sent(tmp_path, "") == ["cart abandoned_cart at +2d"]


def test_a_release_after_a_while_sends_then(tmp_path: Path) -> None:
    assert _sent(tmp_path, "gate: {answer: release, after: 30m}") == [
        "cart abandoned_cart at +2d30m"
    ]


def test_a_rejection_sends_the_on_rejected_template_instead(tmp_path: Path) -> None:
    # The follow-up template may be expected like any template of the rule
    outcome = _run(
        tmp_path,
        "gate: {answer: reject, after: 10m, reason: out of stock}",
        expect="[{template: abandoned_cart_reminder, at: 48h10m}]",
    )
    assert outcome.passed
    assert [sent.describe() for sent in outcome.sent] == ["cart abandoned_cart_reminder at +2d10m"]
    assert outcome.decisions[0].reason == "rejected by the gate: out of stock"


def test_no_answer_times_out_and_the_retry_is_held_again(tmp_path: Path) -> None:
    # The gate times out 2h after the cart's 48h (dropped), the send is retried a day later
    # (74h) and held again; that gate times out too (76h), and with no retry left nothing
    # goes out.
    outcome = _run(tmp_path, "gate: {answer: none}", until="200h")
    assert outcome.sent == ()
    notes = [
        (note.outcome, note.at.total_seconds() / 3600, note.reason) for note in outcome.decisions
    ]
    assert [(outcome, hours) for outcome, hours, _ in notes] == [
        ("skip", 50),
        ("defer", 50),
        ("skip", 76),
        ("skip", 76),
    ]
    assert notes[0][2] == notes[2][2] == "gate timed out"
    assert notes[1][2].endswith("timed out: tried again at 2026-01-04 14:00 UTC (retry 1 of 1)")
    assert notes[3][2].endswith("timed out: no retry left (retries: 1)")


def test_a_cancel_on_event_during_the_hold_withdraws_the_send(tmp_path: Path) -> None:
    events = (
        "[{at: 0h, track: Product Added, properties: {cart_id: C1, product_id: P1}},"
        " {at: 48h30m, track: Order Completed, properties: {cart_id: C1, order_id: O1}}]"
    )
    assert _sent(tmp_path, "gate: {answer: release, after: 1h}", events=events) == []


def test_rules_on_lifecycle_events_can_be_tested(tmp_path: Path) -> None:
    # A rule reacting to an unsubscribe: the case grants, then withdraws, consent through Segment
    rules_dir = tmp_path / "rules"
    write_tree(
        rules_dir,
        {
            "goodbye.yaml": (
                "name: goodbye\ntrigger: {event: contact.unsubscribed}\n"
                "template: abandoned_cart\npurpose: transactional\n"
            )
        },
    )
    case = """
        cases:
          - name: unsubscribed
            contact: {user_id: u1, email: alice@example.com, consent: [marketing]}
            events:
              - at: 0h
                call:
                  type: track
                  event: Page Viewed
                  context: {consent: {categoryPreferences: {marketing: true}}}
              - at: 1h
                call:
                  type: track
                  event: Page Viewed
                  context: {consent: {categoryPreferences: {marketing: false}}}
            rule: goodbye
            expect: [{template: abandoned_cart, at: 1h}]
        """
    path = rules_dir / "goodbye.test.yaml"
    path.write_text(textwrap.dedent(case).lstrip("\n"), "utf-8")
    [result] = run_rule_tests([path], rules=load_rules(rules_dir))
    [outcome] = result.cases
    assert outcome.passed, [sent.describe() for sent in outcome.sent]
