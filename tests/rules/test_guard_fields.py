"""Rule-file keys for the guards: purpose, limit, over_limit, digest_template, quiet_hours,
dedupe_key; and the setting parsers they share (parse_limit, parse_quiet_hours)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import time, timedelta
from pathlib import Path

import pytest

from crm_notify.errors import ConditionError, RuleFileError
from crm_notify.rules import lint_rules, load_rule_file, load_rules, rule_file_json_schema
from crm_notify.rules.model import (
    InvalidLimitError,
    Limit,
    OverLimit,
    QuietWindow,
    parse_limit,
    parse_quiet_hours,
)

WriteRule = Callable[..., Path]

BASE = "name: r\ntrigger: {event: X}\ntemplate: t\npurpose: marketing\n"


def load_one(write_rule: WriteRule, extra: str, **kwargs: object) -> object:
    [rule] = load_rule_file(write_rule(BASE + extra), **kwargs)  # type: ignore[arg-type]
    return rule


def load_error(write_rule: WriteRule, extra: str, **kwargs: object) -> RuleFileError:
    path = write_rule(BASE + extra)
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(path, **kwargs)  # type: ignore[arg-type]
    assert caught.value.path == path
    return caught.value


# -- defaults ---------------------------------------------------------------------------------


def test_guard_fields_default(write_rule: WriteRule) -> None:
    # Given a rule with none of the guard keys; when loaded, then they have their defaults
    rule = load_one(write_rule, "")
    assert rule.limit is None  # type: ignore[attr-defined]
    assert rule.over_limit is OverLimit.DROP  # type: ignore[attr-defined]
    assert rule.digest_template is None  # type: ignore[attr-defined]
    assert rule.quiet_hours is None  # type: ignore[attr-defined]
    assert rule.dedupe_key is None  # type: ignore[attr-defined]


# -- purpose ----------------------------------------------------------------------------------


def test_custom_purpose_loads_when_configured(write_rule: WriteRule) -> None:
    # Given a rule with a custom purpose, and the purpose configured
    path = write_rule(BASE.replace("marketing", "newsletter"))

    # When loaded with it configured, then the rule carries it as a string
    [rule] = load_rule_file(path, purposes=("transactional", "marketing", "newsletter"))
    assert rule.purpose == "newsletter"
    assert load_rules(path, purposes=("transactional", "marketing", "newsletter")).by_name("r")


def test_unknown_purpose_names_the_line_and_the_setting(write_rule: WriteRule) -> None:
    # Given a rule whose purpose is not configured
    path = write_rule(BASE.replace("marketing", "newsletter"))

    # When loaded with the default purposes, then the error is at the purpose line
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    assert caught.value.line == 4
    assert str(caught.value) == (
        f"{path}:4: unknown purpose 'newsletter' "
        "(configured: transactional, marketing; add it to CRM_NOTIFY_PURPOSES)"
    )


def test_misspelt_purpose_suggests_the_close_one(write_rule: WriteRule) -> None:
    # Given a purpose with a typo; when linted, then the suggestion names the right one
    path = write_rule(BASE.replace("marketing", "marketin"))
    [problem] = lint_rules(path)
    assert problem.suggestion is not None
    assert problem.suggestion.startswith("did you mean 'marketing'? configured:")


def test_unknown_purpose_is_listed_beside_other_problems(write_rule: WriteRule) -> None:
    # Given a rules list: one rule has a bad purpose and a misspelt key, the other a bad purpose
    path = write_rule(
        """
        rules:
          - {name: a, trigger: {event: X}, template: t, purpose: spam, enabeld: true}
          - name: b
            trigger: {event: Y}
            template: t
            purpose: "Marketing"
        """
    )

    # When linted, then every problem is listed at its line
    problems = lint_rules(path)
    assert [(p.line, p.message) for p in problems] == [
        (2, "unknown key 'enabeld'"),
        (2, "unknown purpose 'spam'"),
        (6, "unknown purpose 'Marketing'"),
    ]


# -- limit ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["limit: {count: 1, per: 7d}", 'limit: "1/7d"', "limit: 1/7d", "limit: 1/P7D"],
)
def test_limit_forms(write_rule: WriteRule, text: str) -> None:
    # Given a limit as a mapping or the shorthand; when loaded, then it is 1 per 7 days
    rule = load_one(write_rule, text + "\n")
    assert rule.limit == Limit(1, timedelta(days=7))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("limit: 0/7d", "'limit' is not valid: the count should be a whole number from 1, got '0'"),
        ("limit: 1/0", "'limit' is not valid: the duration must be more than zero, got '0'"),
        ("limit: 1 per week", "'limit' is not valid: write COUNT/DURATION, e.g. 1/7d or 3/24h"),
        ("limit: 1/7 days", "'limit' is not valid: write COUNT/DURATION"),
        ("limit: 1/1mo", "'limit' is not valid: invalid duration '1mo'"),
        ("limit: {count: 0, per: 7d}", "'limit.count' should be greater than or equal to 1"),
        ("limit: {count: '1', per: 7d}", "'limit.count' should be a valid integer"),
        ("limit: {count: 1, per: 0}", "'limit.per' must be more than zero"),
        ("limit: {count: 1}", "missing required key 'per' in 'limit'"),
    ],
)
def test_bad_limit_is_an_error_at_its_line(write_rule: WriteRule, text: str, fragment: str) -> None:
    # Given a rule whose last line is a bad limit; when loaded, then the error is there
    error = load_error(write_rule, text + "\n")
    assert error.line == 5
    assert fragment in error.message, error.message


def test_limit_key_typo_is_suggested(write_rule: WriteRule) -> None:
    # Given `limit: {count: 1, pre: 7d}`; when loaded, then the right key is suggested
    error = load_error(write_rule, "limit: {count: 1, pre: 7d}\n")
    assert (error.message, error.suggestion) == ("unknown key 'pre'", "did you mean 'per'?")


def test_parse_limit() -> None:
    # Given the setting's form; when parsed, then count and window are read
    assert parse_limit("3/24h") == Limit(3, timedelta(hours=24))
    assert parse_limit(" 2 / 1d12h ") == Limit(2, timedelta(hours=36))
    assert str(parse_limit("3/24h")) == "3/1d"
    for bad in ("", "3", "3/", "/24h", "-1/24h", "3/-1h", "three/24h", "3/24x"):
        with pytest.raises(InvalidLimitError, match=r"invalid limit"):
            parse_limit(bad)
    with pytest.raises(ValueError, match="count"):
        Limit(0, timedelta(hours=1))


def test_limit_in_words() -> None:
    # Given limits; when described, then they read as in the decision log
    assert Limit(1, timedelta(days=7)).describe() == "1 per 7 days"
    assert Limit(3, timedelta(hours=24)).describe() == "3 per day"
    assert Limit(2, timedelta(hours=36)).describe() == "2 per 36 hours"
    assert Limit(5, timedelta(seconds=90)).describe() == "5 per 90 seconds"
    assert Limit(1, timedelta(milliseconds=1500)).describe() == "1 per 1.5s"


# -- over_limit and digest_template -----------------------------------------------------------


def test_over_limit_digest_with_template(write_rule: WriteRule) -> None:
    # Given `over_limit: digest` with an existing digest template
    rule = load_one(
        write_rule,
        "limit: 1/7d\nover_limit: digest\ndigest_template: weekly\n",
        template_exists=lambda name: name in {"t", "weekly"},
    )

    # Then both are on the rule
    assert rule.over_limit is OverLimit.DIGEST  # type: ignore[attr-defined]
    assert rule.digest_template == "weekly"  # type: ignore[attr-defined]


def test_over_limit_defer(write_rule: WriteRule) -> None:
    rule = load_one(write_rule, "limit: 1/7d\nover_limit: defer\n")
    assert rule.over_limit is OverLimit.DEFER  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "line", "message"),
    [
        ("over_limit: digest\n", 5, "'over_limit: digest' needs 'digest_template'"),
        (
            "digest_template: weekly\n",
            5,
            "'digest_template' is only used with 'over_limit: digest'",
        ),
        (
            "over_limit: defer\ndigest_template: weekly\n",
            6,
            "'digest_template' is only used with 'over_limit: digest'",
        ),
        ("over_limit: digest\ndigest_template: gone\n", 6, "template 'gone' does not exist"),
        ("over_limit: merge\n", 5, "'over_limit' should be 'drop', 'defer' or 'digest'"),
        ("over_limit: digest\ndigest_template: ../x\n", 6, "'digest_template' is not a valid name"),
    ],
)
def test_digest_problems(write_rule: WriteRule, extra: str, line: int, message: str) -> None:
    # Given a wrong combination; when loaded with a template check, then it is reported there
    error = load_error(write_rule, extra, template_exists=lambda name: name in {"t", "weekly"})
    assert error.line == line
    assert message in error.message, error.message


# -- quiet_hours ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("quiet_hours: true", True),
        ("quiet_hours: false", False),
        ('quiet_hours: {start: "21:00", end: "08:00"}', QuietWindow(time(21), time(8))),
        ('quiet_hours: {start: "9:30", end: "17:00"}', QuietWindow(time(9, 30), time(17))),
        ('quiet_hours: "22:00-07:00"', QuietWindow(time(22), time(7))),
        ("quiet_hours: {start: 21:00, end: 08:00}", QuietWindow(time(21), time(8))),  # YAML 1.2
    ],
)
def test_quiet_hours_forms(write_rule: WriteRule, text: str, expected: object) -> None:
    rule = load_one(write_rule, text + "\n")
    assert rule.quiet_hours == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('quiet_hours: {start: "21:00", end: "21:00"}', "start and end at the same time"),
        ('quiet_hours: {start: "25:00", end: "08:00"}', "invalid time '25:00'"),
        ("quiet_hours: {start: 2100, end: 800}", "should be true, false or {start:"),
        ('quiet_hours: {start: "21:00"}', "should be true, false or {start:"),
        ("quiet_hours: 'yes'", "invalid quiet hours 'yes'"),
        ("quiet_hours: 1", "should be true, false or {start:"),
    ],
)
def test_bad_quiet_hours(write_rule: WriteRule, text: str, fragment: str) -> None:
    error = load_error(write_rule, text + "\n")
    assert error.line == 5
    assert error.message.startswith("'quiet_hours' ")
    assert fragment in error.message, error.message


def test_parse_quiet_hours() -> None:
    assert parse_quiet_hours("21:00-08:00") == QuietWindow(time(21), time(8))
    assert str(parse_quiet_hours(" 9:05 - 17:30 ")) == "09:05-17:30"
    assert parse_quiet_hours("") is None
    assert parse_quiet_hours("  ") is None
    for bad in ("21:00", "21-08", "21:00-08:60", "24:00-08:00", "08:00-08:00", "a-b"):
        with pytest.raises(ValueError, match=r"invalid|same time"):
            parse_quiet_hours(bad)


def test_quiet_window_contains_wraps_midnight() -> None:
    night = QuietWindow(time(21), time(8))
    assert [night.contains(time(h)) for h in (20, 21, 23, 0, 7, 8)] == [
        False,
        True,
        True,
        True,
        True,
        False,
    ]
    day = QuietWindow(time(9), time(17))
    assert [day.contains(time(h)) for h in (8, 9, 16, 17)] == [False, True, True, False]


# -- dedupe_key -------------------------------------------------------------------------------


def test_dedupe_key_renders(write_rule: WriteRule) -> None:
    # Given a dedupe key template
    rule = load_one(write_rule, 'dedupe_key: "{{ order.order_id }}"\n')
    key = rule.dedupe_key  # type: ignore[attr-defined]

    # Then it renders the order id, and nothing (no dedupe) when there is no order or it is blank
    assert key.source == "{{ order.order_id }}"
    assert key.render({"order": {"order_id": "A-1"}}) == "A-1"
    assert key.render({"order": {"order_id": 42}}) == "42"
    assert key.render({"order": {"order_id": "  "}}) is None
    assert key.render({"order": {}}) is None
    assert key.render({"order": None}) is None
    assert key.render({}) is None


def test_dedupe_key_bare_expression_and_composite(write_rule: WriteRule) -> None:
    bare = load_one(write_rule, "dedupe_key: order.order_id\n")
    assert bare.dedupe_key.render({"order": {"order_id": "A-2"}}) == "A-2"  # type: ignore[attr-defined]
    composite = load_one(write_rule, 'dedupe_key: "{{ event.event }}:{{ cart.cart_id }}"\n')
    context = {"event": {"event": "X"}, "cart": {"cart_id": 7}}
    assert composite.dedupe_key.render(context) == "X:7"  # type: ignore[attr-defined]


def test_dedupe_key_errors_at_render(write_rule: WriteRule) -> None:
    # Given a key that divides by zero, and one far too long
    broken = load_one(write_rule, 'dedupe_key: "{{ 1 // order.n }}"\n').dedupe_key  # type: ignore[attr-defined]
    long = load_one(write_rule, 'dedupe_key: "{{ order.id * 300 }}"\n').dedupe_key  # type: ignore[attr-defined]

    # When rendered, then a ConditionError names the file and line
    with pytest.raises(ConditionError, match=r"rule\.yaml:5: dedupe_key .* failed"):
        broken.render({"order": {"n": 0}})
    with pytest.raises(ConditionError, match="is 300 characters long; the limit is 255"):
        long.render({"order": {"id": "x"}})
    assert long.render({"order": {"id": "x" * 0}}) is None


@pytest.mark.parametrize(
    ("text", "fragment", "suggestion"),
    [
        ('dedupe_key: "{{ order.order_id "', "invalid dedupe_key", None),
        ('dedupe_key: "{{ ordr.order_id }}"', "unknown variable 'ordr'", "did you mean 'order'?"),
        ("dedupe_key: order.", "invalid dedupe_key 'order.'", None),
        ("dedupe_key: ''", "'dedupe_key' string should have at least 1 character", None),
    ],
)
def test_bad_dedupe_key_at_load(
    write_rule: WriteRule, text: str, fragment: str, suggestion: str | None
) -> None:
    error = load_error(write_rule, text + "\n")
    assert error.line == 5
    assert fragment in error.message, error.message
    if suggestion:
        assert error.suggestion == suggestion


# -- schema -----------------------------------------------------------------------------------


def test_json_schema_describes_the_guard_keys() -> None:
    rule = rule_file_json_schema()["$defs"]["RuleSpec"]["properties"]
    limit = rule["limit"]["anyOf"]
    assert {option.get("type") for option in limit[0]["anyOf"]} == {"string", "object"}
    assert limit[0]["anyOf"][1]["required"] == ["count", "per"]
    assert rule["over_limit"]["default"] == "drop"
    assert "digest_template" in rule
    quiet = rule["quiet_hours"]["anyOf"][0]["anyOf"]
    assert [option["type"] for option in quiet] == ["boolean", "object", "string"]
    assert rule["dedupe_key"]["anyOf"][0]["type"] == "string"
    assert rule["purpose"]["type"] == "string"
