"""A validated ``RuleSpec`` -> the compiled parts of a ``Rule``: conditions, steps, dedupe key.

The checks here span several keys or need the configuration, so the schema cannot make them:
``steps`` against the single-message keys, step order and names, send windows, ``over_limit``
against ``digest_template``, ``purpose`` against the configured purposes. Each problem is
reported at the line of the key it is about.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from jinja2 import TemplateError, meta

from crm_notify.errors import RenderError, RuleFileError
from crm_notify.render.sandbox import BoundedSandboxEnvironment
from crm_notify.rules._validation_errors import dotted
from crm_notify.rules.conditions import CONDITION_VARIABLES, Condition, compile_condition
from crm_notify.rules.durations import format_duration
from crm_notify.rules.model import (
    SINGLE_STEP_KEYS,
    DedupeKey,
    OverLimit,
    RuleSpec,
    Step,
    StepSpec,
)
from crm_notify.rules.yaml_source import NodePath, YamlDocument

TemplateExists = Callable[[str], bool]


def compile_conditions(
    sources: list[str] | None,
    key: NodePath,
    *,
    document: YamlDocument,
    path: Path,
    environment: BoundedSandboxEnvironment,
) -> tuple[tuple[Condition, ...], list[RuleFileError]]:
    """Compile a ``when``-style value: each expression at its own line.

    Parameters:
        sources: the expressions (a single string was validated to a list of one), or ``None``.
        key: the path of the key holding them (``when``, ``exit_when``, ``steps[i].when``).
        document: the file's data and line map.
        path: the rule file.
        environment: the sandbox to compile in.

    Returns:
        The conditions compiled, and the problems (when there are any, the conditions are
        incomplete).
    """
    conditions: list[Condition] = []
    problems: list[RuleFileError] = []
    for index, source in enumerate(sources or ()):
        # A list item has its own line; a single string falls back to the key's line.
        line = document.line_for((*key, index))
        try:
            conditions.append(
                compile_condition(source, environment=environment, path=path, line=line)
            )
        except RuleFileError as exc:
            problems.append(exc)
    return tuple(conditions), problems


def compile_steps(
    spec: RuleSpec,
    prefix: NodePath,
    *,
    document: YamlDocument,
    path: Path,
    environment: BoundedSandboxEnvironment,
    template_exists: TemplateExists | None,
) -> tuple[tuple[Step, ...], list[RuleFileError]]:
    """Build a rule's steps: its ``steps:``, or one step from ``template`` and the rule's timing.

    Parameters:
        spec: the validated rule.
        prefix: the rule's path in the document (``()`` or ``("rules", i)``).
        document: the file's data and line map.
        path: the rule file.
        environment: the sandbox to compile step conditions in.
        template_exists: when given, called with each step's template.

    Returns:
        The steps, and the problems (when there are any, the steps are incomplete).
    """
    problems: list[RuleFileError] = []
    drafts: list[tuple[NodePath, StepSpec]]
    if spec.steps is None:
        if spec.template is None and not spec.actions:
            where = f" in '{dotted(prefix)}'" if prefix else ""
            problems.append(
                RuleFileError(
                    path,
                    document.line_for(prefix),
                    f"missing required key 'template'{where}",
                    "or list the messages to send under 'steps:'",
                )
            )
            return (), problems
        single = StepSpec.model_construct(
            delay=spec.delay or timedelta(0),
            template=spec.template or "",  # "": a rule with only actions sends no email
            not_before=spec.not_before,
            not_after=spec.not_after,
        )
        drafts = [(prefix, single)]
    else:
        for key in SINGLE_STEP_KEYS:
            if getattr(spec, key) is not None:
                problems.append(
                    RuleFileError(
                        path,
                        document.line_for((*prefix, key)),
                        f"'{dotted((*prefix, key))}' cannot be used with 'steps'",
                        f"set '{key}' on each step instead",
                    )
                )
        drafts = [((*prefix, "steps", index), step) for index, step in enumerate(spec.steps)]
    steps: list[Step] = []
    named: dict[str, NodePath] = {}
    for index, (base, draft) in enumerate(drafts):
        name = draft.name or f"step-{index + 1}"
        previous = drafts[index - 1][1].delay if index else None
        problems += _step_problems(draft, name, base, previous, named, document, path)
        named.setdefault(name, base)
        conditions, condition_problems = compile_conditions(
            draft.when, (*base, "when"), document=document, path=path, environment=environment
        )
        problems += condition_problems
        if draft.template and template_exists is not None and not template_exists(draft.template):
            problems.append(
                RuleFileError(
                    path,
                    document.line_for((*base, "template")),
                    f"template '{draft.template}' does not exist",
                    f"create templates/{draft.template}/ or fix the name",
                )
            )
        steps.append(
            Step(
                index=index,
                name=name,
                delay=draft.delay,
                template=draft.template,
                conditions=conditions,
                not_before=draft.not_before,
                not_after=draft.not_after,
            )
        )
    return tuple(steps), problems


def _step_problems(
    draft: StepSpec,
    name: str,
    base: NodePath,
    previous: timedelta | None,
    named: dict[str, NodePath],
    document: YamlDocument,
    path: Path,
) -> list[RuleFileError]:
    """Check one step's name, its delay against the previous step's, and its send window."""
    problems = []
    if name in named:
        problems.append(
            RuleFileError(
                path,
                document.line_for((*base, "name")),
                f"step name '{name}' is already used by '{dotted(named[name])}'",
                "step names must be unique within a rule (unnamed steps are step-1, step-2...)",
            )
        )
    if previous is not None and draft.delay < previous:
        problems.append(
            RuleFileError(
                path,
                document.line_for(base),
                f"step '{name}' has delay {format_duration(draft.delay)}, less than the "
                f"previous step's {format_duration(previous)}",
                "delays count from the trigger time, so list steps by increasing delay",
            )
        )
    not_before, not_after = draft.not_before, draft.not_after
    if not_after is not None and not_after <= draft.delay:
        problems.append(
            RuleFileError(
                path,
                document.line_for((*base, "not_after")),
                f"'{dotted((*base, 'not_after'))}' ({format_duration(not_after)}) must be more "
                f"than the delay ({format_duration(draft.delay)})",
                "both count from the trigger time",
            )
        )
    if not_before is not None and not_after is not None and not_before > not_after:
        problems.append(
            RuleFileError(
                path,
                document.line_for((*base, "not_before")),
                f"'{dotted((*base, 'not_before'))}' ({format_duration(not_before)}) is later "
                f"than 'not_after' ({format_duration(not_after)})",
                "the message could never be sent",
            )
        )
    return problems


def purpose_problems(
    document: YamlDocument, *, path: Path, purposes: Sequence[str]
) -> dict[NodePath, RuleFileError]:
    """Check each rule's ``purpose`` against the configured purposes, in every rule of the file
    (also those with other problems, so a lint lists them all).

    Parameters:
        document: the file's data and line map.
        path: the rule file.
        purposes: the purposes rules may name.

    Returns:
        The problem of each rule naming an unknown purpose, by the rule's path in the document.
    """
    data = document.data
    items: list[tuple[NodePath, object]] = []
    if isinstance(data, dict) and "rules" not in data:
        items = [((), data)]
    elif isinstance(data, dict) and isinstance(data["rules"], list):
        items = [(("rules", index), item) for index, item in enumerate(data["rules"])]
    problems = {}
    for prefix, item in items:
        purpose = item.get("purpose") if isinstance(item, dict) else None
        if isinstance(purpose, str) and purpose not in purposes:
            close = difflib.get_close_matches(purpose, purposes, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems[prefix] = RuleFileError(
                path,
                document.line_for((*prefix, "purpose")),
                f"unknown purpose '{purpose}'",
                f"{hint}configured: {', '.join(purposes)}; add it to CRM_NOTIFY_PURPOSES",
            )
    return problems


def guard_field_problems(
    spec: RuleSpec,
    prefix: NodePath,
    *,
    document: YamlDocument,
    path: Path,
    template_exists: TemplateExists | None,
) -> list[RuleFileError]:
    """Check ``over_limit`` against ``digest_template``, and that the digest template exists.

    Parameters:
        spec: the validated rule.
        prefix: the rule's path in the document.
        document: the file's data and line map.
        path: the rule file.
        template_exists: when given, called with the digest template.

    Returns:
        The problems.
    """
    problems = []
    digest = spec.over_limit is OverLimit.DIGEST
    if digest and spec.digest_template is None:
        problems.append(
            RuleFileError(
                path,
                document.line_for((*prefix, "over_limit")),
                "'over_limit: digest' needs 'digest_template'",
                "name the template (folder under templates/) of the message listing the items",
            )
        )
    elif not digest and spec.digest_template is not None:
        problems.append(
            RuleFileError(
                path,
                document.line_for((*prefix, "digest_template")),
                "'digest_template' is only used with 'over_limit: digest'",
                "set 'over_limit: digest' or remove 'digest_template'",
            )
        )
    elif (
        spec.digest_template is not None
        and template_exists is not None
        and not template_exists(spec.digest_template)
    ):
        problems.append(
            RuleFileError(
                path,
                document.line_for((*prefix, "digest_template")),
                f"template '{spec.digest_template}' does not exist",
                f"create templates/{spec.digest_template}/ or fix the name",
            )
        )
    return problems


def compile_dedupe_key(
    source: str | None,
    key: NodePath,
    *,
    document: YamlDocument,
    path: Path,
    environment: BoundedSandboxEnvironment,
) -> tuple[DedupeKey | None, list[RuleFileError]]:
    """Compile a ``dedupe_key``: a template (``{{ order.order_id }}``) or a bare expression
    (``order.order_id``), reading only the condition variables.

    Parameters:
        source: the key as written, or ``None``.
        key: the path of the ``dedupe_key`` key.
        document: the file's data and line map.
        path: the rule file.
        environment: the sandbox to compile in.

    Returns:
        The compiled key (``None`` when not given or on a problem), and the problems.
    """
    if source is None:
        return None, []
    line = document.line_for(key)
    text = source if "{{" in source or "{%" in source else "{{ " + source + " }}"
    shown = source if len(source) <= 80 else source[:77] + "..."
    try:
        template = environment.from_string(text)
        names = meta.find_undeclared_variables(environment.parse(text))
    except (RenderError, TemplateError) as exc:
        reason = str(exc).split(": ", 1)[-1] if str(exc).startswith("<") else str(exc)
        return None, [RuleFileError(path, line, f"invalid dedupe_key {shown!r}: {reason}")]
    allowed = CONDITION_VARIABLES | set(environment.globals)
    unknown = sorted(set(names) - allowed)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(CONDITION_VARIABLES), n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
        hint = hint or "dedupe_key can use " + ", ".join(sorted(CONDITION_VARIABLES))
        message = f"unknown variable '{unknown[0]}' in dedupe_key {shown!r}"
        return None, [RuleFileError(path, line, message, hint)]
    return DedupeKey(source, template, environment, path=path, line=line), []
