"""Rule tests: cases next to the rules, run on the real engine with a simulated clock.

``crm-notify rules test [PATH]`` runs them. A rule file ``rules/<name>.yaml`` may have test
cases in ``rules/<name>.test.yaml`` (or ``.test.yml``); those files are never loaded as rules.
Format (YAML 1.2, read like rule files; unknown keys are errors)::

    cases:
      - name: reminder 48 hours after the last cart activity      # required, unique in the file
        contact:                       # optional: identified at `start`, before the events
          user_id: u1                  #   default test-user; also the events' userId
          email: alice@example.com     #   optional
          traits: {first_name: Alice}  #   optional: the identify call's other traits
          consent: [marketing]         #   optional: purposes the contact consented to
        start: 2026-03-27T12:00:00Z    # optional simulated start (default 2026-01-01T12:00:00Z)
        events:                        # Segment calls, in arrival order
          - at: 0h                     #   required: when it arrives, from `start` (a duration)
            track: Product Added       #   exactly one of `track:` (with `properties:`),
            properties: {cart_id: C1, product_id: P1, name: Mug}
          - at: 30h                    #   `identify:` {traits},
            identify: {first_name: Alicia}
          - at: 30h                    #   or `call:` {a whole Segment call, with its `type`}
            call: {type: track, event: Cart Viewed, properties: {cart_id: C1}}
            # timestamp: 28h           #   optional: when it happened, if before it arrived
            #                          #   (negative: before `start`); default `at`
            # user_id: u2              #   optional: another contact's call
        until: 200h                    # optional: run up to this offset (default: last event + 30d)
        rule: abandoned-cart           # optional: only this rule's notifications count
        gate: {answer: release, after: 0s}  # optional, for gated rules: how the integration
                                       #   answers each gate `after` it opened: release
                                       #   (default), reject (with `reason:`), or none (the
                                       #   gate's timeout decides)
        expect:                        # required: exactly these notifications, in order ([] = none)
          - {rule: abandoned-cart, template: abandoned_cart, at: 78h}
          - {template: abandoned_cart_reminder, at: 150h}   # `rule` defaults to the case's

Durations are written as in rule files (``48h``, ``1d12h``, ``PT48H``, ``0``). An expected
``at`` must match the moment the send was decided (for a send a gate held: released) within a
minute; without ``at`` any time matches. A send a gate rejected, dropped or withdrew is not
sent; the follow-ups its rule names (another template, a retry) are.

Each case runs on a fresh in-memory SQLite database with the real intake and scheduler and the
rules under test. The clock is frozen (freezegun) and jumps from one moment that matters to
the next: the next call's arrival, the next pending timer's due time, or the next moment a
gate is answered or times out, until ``until`` (inclusive); at each moment the calls arriving
then are ingested, one request each, a scheduler pass runs, and the gates due are answered as
the case's ``gate`` says (each gate counts as notified). The send policy is the configured
one (quiet hours, limits), its consent guard a :class:`CaseConsentGuard` that also counts the
case's ``consent`` list as grants; calls may record consent too (Segment
``context.consent``, consent traits). Notifications are decided, not rendered or delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from freezegun import freeze_time

from crm_notify.db import import_models
from crm_notify.errors import RuleFileError
from crm_notify.guards import SendPolicy
from crm_notify.rules._testing_load import (
    DEFAULT_RUN_AFTER,
    DEFAULT_START,
    Expectation,
    RuleTestCase,
    RuleTestFile,
    load_rule_test_file,
)
from crm_notify.rules._testing_run import (
    AT_TOLERANCE,
    CaseConsentGuard,
    CaseResult,
    DecisionNote,
    Sent,
    case_policy,
    run_case,
)
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.loader import RULE_TEST_FILE_SUFFIXES, is_rule_test_file

__all__ = [
    "AT_TOLERANCE",
    "DEFAULT_RUN_AFTER",
    "DEFAULT_START",
    "CaseConsentGuard",
    "CaseResult",
    "DecisionNote",
    "Expectation",
    "FileResult",
    "RuleTestCase",
    "RuleTestFile",
    "Sent",
    "case_policy",
    "exit_status",
    "find_rule_tests",
    "format_results",
    "load_rule_test_file",
    "run_case",
    "run_rule_tests",
]

#: Decisions shown under a failed case, at most.
MAX_DECISIONS_SHOWN = 10
_INDENT = " " * 7


@dataclass(frozen=True, slots=True, kw_only=True)
class FileResult:
    """The results of one test file: its cases', or the problems that kept it from running."""

    path: Path
    cases: tuple[CaseResult, ...] = ()
    problems: tuple[RuleFileError, ...] = ()


def find_rule_tests(path: Path) -> list[Path]:
    """Return the rule test files at ``path``.

    Parameters:
        path: a test file (itself); a rule file (its ``.test.yaml``/``.test.yml`` sibling, if
            any); or a directory (its test files, recursively, hidden ones skipped).

    Returns:
        The files, sorted by path.
    """
    if path.is_file():
        if is_rule_test_file(path):
            return [path]
        siblings = (path.with_name(path.stem + suffix) for suffix in RULE_TEST_FILE_SUFFIXES)
        return [sibling for sibling in siblings if sibling.is_file()]
    found = (
        file
        for file in path.rglob("*.test.y*ml")
        if is_rule_test_file(file)
        and file.is_file()
        and not any(part.startswith(".") for part in file.relative_to(path).parts)
    )
    return sorted(found, key=lambda file: file.relative_to(path).as_posix())


