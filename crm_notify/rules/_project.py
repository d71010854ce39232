"""The project file: ``_project.yaml`` at the top of the rules directory, settings for every rule.

::

    # rules/_project.yaml
    gate:                                   # optional: the gate of every rule, in the rule-file
      url: https://loyalty.example/crm-gate #   format (crm_notify.gates.spec), url required
      auth: {header: X-Gate-Token, token: "${GATE_TOKEN}"}
      actions:
        - {id: consent-check}

Every rule is gated by the project's gate; a rule's own ``gate:`` is merged over it (the keys
it writes win, its ``actions`` follow the project's; see :mod:`crm_notify.rules._gate`), and
``gate: false`` opts a rule out. The project file is not a rule file (``rule_files`` skips
it); without one nothing changes. ``_project.yml`` is read the same way (not both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from crm_notify.errors import RuleFileError
from crm_notify.gates.spec import ProjectGateSpec
from crm_notify.rules._compile import TemplateExists
from crm_notify.rules._gate import BaseGate, compile_gate
from crm_notify.rules._validation_errors import describe, validation_problems
from crm_notify.rules.yaml_source import YamlDocument, read_yaml_file

#: Names of the project file, looked for at the top of the rules directory.
PROJECT_FILE_NAMES = ("_project.yaml", "_project.yml")


class ProjectFileSpec(BaseModel):
    """``_project.yaml``: what applies to every rule of the directory."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, title="crm-notify project file"
    )

    gate: ProjectGateSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Project:
    """What the project file says; empty when there is none.

    Parameters:
        path: the project file (``None``: there is none).
        gate: the project's gate, which every rule's is merged over (``None``: none).
    """

    path: Path | None = None
    gate: BaseGate | None = None


def is_project_file(path: Path) -> bool:
    """Return whether ``path`` is named like a project file (``_project.yaml``).

    Parameters:
        path: a file path.

    Returns:
        ``True`` for ``_project.yaml`` and ``_project.yml``.
    """
    return path.name in PROJECT_FILE_NAMES


def load_project(
    rules_dir_or_file: Path,
    *,
    environ: Mapping[str, str] | None = None,
    template_exists: TemplateExists | None = None,
) -> tuple[Project, list[RuleFileError]]:
    """Read and check the project file of a rules directory.

    Parameters:
        rules_dir_or_file: the rules directory, or a file in it (a single rule file, or the
            project file itself): the project file is looked for in that file's folder.
        environ: the environment the gate's ``${NAME}`` references are read from (``None``:
            not checked).
        template_exists: when given, called with the gate's follow-up templates.

    Returns:
        The project (empty without a project file), and its problems, by line. A project
        whose gate has problems still has a :class:`BaseGate`, with no configuration.
    """
    folder = rules_dir_or_file if rules_dir_or_file.is_dir() else rules_dir_or_file.parent
    found = [folder / name for name in PROJECT_FILE_NAMES if (folder / name).is_file()]
    if not found:
        return Project(), []
    path = found[0]
    problems = [
        RuleFileError(
            other,
            None,
            f"there is a project file already: {path}",
            "keep one of them",
        )
        for other in found[1:]
    ]
    try:
        document = read_yaml_file(path)
    except RuleFileError as exc:
        return Project(path=path, gate=BaseGate(config=None, path=path)), [exc, *problems]
    project, file_problems = _check(path, document, environ, template_exists)
    return project, sorted(file_problems, key=lambda err: err.line or 0) + problems


def project_file_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of the project file (``_project.yaml``), for editors.

    Returns:
        A JSON Schema (draft 2020-12) document.
    """
    return {
        **ProjectFileSpec.model_json_schema(),
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "crm-notify project file (_project.yaml)",
        "description": "Settings for every rule of the directory: 'gate' gates every rule "
        "(a rule's own gate: is merged over it; gate: false opts a rule out).",
    }


def _check(
    path: Path,
    document: YamlDocument,
    environ: Mapping[str, str] | None,
    template_exists: TemplateExists | None,
) -> tuple[Project, list[RuleFileError]]:
    data = document.data
    if not isinstance(data, dict):
        problem = RuleFileError(
            path,
            document.line_for(()),
            f"the project file must be a mapping, got {describe(data)}",
            "write 'gate:' with the gate of every rule",
        )
        return Project(path=path, gate=BaseGate(config=None, path=path)), [problem]
    try:
        spec = ProjectFileSpec.model_validate(data)
    except ValidationError as exc:
        # Whether (and which) gate was meant is unknown: rules are checked without one, and
        # a rule's gate is not also blamed for the URL the project file was to give
        problems = validation_problems(path, document, ProjectFileSpec, exc)
        return Project(path=path, gate=BaseGate(config=None, path=path)), problems
    if spec.gate is None:
        return Project(path=path), []
    config, problems = compile_gate(
        spec.gate,
        ("gate",),
        document=document,
        path=path,
        environ=environ,
        template_exists=template_exists,
    )
    action_lines: dict[str, int] = {}
    for index, action in enumerate(spec.gate.actions or ()):
        action_lines.setdefault(action.id, document.line_for(("gate", "actions", index, "id")) or 0)
    on_timed_out_line = document.line_for(("gate", "on_timed_out")) or 0
    gate = BaseGate(
        config=config,
        path=path,
        action_lines=action_lines,
        on_timed_out_line=on_timed_out_line if spec.gate.on_timed_out else 0,
    )
    return Project(path=path, gate=gate), problems
