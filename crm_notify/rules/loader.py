"""Rule files -> validated, compiled ``Rule`` objects, with every problem tied to a file and line.

``load_rules`` runs at start-up and stops at the first bad file; ``lint_rules`` runs the same
checks but collects every problem; ``rule_file_json_schema`` describes the format for editors.
The project file (``_project.yaml`` at the top of the rules directory, see
:mod:`crm_notify.rules._project`) is read first: its gate is merged into every rule's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from crm_notify.errors import RuleFileError
from crm_notify.render.sandbox import BoundedSandboxEnvironment
from crm_notify.rules._actions import compile_actions
from crm_notify.rules._compile import (
    TemplateExists,
    compile_conditions,
    compile_dedupe_key,
    compile_steps,
    guard_field_problems,
    purpose_problems,
)
from crm_notify.rules._fetch import compile_fetch
from crm_notify.rules._gate import BaseGate, compile_gate
from crm_notify.rules._project import is_project_file, load_project
from crm_notify.rules._validation_errors import describe, validation_problems
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.model import BUILTIN_PURPOSES, Limit, Rule, RulesFileSpec, RuleSpec
from crm_notify.rules.triggers import (
    CART_ACTIVITY_EVENTS,
    EventTrigger,
    IdentifyTrigger,
    IdleTrigger,
    OrderStatusTrigger,
    Trigger,
)
from crm_notify.rules.yaml_source import NodePath, YamlDocument, read_yaml_file

#: File name endings read as rule files.
RULE_FILE_SUFFIXES = frozenset({".yaml", ".yml"})
#: File name endings of rule test files (``crm-notify rules test``), never loaded as rules.
RULE_TEST_FILE_SUFFIXES = (".test.yaml", ".test.yml")


def is_rule_test_file(path: Path) -> bool:
    """Return whether ``path`` is named like a rule test file (``<name>.test.yaml``).

    Parameters:
        path: a file path.

    Returns:
        ``True`` for ``*.test.yaml`` and ``*.test.yml``.
    """
    return path.name.endswith(RULE_TEST_FILE_SUFFIXES)


def load_rule_file(
    path: Path,
    *,
    template_exists: TemplateExists | None = None,
    environment: BoundedSandboxEnvironment | None = None,
    purposes: Sequence[str] = BUILTIN_PURPOSES,
    environ: Mapping[str, str] | None = None,
) -> list[Rule]:
    """Load the rules of one file.

    Parameters:
        path: a rule file (one rule, or ``rules:`` with a list).
        template_exists: when given, called with every step's template to check that it exists.
        environment: the sandbox to compile conditions in (a default one when ``None``).
        purposes: the purposes rules may name (``Settings.purpose_names``).
        environ: the environment webhook actions' ``${NAME}`` references are read from, to
            check that each is set (``None``: not checked).

    The project file in the same folder (``_project.yaml``), if any, applies.

    Raises:
        RuleFileError: the first problem in the project file, else in the file (a note counts
            the others).

    Returns:
        The file's rules, in file order.
    """
    environment = environment or BoundedSandboxEnvironment()
    base = _project_gate(path, template_exists, environ)
    rules, problems = _load_file(path, environment, template_exists, purposes, environ, base)
    seen: dict[str, Rule] = {}
    problems += _duplicate_names(rules, seen)
    _raise_first(problems)
    return rules


def load_rules(
    rules_dir_or_file: Path,
    *,
    template_exists: TemplateExists | None = None,
    purposes: Sequence[str] = BUILTIN_PURPOSES,
    environ: Mapping[str, str] | None = None,
) -> RuleSet:
    """Load every rule file under a directory (recursively, sorted), or one file.

    Parameters:
        rules_dir_or_file: a directory of ``*.yaml``/``*.yml`` files, or a single file.
        template_exists: when given, called with every step's and digest's template to check
            that it exists.
        purposes: the purposes rules may name (``Settings.purpose_names``); another purpose
            is an error.
        environ: the environment webhook actions' ``${NAME}`` references are read from, to
            check that each is set and that secrets are valid (``None``: not checked).

    The project file (``_project.yaml`` in the directory, or next to the single file) is read
    first; its gate is merged into every rule's.

    Raises:
        RuleFileError: the first problem found: in the project file, in a rule file, or a rule
            name used twice.

    Returns:
        The indexed rules.
    """
    environment = BoundedSandboxEnvironment()
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    base = _project_gate(rules_dir_or_file, template_exists, environ)
    for path in rule_files(rules_dir_or_file):
        loaded, problems = _load_file(path, environment, template_exists, purposes, environ, base)
        problems += _duplicate_names(loaded, seen)
        _raise_first(problems)
        rules += loaded
    return RuleSet(rules)


def lint_rules(
    path: Path,
    *,
    template_exists: TemplateExists | None = None,
    purposes: Sequence[str] = BUILTIN_PURPOSES,
    environ: Mapping[str, str] | None = None,
) -> list[RuleFileError]:
    """Check rule files like :func:`load_rules`, collecting every problem instead of stopping.

    Parameters:
        path: a directory of rule files, or a single file.
        template_exists: when given, called with every step's and digest's template to check
            that it exists.
        purposes: the purposes rules may name (``Settings.purpose_names``).
        environ: the environment webhook actions' ``${NAME}`` references are read from
            (``None``: not checked).

    Returns:
        The problems, by file then line (the project file's first); empty when all is well.
    """
    try:
        paths = rule_files(path)
    except RuleFileError as exc:
        return [exc]
    environment = BoundedSandboxEnvironment()
    project, problems = load_project(path, environ=environ, template_exists=template_exists)
    seen: dict[str, Rule] = {}
    for file in paths:
        loaded, file_problems = _load_file(
            file, environment, template_exists, purposes, environ, project.gate
        )
        file_problems += _duplicate_names(loaded, seen)
        problems += sorted(file_problems, key=lambda err: err.line or 0)
    return problems


def rule_files(path: Path) -> list[Path]:
    """Return the rule files at ``path``: itself if a file, else its YAML files, recursively.

    Hidden files and directories (a name starting with ``.``) are skipped, and so are rule test
    files (``*.test.yaml``, ``*.test.yml``; see :mod:`crm_notify.rules.testing`) and the project
    file at the top (``_project.yaml``; given as ``path``, there are no rule files).

    Parameters:
        path: a file or directory.

    Raises:
        RuleFileError: ``path`` does not exist.

    Returns:
        The files, sorted by path.
    """
    if path.is_file():
        return [] if is_project_file(path) else [path]
    if not path.is_dir():
        raise RuleFileError(path, None, "no such rule file or directory")
    found = (
        file
        for file in path.rglob("*")
        if file.suffix in RULE_FILE_SUFFIXES
        and not is_rule_test_file(file)
        and not (file.parent == path and is_project_file(file))
        and file.is_file()
        and not any(part.startswith(".") for part in file.relative_to(path).parts)
    )
    return sorted(found, key=lambda file: file.relative_to(path).as_posix())


def rule_file_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of a rule file (one rule, or ``rules:`` with a list), for editors.

    Returns:
        A JSON Schema (draft 2020-12) document.
    """
    schema = TypeAdapter(RuleSpec | RulesFileSpec).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "crm-notify rule file",
        "description": "One rule (a mapping with 'name'), or several under 'rules:'.",
        **schema,
    }


