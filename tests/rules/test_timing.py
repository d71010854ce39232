"""Time features of rule files: idle_for, delay, steps, send windows, exit_when, cancel_on, dedupe.

Valid forms load into ``Rule``/``Step``; every mistake is a ``RuleFileError`` at its line.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from crm_notify.errors import RuleFileError
from crm_notify.rules import (
    CART_ACTIVITY_EVENTS,
    DEFAULT_DEDUPE_WINDOW,
    EventTrigger,
    IdleTrigger,
    Purpose,
    Rule,
    Step,
    lint_rules,
    load_rule_file,
    load_rules,
    rule_file_json_schema,
)

WriteRule = Callable[..., Path]
SAMPLES = Path(__file__).resolve().parents[2] / "rules"
HEAD = "name: r\npurpose: marketing\ntrigger: {event: X}\n"  # lines 1-3


def load_one(write_rule: WriteRule, text: str, **kwargs: Any) -> Rule:
    [rule] = load_rule_file(write_rule(text), **kwargs)
    return rule


def load_error(write_rule: WriteRule, text: str, **kwargs: Any) -> RuleFileError:
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(write_rule(text), **kwargs)
    return caught.value


def problems(write_rule: WriteRule, text: str, **kwargs: Any) -> list[tuple[int | None, str]]:
    return [(p.line, p.message) for p in lint_rules(write_rule(text), **kwargs)]


# --- trigger.idle_for ---------------------------------------------------------------------


def test_idle_for_with_default_activity(write_rule: WriteRule) -> None:
    # Given an idle_for trigger without `activity`
    rule = load_one(
        write_rule,
        "name: r\ntemplate: t\npurpose: marketing\n"
        "trigger: {idle_for: {entity: cart, after: 48h}}\n",
    )

    # Then it waits 48 hours of cart activity, counting the default cart events
    assert rule.trigger == IdleTrigger(
        entity="cart", after=timedelta(hours=48), activity=CART_ACTIVITY_EVENTS
    )
    assert {"Product Added", "Product Removed", "Cart Viewed", "Checkout Started"} == (
        CART_ACTIVITY_EVENTS
    )
    assert rule.is_timed


@pytest.mark.parametrize(
    ("activity", "expected"),
    [
        ("Cart Viewed", {"Cart Viewed"}),
        ("[Cart Viewed, Coupon Applied]", {"Cart Viewed", "Coupon Applied"}),
    ],
)
def test_idle_for_with_own_activity(
    write_rule: WriteRule, activity: str, expected: set[str]
) -> None:
    # Given idle_for with an ISO duration and one activity event, or a list of them
    rule = load_one(
        write_rule,
        f"""
        name: r
        template: t
        purpose: marketing
        trigger:
          idle_for:
            entity: cart
            after: P2D
            activity: {activity}
        """,
    )

    # Then those events are the activity
    assert isinstance(rule.trigger, IdleTrigger)
    assert rule.trigger.after == timedelta(days=2)
    assert rule.trigger.activity == expected


@pytest.mark.parametrize(
    ("idle", "line", "message", "suggestion"),
    [
        (
            "entity: cart\nafter: 48 hours",
            7,
            "invalid duration '48 hours'",
            "use e.g. 48h, 30m, 2d",
        ),
        ("entity: cart\nafter: 0h", 7, "'trigger.idle_for.after' must be more than zero", None),
        ("entity: cart\nafter: -1d", 7, "'trigger.idle_for.after' must be more than zero", None),
        ("entity: order\nafter: 48h", 6, "'trigger.idle_for.entity' should be 'cart', got", None),
        ("entity: cart", 5, "missing required key 'after' in 'trigger.idle_for'", None),
        ("entity: cart\nafter: 1h\nactivity: []", 8, "'trigger.idle_for.activity' list", None),
        ("entity: cart\nafter: 1h\nactivity: [X, 1]", 8, "'trigger.idle_for.activity[1]'", None),
        ("entity: cart\nafer: 1h", 7, "unknown key 'afer'", "did you mean 'after'?"),
    ],
)
def test_idle_for_errors_are_at_their_line(
    write_rule: WriteRule, idle: str, line: int, message: str, suggestion: str | None
) -> None:
    # Given a broken idle_for mapping (`idle_for:` on line 5, its keys from line 6)
    keys = "".join(f"    {part}\n" for part in idle.split("\n"))
    text = "name: r\ntemplate: t\npurpose: marketing\ntrigger:\n  idle_for:\n" + keys

    # When it is loaded, then the error is at the offending key
    error = load_error(write_rule, text)
    assert error.line == line
    assert error.message.startswith(message)
    assert error.suggestion == suggestion


def test_idle_for_beside_another_trigger_kind(write_rule: WriteRule) -> None:
    # Given a trigger with both event and idle_for on line 3
    error = load_error(
        write_rule,
        "name: r\ntemplate: t\ntrigger: {event: X, idle_for: {entity: cart, after: 1h}}\n"
        "purpose: marketing\n",
    )

    # Then the trigger must have exactly one kind
    assert error.line == 3
    assert "(found 'event', 'idle_for')" in error.message


def test_idle_for_at_rule_level_suggests_nesting(write_rule: WriteRule) -> None:
    # Given idle_for written beside the rule keys
    found = lint_rules(
        write_rule(
            "name: r\nidle_for: {entity: cart, after: 1h}\ntemplate: t\npurpose: marketing\n"
        )
    )

    # Then it is one problem, with the fix
    assert [(p.line, p.suggestion) for p in found] == [
        (2, "put it under 'trigger:', e.g. 'trigger: {idle_for: ...}'")
    ]


# --- delay and the single-template rule ---------------------------------------------------


def test_single_template_rule_is_one_immediate_step(write_rule: WriteRule) -> None:
    # Given a rule with a template, a condition and no timing
    rule = load_one(write_rule, HEAD + "template: t\nwhen: event.total > 0\n")

    # Then it has one step sent at once, without step conditions; the rule keeps `when`
    assert rule.steps == (Step(index=0, name="step-1", delay=timedelta(0), template="t"),)
    assert rule.template == "t"
    assert [condition.source for condition in rule.conditions] == ["event.total > 0"]
    assert rule.exit_conditions == ()
    assert rule.cancel_on == frozenset()
    assert rule.dedupe_window == DEFAULT_DEDUPE_WINDOW == timedelta(days=30)
    assert not rule.is_timed


def test_rule_level_delay_and_window_go_to_the_single_step(write_rule: WriteRule) -> None:
    # Given a rule sent 2 hours after its event, between 1h and 1d12h after it
    rule = load_one(write_rule, HEAD + "template: t\ndelay: 2h\nnot_before: 1h\nnot_after: 1d12h\n")

    # Then its one step carries the timing
    [step] = rule.steps
    assert (step.delay, step.not_before, step.not_after) == (
        timedelta(hours=2),
        timedelta(hours=1),
        timedelta(hours=36),
    )
    assert step.conditions == ()
    assert rule.is_timed


@pytest.mark.parametrize(
    ("timing", "timed"),
    [
        ("delay: 0", False),
        ("delay: 0h", False),
        ("not_after: 1h", False),
        ("delay: 1s", True),
        ("not_before: 0s", True),
    ],
)
def test_is_timed(write_rule: WriteRule, timing: str, timed: bool) -> None:
    # Given a rule with some timing; then it is timed only if it may wait
    assert load_one(write_rule, HEAD + f"template: t\n{timing}\n").is_timed is timed


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ("delay: 48 hours", "invalid duration '48 hours'"),
        ("delay: -2h", "'delay' must not be negative, got '-2h'"),
        ("delay: 30", "'delay' should be a duration such as 48h, 30m or 2d, got integer 30"),
        ("delay: true", "'delay' should be a duration such as 48h, 30m or 2d, got boolean true"),
        ("not_before: -1m", "'not_before' must not be negative, got '-1m'"),
        ("not_after: 0s", "'not_after' must be more than zero, got '0s'"),
        ("not_after: P1M", "invalid duration 'P1M': months and years have no fixed length"),
        ("dedupe_window: 0", "'dedupe_window' must be more than zero, got '0s'"),
        ("dedupe_window: 1 month", "invalid duration '1 month'"),
    ],
)
def test_bad_rule_level_durations(write_rule: WriteRule, timing: str, message: str) -> None:
    # Given a rule whose line 5 has a bad duration
    error = load_error(write_rule, HEAD + f"template: t\n{timing}\n")

    # Then the error is at that line
    assert (error.line, error.message) == (5, message)


def test_invalid_duration_reads_as_documented(write_rule: WriteRule) -> None:
    # Given a duration written in words
    path = write_rule(HEAD + "template: t\ndelay: 48 hours\n")

    # When it is loaded, then the message says how to write it
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(path)
    assert str(caught.value) == f"{path}:5: invalid duration '48 hours' (use e.g. 48h, 30m, 2d)"


@pytest.mark.parametrize(
    ("timing", "line", "message"),
    [
        ("delay: 2h\nnot_after: 2h", 6, "'not_after' (2h) must be more than the delay (2h)"),
        ("delay: 1d\nnot_after: 12h", 6, "'not_after' (12h) must be more than the delay (1d)"),
        (
            "not_after: 1h\nnot_before: 2h",
            6,
            "'not_before' (2h) is later than 'not_after' (1h)",
        ),
    ],
)
def test_rule_level_window_must_fit_the_delay(
    write_rule: WriteRule, timing: str, line: int, message: str
) -> None:
    # Given a window that ends before the message is due, or that is empty
    error = load_error(write_rule, HEAD + f"template: t\n{timing}\n")

    # Then the error is at the key that does not fit
    assert (error.line, error.message) == (line, message)


def test_window_may_be_a_single_instant(write_rule: WriteRule) -> None:
    # Given not_before == not_after (allowed: not_before <= not_after)
    rule = load_one(write_rule, HEAD + "template: t\nnot_before: 1h\nnot_after: 1h\n")
    assert rule.steps[0].not_before == rule.steps[0].not_after == timedelta(hours=1)


# --- steps --------------------------------------------------------------------------------

STEPS = """
name: r
purpose: marketing
trigger: {event: Checkout Started}
when: event.total > 0
steps:
  - delay: 0h
    template: first
    not_after: 24h
  - name: nudge
    delay: 1d
    template: second
    when: [cart.total > 20, "contact.email is defined"]
    not_before: 1d
    not_after: 2d
  - delay: 1d
    template: third
