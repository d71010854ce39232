"""Conditions: compiled at load, evaluated against a plain dict, failing as ConditionError."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from crm_notify.errors import ConditionError, RuleFileError
from crm_notify.render.sandbox import BoundedSandboxEnvironment
from crm_notify.rules import Condition, EventTrigger, Purpose, Rule, compile_condition

PATH = Path("rules/x.yaml")
CONTEXT: dict[str, Any] = {
    "event": {"name": "Order Completed", "properties": {"total": 12.5}},
    "contact": {"email": "ada@example.com", "traits": {"plan": "pro"}},
    "order": {"total": 0, "status": "shipped", "items": [{"sku": "A"}, {"sku": "B"}]},
    "cart": None,
}


@pytest.fixture(scope="module")
def environment() -> BoundedSandboxEnvironment:
    return BoundedSandboxEnvironment()


def compile_at(source: str, environment: BoundedSandboxEnvironment, line: int = 7) -> Condition:
    return compile_condition(source, environment=environment, path=PATH, line=line)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("event.properties.total > 10", True),
        ("order.total > 0", False),
        ("order.status in ['shipped', 'delivered']", True),
        ("order['items'] | length == 2", True),
        ("contact.email is defined and contact.traits.plan == 'pro'", True),
        ("contact.phone is defined", False),
        ("cart is none", True),
        ("order.total", False),  # 0 coerced with bool()
        ("contact.email", True),  # a non-empty string coerced with bool()
    ],
)
def test_condition_evaluates_on_a_plain_dict(
    environment: BoundedSandboxEnvironment, source: str, expected: bool
) -> None:
    # Given a compiled condition
    condition = compile_at(source, environment)

    # When it is evaluated on a dict context, then the result is a bool
    result = condition.evaluate(CONTEXT)
    assert result is expected
    assert condition.source == source


@pytest.mark.parametrize(
    "source",
    [
        "order.customer.name == 'x'",  # attribute of a missing key
        "contact.phone == '1'",  # comparing an undefined value
        "order.status > 3",  # a type error
    ],
)
def test_evaluation_failure_is_a_condition_error(
    environment: BoundedSandboxEnvironment, source: str
) -> None:
    # Given a condition that fails on this context
    condition = compile_at(source, environment)

    # When it is evaluated, then a ConditionError names the file, line and source
    expected = re.escape(f"rules/x.yaml:7: condition {source!r} failed: ")
    with pytest.raises(ConditionError, match=expected):
        condition.evaluate(CONTEXT)


def test_missing_variable_is_a_condition_error(environment: BoundedSandboxEnvironment) -> None:
    # Given a condition on the order, evaluated where there is no order at all
    condition = compile_at("order.total > 0", environment)

    # When it is evaluated, then it is a ConditionError, not a silent false
    with pytest.raises(ConditionError):
        condition.evaluate({"contact": {}})


def test_condition_cannot_change_the_context(environment: BoundedSandboxEnvironment) -> None:
    # Given a condition that tries to modify the contact
    condition = compile_at("contact.update({'email': 'x'}) or true", environment)
    context = {"contact": {"email": "ada@example.com"}}

    # When it is evaluated, then the sandbox refuses and the contact is unchanged
    with pytest.raises(ConditionError):
        condition.evaluate(context)
    assert context["contact"]["email"] == "ada@example.com"


@pytest.mark.parametrize("source", ["order.total >", "order.(total)", "{{ x }}", ""])
def test_syntax_error_is_a_rule_file_error_at_the_line(
    environment: BoundedSandboxEnvironment, source: str
) -> None:
    # Given an expression that does not parse; when it is compiled
    with pytest.raises(RuleFileError) as caught:
        compile_at(source, environment, line=12)

    # Then the error is at the given file and line
    assert (caught.value.path, caught.value.line) == (PATH, 12)
    assert caught.value.message.startswith("invalid condition")


def test_overlong_condition_is_refused_and_quoted_briefly(
    environment: BoundedSandboxEnvironment,
) -> None:
    # Given an expression longer than the sandbox accepts
    source = "order.total > " + "1" * 300_000

    # When it is compiled, then it fails at load with a shortened quote of the source
    with pytest.raises(RuleFileError) as caught:
        compile_at(source, environment)
    assert len(caught.value.message) < 300


def test_unknown_variable_is_a_rule_file_error(environment: BoundedSandboxEnvironment) -> None:
    # Given an expression reading a variable that conditions never get
    with pytest.raises(RuleFileError) as caught:
        compile_at("customer.email is defined", environment, line=3)

    # Then it fails at load, listing the variables there are
    assert caught.value.line == 3
    assert caught.value.message == (
        "unknown variable 'customer' in condition 'customer.email is defined'"
    )
    assert caught.value.suggestion == "conditions can use cart, contact, event, order"


def test_rule_conditions_hold_only_when_all_hold(environment: BoundedSandboxEnvironment) -> None:
    # Given a rule with two conditions, the second failing if evaluated when the first is false
    rule = Rule(
        name="r",
        trigger=EventTrigger("X"),
        conditions=(
            compile_at("contact.phone is defined", environment),
            compile_at("contact.phone.startswith('+44')", environment),
        ),
        template="t",
        purpose=Purpose.MARKETING,
    )

    # When they are checked, then the first false stops evaluation
    assert rule.conditions_hold(CONTEXT) is False
    assert rule.conditions_hold({"contact": {"phone": "+44 20"}}) is True
    assert Rule(
        name="r", trigger=EventTrigger("X"), template="t", purpose=Purpose.MARKETING
    ).conditions_hold({})
