"""Rule test files -> validated cases whose Segment calls are already parsed.

Every problem is a ``RuleFileError`` at the line of the key it is about: schema errors (via the
rule loader's mapping of pydantic errors), calls the event API would refuse, and what needs
the loaded rules to check (a rule or template name that does not exist).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from crm_notify.errors import EventValidationError, RuleFileError
from crm_notify.events.emails import normalise_email
from crm_notify.events.schemas import SegmentCall, parse_call
from crm_notify.rules._testing_spec import (
    DEFAULT_USER_ID,
    CaseSpec,
    EventSpec,
    GateAnswerSpec,
    RuleTestFileSpec,
)
from crm_notify.rules._validation_errors import describe, dotted, validation_problems
from crm_notify.rules.durations import format_duration
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.model import Purpose, Rule
from crm_notify.rules.yaml_source import NodePath, YamlDocument, read_yaml_file

#: Simulated start of a case that names no ``start``.
DEFAULT_START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
#: How long a case runs after its last event when it names no ``until``.
DEFAULT_RUN_AFTER = timedelta(days=30)


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """One expected notification; ``at`` (from the start) is ``None`` for "any time"."""

    rule: str
    template: str
    at: timedelta | None
    line: int

    def describe(self) -> str:
        """Return it as reports show it: ``abandoned-cart abandoned_cart at +2d``."""
        when = "(any time)" if self.at is None else f"at +{format_duration(self.at)}"
        return f"{self.rule} {self.template} {when}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseCall:
    """A Segment call of a case, arriving ``at`` after the start; ``line`` locates it."""

    at: timedelta
    call: SegmentCall
    line: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleTestCase:
    """One validated case: its calls in arrival order (the contact's identify first)."""

    name: str
    path: Path
    line: int
    start: datetime
    until: timedelta
    rule: str | None
    user_id: str
    consent: frozenset[Purpose]
    calls: tuple[CaseCall, ...]
    expect: tuple[Expectation, ...]
    gate: GateAnswerSpec = field(default_factory=GateAnswerSpec)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleTestFile:
    """The cases of one test file, in file order."""

    path: Path
    cases: tuple[RuleTestCase, ...]


def load_rule_test_file(
    path: Path, *, rules: RuleSet
) -> tuple[RuleTestFile | None, list[RuleFileError]]:
    """Read and validate one rule test file against the loaded rules.

    Parameters:
        path: a ``*.test.yaml`` file.
        rules: the rules the cases run against (rule and template names are checked).

    Returns:
        The file and no problems; or ``None`` and every problem found, by line.
    """
    try:
        document = read_yaml_file(path)
    except RuleFileError as exc:
        return None, [exc]
    if not isinstance(document.data, dict):
        problem = RuleFileError(
            path,
            document.line_for(()),
            f"a rule test file must be a mapping, got {describe(document.data)}",
            "write the cases in a list under 'cases:'",
        )
        return None, [problem]
    try:
        spec = RuleTestFileSpec.model_validate(document.data)
    except ValidationError as exc:
        return None, validation_problems(path, document, RuleTestFileSpec, exc)
    loader = _CaseLoader(path, document, rules)
    cases = [loader.case(index, case) for index, case in enumerate(spec.cases)]
    if loader.problems:
        return None, sorted(loader.problems, key=lambda err: err.line or 0)
    return RuleTestFile(path=path, cases=tuple(cases)), []


class _CaseLoader:
    """Builds cases, collecting the problems only the loaded rules or the event API can see."""

    def __init__(self, path: Path, document: YamlDocument, rules: RuleSet) -> None:
        self.path = path
        self.document = document
        self.rules = rules
        self.problems: list[RuleFileError] = []
        self._names: dict[str, int] = {}

    def problem(self, loc: NodePath, message: str, suggestion: str | None = None) -> None:
        self.problems.append(
            RuleFileError(self.path, self.document.line_for(loc), message, suggestion)
        )

    def case(self, index: int, spec: CaseSpec) -> RuleTestCase:
        loc: NodePath = ("cases", index)
        line = self.document.line_for((*loc, "name")) or 1
        first = self._names.setdefault(spec.name, line)
        if first != line:
            self.problem((*loc, "name"), f"case name '{spec.name}' is already used on line {first}")
        start = spec.start or DEFAULT_START
        user_id = spec.contact.user_id if spec.contact is not None else DEFAULT_USER_ID
        calls = self._calls(loc, spec, start, user_id)
        last = max((call.at for call in calls), default=timedelta(0))
        until = spec.until if spec.until is not None else last + DEFAULT_RUN_AFTER
        if until < last:
            self.problem(
                (*loc, "until"),
                f"'until' ({format_duration(until)}) is before the last event "
                f"(at {format_duration(last)})",
            )
        if spec.rule is not None:
            self._check_rule((*loc, "rule"), spec.rule)
        return RuleTestCase(
            name=spec.name,
            path=self.path,
            line=line,
            start=start,
            until=until,
            rule=spec.rule,
            user_id=user_id,
            consent=frozenset(spec.contact.consent) if spec.contact is not None else frozenset(),
            calls=tuple(calls),
            expect=tuple(self._expectations(loc, spec)),
            gate=spec.gate or GateAnswerSpec(),
        )

    def _calls(
        self, loc: NodePath, spec: CaseSpec, start: datetime, user_id: str
    ) -> list[CaseCall]:
        calls = []
        if spec.contact is not None:
            traits = dict(spec.contact.traits)
            if spec.contact.email is not None:
                traits["email"] = spec.contact.email
            identify = {"type": "identify", "userId": user_id, "traits": traits}
            contact_loc = (*loc, "contact")
            calls.append(self._call(contact_loc, identify, start, timedelta(0), "contact"))
        previous = timedelta(0)
        for number, event in enumerate(spec.events):
            event_loc = (*loc, "events", number)
            if event.at < previous:
                self.problem(
                    (*event_loc, "at"),
                    f"events must be in arrival order: 'at: {format_duration(event.at)}' comes "
                    f"after 'at: {format_duration(previous)}'",
                )
            previous = max(previous, event.at)
            obj = _call_object(event, user_id)
            if event.timestamp is not None:
                obj["timestamp"] = (start + event.timestamp).isoformat()
            calls.append(self._call(event_loc, obj, start, event.at, str(number)))
        return [call for call in calls if call is not None]

    def _call(
        self, loc: NodePath, obj: dict[str, Any], start: datetime, at: timedelta, tag: str
    ) -> CaseCall | None:
        arrival = start + at
        if "timestamp" not in obj and "originalTimestamp" not in obj:
            obj["timestamp"] = arrival.isoformat()
        obj.setdefault("messageId", f"rules-test:{loc[1]}:{tag}")
        try:
            call = parse_call(obj, type_hint=None, received_at=arrival)
            if call.type == "identify" and call.traits.get("email"):
                normalise_email(call.traits["email"])
        except EventValidationError as exc:
            # A full `call:` maps the field onto its own keys; shorthands point at the event.
            field = [part for part in exc.field.replace("[", ".").split(".") if part]
            where: NodePath = (*loc, "call", *(p.rstrip("]") for p in field))
            self.problem(where, f"'{dotted(loc)}' is not a valid Segment call: {exc}")
            return None
        return CaseCall(at=at, call=call, line=self.document.line_for(loc) or 1)

    def _expectations(self, loc: NodePath, spec: CaseSpec) -> list[Expectation]:
        found = []
        for number, item in enumerate(spec.expect):
            item_loc = (*loc, "expect", number)
            rule_name = item.rule or spec.rule
            if rule_name is None:
                self.problem(
                    item_loc,
                    f"missing required key 'rule' in '{dotted(item_loc)}'",
                    "name the rule here, or restrict the case to one with 'rule:'",
                )
                continue
            if spec.rule is not None and rule_name != spec.rule:
                self.problem(
                    (*item_loc, "rule"),
                    f"expects rule '{rule_name}', but the case only looks at '{spec.rule}'",
                )
            rule = self._check_rule((*item_loc, "rule"), rule_name)
            templates = _templates_of(rule) if rule else []
            if rule is not None and item.template not in templates:
                self.problem(
                    (*item_loc, "template"),
                    f"rule '{rule_name}' never sends template '{item.template}'",
                    "its templates: " + ", ".join(templates),
                )
            line = self.document.line_for(item_loc) or 1
            found.append(Expectation(rule=rule_name, template=item.template, at=item.at, line=line))
        return found

    def _check_rule(self, loc: NodePath, name: str) -> Rule | None:
        rule = self.rules.by_name(name)
        if rule is None:
            names = [known.name for known in self.rules.rules]
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "rules: " + ", ".join(names)
            self.problem(loc, f"no rule named '{name}'", hint)
        return rule


def _call_object(event: EventSpec, user_id: str) -> dict[str, Any]:
    """The Segment call an event stands for (without timestamp and messageId yet)."""
    obj: dict[str, Any]
    if event.track is not None:
        obj = {"type": "track", "event": event.track, "properties": event.properties or {}}
    elif event.identify is not None:
        obj = {"type": "identify", "traits": dict(event.identify)}
    else:
        assert event.call is not None  # EventSpec guarantees exactly one kind
        obj = dict(event.call)
    if event.user_id is not None:
        obj["userId"] = event.user_id
    elif "userId" not in obj and "anonymousId" not in obj:
        obj["userId"] = user_id
    return obj


def _templates_of(rule: Rule) -> list[str]:
    """What ``rule`` may send: its steps' templates, its digest template, its webhook actions
    and its send gate's follow-up templates."""
    templates = [step.template for step in rule.steps if step.template]
    gate = rule.gate
    extra = [rule.digest_template, gate and gate.on_rejected, gate and gate.on_timed_out]
    templates += [name for name in extra if name and name not in templates]
    return templates + [action.name for action in rule.actions]