"""


def test_steps_load_in_order(write_rule: WriteRule) -> None:
    # Given a rule with three steps (two unnamed, two with the same delay)
    rule = load_one(write_rule, STEPS)

    # Then each step has its index, name (default step-N), timing and own conditions
    assert [(step.index, step.name, step.template) for step in rule.steps] == [
        (0, "step-1", "first"),
        (1, "nudge", "second"),
        (2, "step-3", "third"),
    ]
    first, nudge, third = rule.steps
    assert (first.delay, first.not_before, first.not_after) == (timedelta(0), None, timedelta(1))
    assert (nudge.delay, nudge.not_before, nudge.not_after) == (
        timedelta(days=1),
        timedelta(days=1),
        timedelta(days=2),
    )
    assert [c.source for c in nudge.conditions] == ["cart.total > 20", "contact.email is defined"]
    assert [c.line for c in nudge.conditions] == [12, 12]
    assert third.conditions == ()

    # And the rule's template is the first step's; its `when` stays on the rule
    assert rule.template == "first"
    assert [c.source for c in rule.conditions] == ["event.total > 0"]
    assert rule.is_timed


def test_step_conditions_hold(write_rule: WriteRule) -> None:
    # Given the loaded steps; when evaluated, then only the step's own conditions count
    nudge = load_one(write_rule, STEPS).steps[1]
    context = {"event": {}, "contact": {"email": "a@b"}, "order": None, "cart": {"total": 30}}
    assert nudge.conditions_hold(context)
    assert not nudge.conditions_hold({**context, "cart": {"total": 5}})


@pytest.mark.parametrize("key", ["template: t", "delay: 1h", "not_before: 1h", "not_after: 1h"])
def test_steps_exclude_the_single_message_keys(write_rule: WriteRule, key: str) -> None:
    # Given `steps` plus a rule-level template or timing key on line 4
    text = HEAD + f"{key}\nsteps:\n  - {{delay: 0h, template: a}}\n"

    # When it is loaded, then the rule-level key is the error
    error = load_error(write_rule, text)
    name = key.split(":")[0]
    assert (error.line, error.message) == (4, f"'{name}' cannot be used with 'steps'")
    assert error.suggestion == f"set '{name}' on each step instead"


def test_template_or_steps_is_required(write_rule: WriteRule) -> None:
    # Given a rule with neither
    error = load_error(write_rule, "# c\n" + HEAD)

    # Then it is reported at the rule, naming both ways
    assert (error.line, error.message) == (2, "missing required key 'template'")
    assert error.suggestion == "or list the messages to send under 'steps:'"


def test_steps_vs_template_in_list_form(write_rule: WriteRule) -> None:
    # Given a rules list whose second rule has both
    found = problems(
        write_rule,
        """
        rules:
          - {name: a, trigger: {event: X}, purpose: marketing, steps: [{delay: 0, template: t}]}
          - name: b
            trigger: {event: X}
            purpose: marketing
            template: t
            steps: [{delay: 0, template: t}]
        """,
    )

    # Then the problem names the key with its rule
    assert found == [(6, "'rules[1].template' cannot be used with 'steps'")]


def test_step_delays_must_not_decrease(write_rule: WriteRule) -> None:
    # Given a second step (line 7) due before the first
    text = (
        HEAD
        + "steps:\n  - delay: 2d\n    template: a\n  - name: b\n    delay: 47h\n    template: b\n"
    )

    # When it is loaded, then the error is at that step
    error = load_error(write_rule, text)
    assert error.line == 7
    assert error.message == "step 'b' has delay 1d23h, less than the previous step's 2d"


@pytest.mark.parametrize(
    ("steps", "line", "message"),
    [
        (
            "  - {name: a, delay: 0, template: t}\n  - {name: a, delay: 1h, template: t}",
            6,
            "step name 'a' is already used by 'steps[0]'",
        ),
        (
            "  - {name: step-2, delay: 0, template: t}\n  - {delay: 1h, template: t}",
            6,
            "step name 'step-2' is already used by 'steps[0]'",
        ),
        ("  - {name: First, delay: 0, template: t}", 5, "'steps[0].name' is not a valid name"),
        ("  - {delay: 0h}", 5, "missing required key 'template' in 'steps[0]'"),
        ("  - {template: t}", 5, "missing required key 'delay' in 'steps[0]'"),
        ("  - {delay: soon, template: t}", 5, "invalid duration 'soon'"),
        ("  - {delay: -1h, template: t}", 5, "'steps[0].delay' must not be negative"),
        ("  - {delay: 0, template: t, wait: 1h}", 5, "unknown key 'wait'"),
        (
            "  - delay: 1h\n    template: t\n    not_after: 30m",
            7,
            "'steps[0].not_after' (30m) must be more than the delay (1h)",
        ),
        (
            "  - delay: 1h\n    template: t\n    not_before: 3h\n    not_after: 2h",
            7,
            "'steps[0].not_before' (3h) is later than 'not_after' (2h)",
        ),
        ("  - delay: 1h\n    template: t\n    when: cart.total >", 7, "invalid condition"),
        ("  - delay: 1h\n    template: t\n    when: [cart, crat]", 7, "unknown variable 'crat'"),
    ],
)
def test_step_errors_are_at_their_line(
    write_rule: WriteRule, steps: str, line: int, message: str
) -> None:
    # Given a bad step under `steps:` (line 4)
    error = load_error(write_rule, HEAD + "steps:\n" + steps + "\n")

    # Then the error is at the offending node
    assert error.line == line
    assert error.message.startswith(message)


def test_empty_steps_is_an_error(write_rule: WriteRule) -> None:
    error = load_error(write_rule, HEAD + "steps: []\n")
    assert error.line == 4
    assert "'steps' list should have at least 1 item" in error.message


def test_template_check_covers_every_step(write_rule: WriteRule) -> None:
    # Given steps whose second and third templates are missing
    found = lint_rules(write_rule(STEPS), template_exists={"first"}.__contains__)

    # Then each is reported at its own template line
    assert [(p.line, p.message) for p in found] == [
        (11, "template 'second' does not exist"),
        (16, "template 'third' does not exist"),
    ]


def test_lint_reports_every_timing_problem(write_rule: WriteRule) -> None:
    # Given a rule with several timing mistakes that pass the schema
    found = problems(
        write_rule,
        HEAD
        + "template: t\nsteps:\n"
        + "  - {delay: 2h, template: a, not_after: 1h}\n"
        + "  - {delay: 1h, template: b}\n",
    )

    # Then all are listed by line
    assert found == [
        (4, "'template' cannot be used with 'steps'"),
        (6, "'steps[0].not_after' (1h) must be more than the delay (2h)"),
        (7, "step 'step-2' has delay 1h, less than the previous step's 2h"),
    ]


# --- exit_when, cancel_on, dedupe_window --------------------------------------------------


def test_exit_when_single_and_list(write_rule: WriteRule) -> None:
    # Given exit_when as one expression, and as a list
    single = load_one(write_rule, HEAD + "template: t\nexit_when: cart.status != 'open'\n")
    listed = load_one(
        write_rule, HEAD + "template: t\nexit_when:\n  - order.status == 'paid'\n  - cart.empty\n"
    )

    # Then they compile at their lines and stop the sequence when ANY holds
    assert [(c.source, c.line) for c in single.exit_conditions] == [("cart.status != 'open'", 5)]
    assert [c.line for c in listed.exit_conditions] == [6, 7]
    context: dict[str, Any] = {"event": {}, "contact": {}, "order": {"status": "paid"}}
    assert listed.should_exit({**context, "cart": {"empty": False}})
    assert not listed.should_exit({**context, "order": {"status": "new"}, "cart": {"empty": False}})
    assert not load_one(write_rule, HEAD + "template: t\n").should_exit(context)


@pytest.mark.parametrize(
    ("value", "line", "message"),
    [
        ("cart.status !=", 5, "invalid condition 'cart.status !='"),
        ("[cart.empty, contcat.email]", 5, "unknown variable 'contcat'"),
        ("\n  - cart.empty\n  - basket.empty", 7, "unknown variable 'basket'"),
        ("5", 5, "'exit_when' must be a string or a list of strings"),
    ],
)
def test_exit_when_errors(write_rule: WriteRule, value: str, line: int, message: str) -> None:
    error = load_error(write_rule, HEAD + f"template: t\nexit_when: {value}\n")
    assert error.line == line
    assert error.message.startswith(message)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Order Completed", {"Order Completed"}),
        ("[Order Completed, Cart Emptied]", {"Order Completed", "Cart Emptied"}),
    ],
)
def test_cancel_on(write_rule: WriteRule, value: str, expected: set[str]) -> None:
    rule = load_one(write_rule, HEAD + f"template: t\ncancel_on: {value}\n")
    assert rule.cancel_on == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[]", "'cancel_on' list should have at least 1 item"),
        ("[X, 3]", "'cancel_on[1]' should be"),
    ],
)
def test_cancel_on_errors(write_rule: WriteRule, value: str, message: str) -> None:
    error = load_error(write_rule, HEAD + f"template: t\ncancel_on: {value}\n")
    assert error.line == 5
    assert error.message.startswith(message)


def test_dedupe_window(write_rule: WriteRule) -> None:
    # Given an order_status rule with its own dedupe window, and an event rule with one
    status = load_one(
        write_rule,
        "name: r\ntemplate: t\npurpose: marketing\ntrigger: {order_status: {to: paid}}\n"
        "dedupe_window: 1w\n",
    )
    event = load_one(write_rule, HEAD + "template: t\ndedupe_window: PT12H\n")

    # Then both load (it is allowed on any rule)
    assert status.dedupe_window == timedelta(weeks=1)
    assert event.dedupe_window == timedelta(hours=12)


# --- Rule built in code ------------------------------------------------------------------


def test_rule_from_template_only_gets_one_step() -> None:
    # Given a Rule built the pre-steps way; then it has one immediate step
    rule = Rule(name="a", trigger=EventTrigger("X"), template="t", purpose=Purpose.MARKETING)
    assert rule.steps == (Step(index=0, name="step-1", template="t"),)
    assert not rule.is_timed


def test_rule_from_steps_takes_the_first_template() -> None:
    steps = (
        Step(index=0, name="a", template="one"),
        Step(index=1, name="b", delay=timedelta(hours=1), template="two"),
    )
    rule = Rule(name="a", trigger=EventTrigger("X"), steps=steps, purpose=Purpose.MARKETING)
    assert rule.template == "one"
    assert rule.is_timed


def test_rule_needs_a_template_that_matches_its_steps() -> None:
    with pytest.raises(ValueError, match="needs a template or steps"):
        Rule(name="a", trigger=EventTrigger("X"), purpose=Purpose.MARKETING)
    with pytest.raises(ValueError, match="is not the first step's"):
        Rule(
            name="a",
            trigger=EventTrigger("X"),
            template="other",
            steps=(Step(index=0, name="a", template="one"),),
            purpose=Purpose.MARKETING,
        )


# --- the shipped sample and the schema -----------------------------------------------------


def test_abandoned_cart_sample_loads() -> None:
    # Given the shipped sample; when all samples are loaded without a template check
    rule_set = load_rules(SAMPLES, template_exists=None)
    rule = rule_set.by_name("abandoned-cart")

    # Then it is the documented two-step marketing sequence on an idle cart
    assert rule is not None
    assert rule.purpose == Purpose.MARKETING
    assert rule.trigger == IdleTrigger(
        entity="cart", after=timedelta(hours=48), activity=CART_ACTIVITY_EVENTS
    )
    assert [c.source for c in rule.conditions] == ['cart.status == "open" and cart.products']
    assert [c.source for c in rule.exit_conditions] == ['cart.status != "open"']
    assert rule.cancel_on == {"Order Completed"}
    first, second = rule.steps
    assert (first.template, first.delay, first.not_after, first.conditions) == (
        "abandoned_cart",
        timedelta(0),
        timedelta(hours=24),
        (),
    )
    assert (second.template, second.delay, second.not_after) == (
        "abandoned_cart_reminder",
        timedelta(hours=72),
        timedelta(hours=96),
    )
    assert [c.source for c in second.conditions] == ["cart.total is none or cart.total >= 20"]
    assert rule.template == "abandoned_cart"
    assert rule.is_timed

    # And it is indexed by its activity and its cancelling event, not as a plain event rule
    assert rule in rule_set.for_idle("Product Added")
    assert rule_set.cancelled_by("Order Completed") == (rule,)
    assert rule not in rule_set.for_event("Product Added")


def test_abandoned_cart_conditions_on_a_cart() -> None:
    # Given the sample's conditions and a cart as intake builds it
    rule = load_rules(SAMPLES / "abandoned_cart.yaml").by_name("abandoned-cart")
    assert rule is not None
    cart = {
        "cart_id": "c1",
        "status": "open",
        "products": [{"sku": "A"}],
        "total": None,
        "order_id": None,
        "last_activity_at": "2024-03-30T12:00:00Z",
    }

    def context(**changes: Any) -> dict[str, Any]:
        return {"event": None, "contact": {}, "order": None, "cart": {**cart, **changes}}

    # Then an open cart with products fires, an empty one does not, a converted one exits
    assert rule.conditions_hold(context()) and not rule.should_exit(context())
    assert not rule.conditions_hold(context(products=[], status="empty"))
    assert rule.should_exit(context(status="converted"))
    # And the second reminder skips small carts only
    second = rule.steps[1]
    assert second.conditions_hold(context()) and second.conditions_hold(context(total=20))
    assert not second.conditions_hold(context(total=19.99))


def test_json_schema_has_the_time_features() -> None:
    # Given the JSON Schema of the format
    definitions = rule_file_json_schema()["$defs"]

    # Then it names every new key, with durations as patterned strings
    rule = definitions["RuleSpec"]
    assert {
        "delay",
        "not_before",
        "not_after",
        "steps",
        "exit_when",
        "cancel_on",
        "dedupe_window",
    } <= set(rule["properties"])
    assert rule["properties"]["dedupe_window"]["default"] == "30d"
    assert rule["properties"]["steps"]["anyOf"][0]["items"] == {"$ref": "#/$defs/StepSpec"}
    excluded = rule["dependentSchemas"]["steps"]["not"]["anyOf"]
    assert [option["required"] for option in excluded] == [
        ["template"],
        ["delay"],
        ["not_before"],
        ["not_after"],
    ]
    step = definitions["StepSpec"]
    assert step["additionalProperties"] is False
    assert set(step["properties"]) == {
        "name",
        "delay",
        "template",
        "when",
        "not_before",
        "not_after",
    }
    assert set(step["required"]) == {"delay", "template"}
    idle = definitions["IdleForSpec"]
    assert set(idle["properties"]) == {"entity", "after", "activity"}
    assert idle["properties"]["entity"]["const"] == "cart"
    assert set(idle["required"]) == {"entity", "after"}
    assert idle["properties"]["activity"]["default"] == sorted(CART_ACTIVITY_EVENTS)
    assert "pattern" in idle["properties"]["after"]
    assert definitions["TriggerSpec"]["properties"]["idle_for"] == {
        "anyOf": [
            {"$ref": "#/$defs/IdleForSpec"},
            {"type": "null"},
        ],
        "default": None,
    }