def _project_gate(
    path: Path, template_exists: TemplateExists | None, environ: Mapping[str, str] | None
) -> BaseGate | None:
    """The project's gate for the rules at ``path``; raises its first problem, if any."""
    project, problems = load_project(path, environ=environ, template_exists=template_exists)
    _raise_first(problems)
    return project.gate


def _raise_first(problems: list[RuleFileError]) -> None:
    if not problems:
        return
    first = min(problems, key=lambda err: err.line or 0)
    if len(problems) > 1:
        first.add_note(
            f"{len(problems) - 1} more problem(s); run 'crm-notify rules lint' to list them all"
        )
    raise first


def _duplicate_names(rules: list[Rule], seen: dict[str, Rule]) -> list[RuleFileError]:
    problems = []
    for rule in rules:
        first = seen.setdefault(rule.name, rule)
        if first is not rule:
            problems.append(
                RuleFileError(
                    rule.source_path,
                    rule.source_line,
                    f"rule name '{rule.name}' is already used at "
                    f"{first.source_path}:{first.source_line}",
                    "rule names must be unique across all rule files",
                )
            )
    return problems


def _load_file(
    path: Path,
    environment: BoundedSandboxEnvironment,
    template_exists: TemplateExists | None,
    purposes: Sequence[str],
    environ: Mapping[str, str] | None = None,
    base: BaseGate | None = None,
) -> tuple[list[Rule], list[RuleFileError]]:
    """Return the valid rules of one file and the problems found in it."""
    if is_project_file(path):
        hint = "only the one at the top of the rules directory is read: move it there"
        message = f"'{path.name}' is a project file, not a rule file"
        return [], [RuleFileError(path, None, message, hint)]
    try:
        document = read_yaml_file(path)
    except RuleFileError as exc:
        return [], [exc]
    specs, problems = _validate(path, document)
    unknown_purposes = purpose_problems(document, path=path, purposes=purposes)
    problems += unknown_purposes.values()
    rules = []
    for prefix, spec in specs:
        conditions, rule_problems = compile_conditions(
            spec.when, (*prefix, "when"), document=document, path=path, environment=environment
        )
        dedupe_key, dedupe_problems = compile_dedupe_key(
            spec.dedupe_key,
            (*prefix, "dedupe_key"),
            document=document,
            path=path,
            environment=environment,
        )
        rule_problems += dedupe_problems + guard_field_problems(
            spec, prefix, document=document, path=path, template_exists=template_exists
        )
        steps, step_problems = compile_steps(
            spec,
            prefix,
            document=document,
            path=path,
            environment=environment,
            template_exists=template_exists,
        )
        exit_conditions, exit_problems = compile_conditions(
            spec.exit_when,
            (*prefix, "exit_when"),
            document=document,
            path=path,
            environment=environment,
        )
        actions, action_problems = compile_actions(
            spec,
            prefix,
            document=document,
            path=path,
            environment=environment,
            environ=environ,
        )
        fetch, fetch_problems = compile_fetch(
            spec,
            prefix,
            document=document,
            path=path,
            environment=environment,
            environ=environ,
        )
        gate, gate_problems = compile_gate(
            spec.gate,
            (*prefix, "gate"),
            document=document,
            path=path,
            environ=environ,
            template_exists=template_exists,
            base=base,
        )
        rule_problems += step_problems + exit_problems + action_problems + fetch_problems
        rule_problems += gate_problems
        problems += rule_problems
        if not rule_problems and prefix not in unknown_purposes:
            rules.append(
                Rule(
                    name=spec.name,
                    description=spec.description,
                    enabled=spec.enabled,
                    trigger=_trigger(spec),
                    conditions=conditions,
                    steps=steps,
                    exit_conditions=exit_conditions,
                    cancel_on=frozenset(spec.cancel_on or ()),
                    dedupe_window=spec.dedupe_window,
                    purpose=spec.purpose,
                    channel=spec.channel,
                    limit=Limit(spec.limit.count, spec.limit.per) if spec.limit else None,
                    over_limit=spec.over_limit,
                    digest_template=spec.digest_template,
                    quiet_hours=spec.quiet_hours,
                    dedupe_key=dedupe_key,
                    actions=actions,
                    fetch=fetch,
                    gate=gate,
                    source_path=path,
                    source_line=document.line_for((*prefix, "name")) or 1,
                )
            )
    return rules, problems


