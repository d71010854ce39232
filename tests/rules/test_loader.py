"""Loading and linting rule files: valid forms, and every error at the right file and line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crm_notify.errors import RuleFileError
from crm_notify.rules import (
    EventTrigger,
    IdentifyTrigger,
    OrderStatusTrigger,
    Purpose,
    lint_rules,
    load_rule_file,
    load_rules,
    rule_file_json_schema,
    rule_files,
)
from crm_notify.rules.yaml_source import read_yaml_file

WriteRule = Callable[..., Path]
SAMPLES = Path(__file__).resolve().parents[2] / "rules"

SINGLE = """
# a comment
name: order-shipped
description: Parcel on its way.
trigger:
  order_status: {to: shipped}
when: "order.total > 0"
template: order_shipped
purpose: transactional
"""


def load_error(path: Path, **kwargs: Any) -> RuleFileError:
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(path, **kwargs)
    return caught.value


def test_single_rule_file_loads(write_rule: WriteRule) -> None:
    # Given a file holding one rule
    path = write_rule(SINGLE)

    # When it is loaded
    [rule] = load_rule_file(path)

    # Then every field is set, with defaults for the rest
    assert rule.name == "order-shipped"
    assert rule.description == "Parcel on its way."
    assert rule.enabled is True
    assert rule.trigger == OrderStatusTrigger(to=frozenset({"shipped"}), from_=None)
    assert [condition.source for condition in rule.conditions] == ["order.total > 0"]
    assert rule.template == "order_shipped"
    assert rule.purpose == Purpose.TRANSACTIONAL
    assert rule.channel == "email"
    assert (rule.source_path, rule.source_line) == (path, 2)


def test_rules_list_file_loads(write_rule: WriteRule) -> None:
    # Given a file with a `rules:` list of three rules, one disabled
    path = write_rule(
        """
        rules:
          - name: completed
            trigger: {event: Order Completed}
            when: [event.total > 10, "contact.email is defined"]
            template: thanks
            purpose: marketing
          - name: welcome
            enabled: false
            trigger:
              identify: {first: true}
            template: welcome
            purpose: marketing
            channel: email
          - name: shipped
            trigger:
              order_status: {to: [shipped, delivered], from: paid}
            template: shipped
            purpose: transactional
        """
    )

    # When it is loaded
    first, second, third = load_rule_file(path)

    # Then each rule has its trigger, conditions and line
    assert first.trigger == EventTrigger("Order Completed")
    assert len(first.conditions) == 2
    assert first.source_line == 2
    assert second.trigger == IdentifyTrigger(first=True)
    assert second.enabled is False
    assert second.source_line == 7
    assert third.trigger == OrderStatusTrigger(
        to=frozenset({"shipped", "delivered"}), from_=frozenset({"paid"})
    )


def test_event_named_no_stays_a_string(write_rule: WriteRule) -> None:
    # Given an event called NO (a boolean in YAML 1.1)
    path = write_rule("name: r\ntrigger: {event: NO}\ntemplate: t\npurpose: marketing\n")

    # When it is loaded, then the event name is the string "NO"
    [rule] = load_rule_file(path)
    assert rule.trigger == EventTrigger("NO")


def test_on_key_is_an_unknown_string_key(write_rule: WriteRule) -> None:
    # Given `on:` where `trigger:` was meant (a boolean key in YAML 1.1)
    path = write_rule("name: r\non: {event: X}\ntemplate: t\npurpose: marketing\n")

    # When it is loaded, then the key is reported as the string 'on' with a suggestion
    error = load_error(path)
    assert (error.path, error.line) == (path, 2)
    assert error.message == "unknown key 'on'"
    assert error.suggestion == "did you mean 'trigger'?"


def test_unknown_key_suggests_the_closest(write_rule: WriteRule) -> None:
    # Given a misspelt key on line 4
    path = write_rule("name: r\ntrigger: {event: X}\npurpose: marketing\ntempalte: t\n")

    # When it is loaded
    error = load_error(path)

    # Then the error names the key, the line and the likely fix
    assert (error.path, error.line) == (path, 4)
    assert str(error).endswith("unknown key 'tempalte' (did you mean 'template'?)")


def test_unknown_nested_key_suggests_from_its_own_mapping(write_rule: WriteRule) -> None:
    # Given a misspelt key inside trigger.order_status
    path = write_rule(
        """
        name: r
        trigger:
          order_status:
            to: shipped
            form: paid
        template: t
        purpose: marketing
        """
    )

    # When it is loaded, then the suggestion comes from that mapping's keys
    error = load_error(path)
    assert error.line == 5
    assert error.suggestion == "did you mean 'from'?"


def test_trigger_key_at_rule_level_suggests_nesting(write_rule: WriteRule) -> None:
    # Given `event:` written beside the other rule keys instead of under `trigger:`
    path = write_rule("name: r\nevent: X\ntemplate: t\npurpose: marketing\n")

    # When it is linted
    problems = lint_rules(path)

    # Then the one problem is the misplaced key (no extra "missing trigger"), with the fix
    assert [(p.line, p.message) for p in problems] == [(2, "unknown key 'event'")]
    assert problems[0].suggestion == "put it under 'trigger:', e.g. 'trigger: {event: ...}'"


def rule_text(key: str, value: str) -> tuple[str, int]:
    """Return a valid rule with ``key`` set to ``value`` on the last line, and that line."""
    fields = {"name": "r", "trigger": "{event: X}", "template": "t", "purpose": "marketing"}
    fields.pop(key, None)
    lines = [f"{name}: {text}" for name, text in fields.items()] + [f"{key}: {value}"]
    return "\n".join(lines) + "\n", len(lines)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("enabled", "'yes'", "'enabled' should be a valid boolean, got string 'yes'"),
        ("enabled", "yes", "'enabled' should be a valid boolean, got string 'yes'"),
        ("description", "12", "'description' should be a valid string, got integer 12"),
        ("name", "true", "'name' should be a valid string, got boolean true"),
        ("purpose", "newsletter", "unknown purpose 'newsletter'"),
        ("purpose", "12", "'purpose' should be a valid string, got integer 12"),
        ("channel", "sms", "'channel' should be 'email', got string 'sms'"),
        ("when", "5", "'when' must be a string or a list of strings"),
        ("when", "[]", "'when' list should have at least 1 item"),
        ("when", "[x > 1, 2]", "'when[1]' should be a valid string, got integer 2"),
        ("template", "../../etc", "'template' is not a valid name: '../../etc'"),
        ("trigger", "event", "'trigger' should be a valid dictionary"),
        ("trigger", "{order_status: {to: 3}}", "'trigger.order_status.to' must be a string"),
    ],
)
def test_wrong_value_names_the_key_and_line(
    write_rule: WriteRule, key: str, value: str, fragment: str
) -> None:
    # Given a rule whose last line has a wrong value
    text, line = rule_text(key, value)
    path = write_rule(text)

    # When it is loaded, then the error names the key, at its line
    error = load_error(path)
    assert (error.path, error.line) == (path, line)
    assert fragment in error.message


def test_bad_rule_name(write_rule: WriteRule) -> None:
    # Given a rule name with capitals and spaces
    path = write_rule("trigger: {event: X}\nname: Order Shipped\ntemplate: t\npurpose: marketing\n")

    # When it is loaded, then the error is at the name's line
    error = load_error(path)
    assert error.line == 2
    assert error.message == "'name' is not a valid name: 'Order Shipped'"


def test_missing_key_in_list_form_points_at_the_rule(write_rule: WriteRule) -> None:
    # Given a rules list whose second rule has no template
    path = write_rule(
        """
        rules:
          - name: a
            trigger: {event: X}
            template: t
            purpose: marketing
          - name: b
            trigger: {event: Y}
            purpose: marketing
        """
    )

    # When it is loaded, then the error is at the start of that rule
    error = load_error(path)
    assert error.line == 6
    assert error.message == "missing required key 'template' in 'rules[1]'"


@pytest.mark.parametrize(
    ("trigger", "found"),
    [
        ("{event: X, identify: {}}", "'event', 'identify'"),
        ("{}", "none"),
        ("{event: null}", "none"),
    ],
)
def test_trigger_needs_exactly_one_kind(write_rule: WriteRule, trigger: str, found: str) -> None:
    # Given a trigger with zero or two kinds on line 3
    path = write_rule(f"name: r\ntemplate: t\ntrigger: {trigger}\npurpose: marketing\n")

    # When it is loaded, then the error is at the trigger line
    error = load_error(path)
    assert error.line == 3
    assert (
        f"needs exactly one of 'order_status', 'event', 'identify', 'idle_for' (found {found})"
        in error.message
    )


def test_status_in_both_to_and_from_is_an_error(write_rule: WriteRule) -> None:
    # Given a status change that could never happen
    path = write_rule(
        "name: r\ntemplate: t\npurpose: marketing\n"
        "trigger:\n  order_status: {to: [shipped], from: [paid, shipped]}\n"
    )

    # When it is loaded, then it fails at order_status
    error = load_error(path)
    assert error.line == 5
    assert "share 'shipped'" in error.message


def test_root_must_be_a_mapping(write_rule: WriteRule) -> None:
    # Given a file that is a bare list
    path = write_rule("- name: a\n")

    # When it is loaded, then it says what a file should be
    error = load_error(path)
    assert error.message == "a rule file must be a mapping, got list"


def test_empty_rules_list_is_an_error(write_rule: WriteRule) -> None:
    # Given `rules:` with no rules
    path = write_rule("# none yet\nrules: []\n")

    # When it is loaded, then it fails at `rules`
    error = load_error(path)
    assert error.line == 2


def test_condition_syntax_error_is_at_the_when_line(write_rule: WriteRule) -> None:
    # Given a second condition (line 6) that does not parse
    path = write_rule(
        """
        name: r
        trigger: {event: X}
        template: t
        purpose: marketing
        when:
          - event.total > 0
          - event.total >
        """
    )

    # When it is loaded, then the error is at that list item
    error = load_error(path)
    assert (error.path, error.line) == (path, 7)
    assert "invalid condition 'event.total >'" in error.message


def test_single_condition_error_is_at_the_when_key(write_rule: WriteRule) -> None:
    # Given a single condition using an unknown variable
    path = write_rule(
        "name: r\ntrigger: {event: X}\nwhen: contcat.email\ntemplate: t\npurpose: marketing\n"
    )

    # When it is loaded, then the error is at `when` and suggests the variable
    error = load_error(path)
    assert error.line == 3
    assert error.message == "unknown variable 'contcat' in condition 'contcat.email'"
    assert error.suggestion == "did you mean 'contact'?"


def test_unknown_template_is_at_the_template_line(write_rule: WriteRule) -> None:
    # Given a rule naming a template that does not exist
    path = write_rule(SINGLE)

    # When it is loaded with a template check
    error = load_error(path, template_exists={"welcome"}.__contains__)

    # Then the error is at the template line
    assert (error.path, error.line) == (path, 7)
    assert error.message == "template 'order_shipped' does not exist"


def test_duplicate_rule_names_across_files(write_rule: WriteRule, tmp_path: Path) -> None:
    # Given two files defining the same rule name
    first = write_rule(SINGLE, "a.yaml")
    second = write_rule("rules:\n  - " + SINGLE.strip().replace("\n", "\n    "), "b/c.yml")

    # When the directory is loaded
    with pytest.raises(RuleFileError) as caught:
        load_rules(tmp_path)

    # Then the error is at the second definition and names the first
    error = caught.value
    assert (error.path, error.line) == (second, 3)
    assert error.message == f"rule name 'order-shipped' is already used at {first}:2"


def test_duplicate_rule_names_within_a_file(write_rule: WriteRule) -> None:
    # Given one file defining a rule name twice
    rule = "  - name: a\n    trigger: {event: X}\n    template: t\n    purpose: marketing\n"
    path = write_rule("rules:\n" + rule + rule)

    # When it is loaded, then the second one is the error
    error = load_error(path)
    assert error.line == 6
    assert error.message == f"rule name 'a' is already used at {path}:2"


def test_rule_files_are_found_recursively_and_sorted(write_rule: WriteRule, tmp_path: Path) -> None:
    # Given YAML files at several depths, plus files that are not rules
    for name in ("b.yaml", "a/z.yml", "a/b.yaml", "notes.txt", ".hidden/x.yaml", ".draft.yaml"):
        write_rule("x: 1\n", name)

    # When listing rule files, then only visible YAML files come back, by path
    found = [path.relative_to(tmp_path).as_posix() for path in rule_files(tmp_path)]
    assert found == ["a/b.yaml", "a/z.yml", "b.yaml"]


def test_load_rules_indexes_the_rules(write_rule: WriteRule, tmp_path: Path) -> None:
    # Given a directory with two rule files
    write_rule(SINGLE, "shipped.yaml")
    write_rule("name: hello\ntrigger: {identify: {}}\ntemplate: t\npurpose: marketing\n", "x.yml")

    # When it is loaded
    rule_set = load_rules(tmp_path, template_exists=lambda name: True)

    # Then the rules are indexed by trigger
    assert [rule.name for rule in rule_set.for_order_status("paid", "shipped")] == ["order-shipped"]
    assert [rule.name for rule in rule_set.for_identify(False)] == ["hello"]


def test_load_rules_missing_path(tmp_path: Path) -> None:
    # Given a path that does not exist; when loading, then the error names it
    with pytest.raises(RuleFileError, match="no such rule file or directory") as caught:
        load_rules(tmp_path / "nope")
    assert caught.value.path == tmp_path / "nope"


def test_load_stops_at_the_first_problem_and_counts_the_rest(write_rule: WriteRule) -> None:
    # Given a file with three problems
    path = write_rule("name: r\ntrigger: {evnt: X}\ntemplate: t\npurpose: spam\nchanel: x\n")

    # When it is loaded
    error = load_error(path)

    # Then the first (by line) is raised, with a note about the others
    assert error.line == 2
    assert error.__notes__ == ["2 more problem(s); run 'crm-notify rules lint' to list them all"]


def test_lint_collects_every_problem_across_files(write_rule: WriteRule, tmp_path: Path) -> None:
    # Given one file with two problems, one with invalid YAML, one valid, one duplicate name
    bad = write_rule("name: r\ntrigger: {event: X}\ntempalte: t\npurpose: spam\n", "1.yaml")
    broken = write_rule("name: [\n", "2.yaml")
    write_rule(SINGLE, "3.yaml")
    duplicate = write_rule(SINGLE, "4.yaml")
    rules_form = write_rule(
        """
        rules:
          - name: ok
            trigger: {event: X}
            template: missing
            purpose: marketing
          - name: bad
            trigger: {event: X}
            template: t
            purpose: marketing
            when: order.total >
        """,
        "5.yaml",
    )

    # When the directory is linted
    problems = lint_rules(tmp_path, template_exists=lambda name: name != "missing")

    # Then every problem is reported with its file and line, by file then line
    assert [(p.path, p.line) for p in problems] == [
        (bad, 3),
        (bad, 4),
        (broken, 2),
        (duplicate, 2),
        (rules_form, 4),
        (rules_form, 10),
    ]
    assert problems[0].suggestion == "did you mean 'template'?"


def test_lint_clean_directory_has_no_problems(write_rule: WriteRule, tmp_path: Path) -> None:
    # Given a valid rule; when it is linted, then there is nothing to report
    write_rule(SINGLE)
    assert lint_rules(tmp_path) == []


def test_lint_missing_path_is_a_problem(tmp_path: Path) -> None:
    # Given a path that does not exist; when linting, then that is the one problem
    [problem] = lint_rules(tmp_path / "nope")
    assert problem.path == tmp_path / "nope"


def test_shipped_samples_load() -> None:
    # Given the sample rules shipped in rules/
    # When they are loaded without a template check
    rule_set = load_rules(SAMPLES, template_exists=None)

    # Then each sample is there with the documented trigger and purpose
    shipped = rule_set.by_name("order-shipped")
    cancelled = rule_set.by_name("order-cancelled")
    welcome = rule_set.by_name("welcome")
    assert shipped is not None and cancelled is not None and welcome is not None
    assert (shipped.template, shipped.purpose) == ("order_shipped", Purpose.TRANSACTIONAL)
    assert rule_set.for_order_status("paid", "shipped") == (shipped,)
    assert (cancelled.template, cancelled.purpose) == ("order_cancelled", Purpose.TRANSACTIONAL)
    assert rule_set.for_order_status("paid", "cancelled") == (cancelled,)
    assert (welcome.template, welcome.purpose) == ("welcome", Purpose.TRANSACTIONAL)
    assert rule_set.for_identify(True) == (welcome,)
    assert rule_set.for_identify(False) == ()
    assert lint_rules(SAMPLES) == []


def test_json_schema_describes_both_forms() -> None:
    # Given the JSON Schema of the format
    schema = rule_file_json_schema()

    # Then it is a titled 2020-12 schema accepting a rule or a rules list
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "crm-notify rule file"
    refs = sorted(option["$ref"] for option in schema["anyOf"])
    assert refs == ["#/$defs/RuleSpec", "#/$defs/RulesFileSpec"]
    rule = schema["$defs"]["RuleSpec"]
    assert rule["additionalProperties"] is False
    assert set(rule["required"]) == {"name", "trigger", "purpose"}
    assert rule["anyOf"] == [
        {"required": ["template"]},
        {"required": ["steps"]},
        {"required": ["actions"]},
    ]
    assert rule["properties"]["purpose"]["pattern"] == "^[a-z][a-z0-9_]*$"
    assert rule["properties"]["purpose"]["examples"] == ["transactional", "marketing"]
    trigger = schema["$defs"]["TriggerSpec"]
    assert set(trigger["properties"]) == {"order_status", "event", "identify", "idle_for"}
    assert (trigger["minProperties"], trigger["maxProperties"]) == (1, 1)
    assert set(schema["$defs"]["OrderStatusSpec"]["properties"]) == {"to", "from"}
    assert schema["$defs"]["RulesFileSpec"]["properties"]["rules"]["items"] == {
        "$ref": "#/$defs/RuleSpec"
    }


@pytest.mark.parametrize("sample", rule_files(SAMPLES), ids=lambda path: path.name)
def test_json_schema_fits_the_samples(sample: Path) -> None:
    # Given a sample rule file and the schema (jsonschema is not installed: check structure)
    schema = rule_file_json_schema()
    definitions = schema["$defs"]
    data = read_yaml_file(sample).data

    # Then its keys are all known to the schema and the required ones are present
    rule = definitions["RuleSpec"]
    assert set(data) <= set(rule["properties"])
    assert set(rule["required"]) <= set(data)
    trigger = definitions["TriggerSpec"]
    assert len(data["trigger"]) == 1
    [(kind, value)] = data["trigger"].items()
    assert kind in trigger["properties"]
    specs = {
        "order_status": "OrderStatusSpec",
        "identify": "IdentifySpec",
        "idle_for": "IdleForSpec",
    }
    if kind in specs:
        spec = definitions[specs[kind]]
        assert set(value) <= set(spec["properties"])
        assert set(spec.get("required", ())) <= set(value)
    step = definitions["StepSpec"]
    for item in data.get("steps", ()):
        assert set(item) <= set(step["properties"])
        assert set(step["required"]) <= set(item)
    assert ("template" in data) != ("steps" in data)
    assert data["purpose"] in rule["properties"]["purpose"]["examples"]


def test_unknown_key_in_list_form_suggests_and_other_rules_still_check(
    write_rule: WriteRule,
) -> None:
    # Given a rules list: the first rule has a misspelt key, the second a missing template
    path = write_rule(
        """
        rules:
          - {name: a, trigger: {event: X}, template: t, purpose: marketing, enabeld: false}
          - name: b
            trigger: {event: Y}
            template: gone
            purpose: marketing
        """
    )

    # When it is linted with a template check
    problems = lint_rules(path, template_exists=lambda name: name == "t")

    # Then both rules report their own problem at their own line
    assert [(p.line, p.message, p.suggestion) for p in problems] == [
        (2, "unknown key 'enabeld'", "did you mean 'enabled'?"),
        (5, "template 'gone' does not exist", "create templates/gone/ or fix the name"),
    ]


def test_unknown_top_level_key_beside_rules(write_rule: WriteRule) -> None:
    # Given `rules:` with a stray `name:` beside it
    path = write_rule(
        "rules:\n  - {name: a, trigger: {event: X}, template: t, purpose: marketing}\nname: x\n"
    )

    # When it is loaded, then the stray key is the error, listing what is allowed there
    error = load_error(path)
    assert (error.line, error.message, error.suggestion) == (
        3,
        "unknown key 'name'",
        "expected one of: rules",
    )