def run_rule_tests(
    paths: Sequence[Path], *, rules: RuleSet, policy: SendPolicy | None = None
) -> list[FileResult]:
    """Load and run the cases of each test file, on a simulated clock.

    Parameters:
        paths: rule test files.
        rules: the rules under test.
        policy: the send policy as configured (quiet hours, limits); default: the standard one.

    Returns:
        One result per file, in order.
    """
    # Every table module must be imported before the clock freezes: a SQLModel class created
    # while freezegun runs would see its fake ``datetime`` class as a field type.
    import_models()
    results = []
    with freeze_time(DEFAULT_START) as clock:
        for path in paths:
            loaded, problems = load_rule_test_file(path, rules=rules)
            if loaded is None:
                results.append(FileResult(path=path, problems=tuple(problems)))
                continue
            cases = tuple(run_case(case, rules, clock, policy=policy) for case in loaded.cases)
            results.append(FileResult(path=path, cases=cases))
    return results


def exit_status(results: Sequence[FileResult]) -> int:
    """Return the command's exit status: 2 for an invalid file or a case that could not run,
    1 for a failed case, else 0."""
    cases = [case for result in results for case in result.cases]
    if any(result.problems for result in results) or any(case.error for case in cases):
        return 2
    return 0 if all(case.passed for case in cases) else 1


def format_results(results: Sequence[FileResult]) -> list[str]:
    """Return the report: per file, ``PASS``/``FAIL``/``ERROR`` per case, then a summary line.

    A failed case shows the expected and the actual notifications (times as offsets from its
    start), a diff when both are non-empty, and the skip and defer decisions of the rules
    concerned.
    """
    lines = []
    for result in results:
        lines.append(str(result.path))
        lines += [f"  {problem}" for problem in result.problems]
        for case in result.cases:
            lines += _case_lines(case)
    cases = [case for result in results for case in result.cases]
    failed = sum(1 for case in cases if not case.passed and case.error is None)
    errors = sum(1 for case in cases if case.error is not None)
    invalid = sum(1 for result in results if result.problems)
    summary = f"{len(cases)} case{'' if len(cases) == 1 else 's'}, {failed} failed"
    if errors:
        summary += f", {errors} could not run"
    if invalid:
        summary += f", {invalid} invalid file{'' if invalid == 1 else 's'}"
    lines.append(summary)
    return lines


def _case_lines(result: CaseResult) -> list[str]:
    name = result.case.name
    if result.error is not None:
        return [f"  ERROR {name}", f"{_INDENT}{result.error}"]
    if result.passed:
        return [f"  PASS {name}"]
    expected = [wanted.describe() for wanted in result.case.expect] or ["(none)"]
    got = [sent.describe() for sent in result.sent] or ["(none)"]
    lines = [f"  FAIL {name}"]
    lines += _block("expected: ", expected)
    lines += _block("got:      ", got)
    if result.case.expect and result.sent:
        lines.append(f"{_INDENT}diff (- expected, + got):")
        lines += [f"{_INDENT}  {line}" for line in _diff(result.case.expect, result.sent)]
    concerned = {result.case.rule} if result.case.rule is not None else set()
    if not concerned:
        concerned = {wanted.rule for wanted in result.case.expect}
        concerned |= {sent.rule for sent in result.sent}
    notes = [note.describe() for note in result.decisions if note.rule in concerned]
    if notes:
        lines.append(f"{_INDENT}decisions:")
        lines += [f"{_INDENT}  {note}" for note in notes[:MAX_DECISIONS_SHOWN]]
        if len(notes) > MAX_DECISIONS_SHOWN:
            lines.append(f"{_INDENT}  ... {len(notes) - MAX_DECISIONS_SHOWN} more")
    return lines


def _block(label: str, items: list[str]) -> list[str]:
    pad = " " * len(label)
    return [f"{_INDENT}{label if index == 0 else pad}{item}" for index, item in enumerate(items)]


def _diff(expected: Sequence[Expectation], sent: Sequence[Sent]) -> list[str]:
    """A line diff of expected and actual notifications (a longest common subsequence, with
    an ``at`` tolerance, so ``difflib``'s hashing cannot be used)."""
    rows, cols = len(expected), len(sent)
    common = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in reversed(range(rows)):
        for j in reversed(range(cols)):
            if sent[j].matches(expected[i]):
                common[i][j] = common[i + 1][j + 1] + 1
            else:
                common[i][j] = max(common[i + 1][j], common[i][j + 1])
    lines = []
    i = j = 0
    while i < rows or j < cols:
        if i < rows and j < cols and sent[j].matches(expected[i]):
            lines.append(f"  {sent[j].describe()}")
            i, j = i + 1, j + 1
        elif j >= cols or (i < rows and common[i + 1][j] >= common[i][j + 1]):
            lines.append(f"- {expected[i].describe()}")
            i += 1
        else:
            lines.append(f"+ {sent[j].describe()}")
            j += 1
    return lines