def _validate(
    path: Path, document: YamlDocument
) -> tuple[list[tuple[NodePath, RuleSpec]], list[RuleFileError]]:
    """Validate the document; return each valid rule's spec with its path, and the problems."""
    data = document.data
    if not isinstance(data, dict):
        return [], [
            RuleFileError(
                path,
                document.line_for(()),
                f"a rule file must be a mapping, got {describe(data)}",
                "write one rule (with 'name:') or a list of rules under 'rules:'",
            )
        ]
    if "rules" not in data:
        try:
            return [((), RuleSpec.model_validate(data))], []
        except ValidationError as exc:
            return [], validation_problems(path, document, RuleSpec, exc)
    try:
        rules = RulesFileSpec.model_validate(data).rules
        specs: list[tuple[NodePath, RuleSpec]] = [
            (("rules", index), spec) for index, spec in enumerate(rules)
        ]
        return specs, []
    except ValidationError as exc:
        problems = validation_problems(path, document, RulesFileSpec, exc)
        locations = [error["loc"] for error in exc.errors()]
        if any(len(loc) < 2 or not isinstance(loc[1], int) for loc in locations):
            return [], problems  # the file itself is malformed, not only some of its rules
        bad = {loc[1] for loc in locations}
        valid: list[tuple[NodePath, RuleSpec]] = [
            (("rules", index), RuleSpec.model_validate(item))
            for index, item in enumerate(data["rules"])
            if index not in bad
        ]
        return valid, problems


def _trigger(spec: RuleSpec) -> Trigger:
    trigger = spec.trigger
    if trigger.event is not None:
        return EventTrigger(event=trigger.event)
    if trigger.identify is not None:
        return IdentifyTrigger(first=trigger.identify.first)
    if trigger.idle_for is not None:
        idle = trigger.idle_for
        activity = frozenset(idle.activity) if idle.activity is not None else CART_ACTIVITY_EVENTS
        return IdleTrigger(entity=idle.entity, after=idle.after, activity=activity)
    assert trigger.order_status is not None  # TriggerSpec guarantees exactly one
    status = trigger.order_status
    from_ = frozenset(status.from_) if status.from_ is not None else None
    return OrderStatusTrigger(to=frozenset(status.to), from_=from_)
