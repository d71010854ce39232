"""A rule's ``gate:`` -> a checked :class:`~crm_notify.gates.model.GateConfig`, each problem at
its line; merged over the project's gate (:class:`BaseGate`) when there is one.

What the schema (:mod:`crm_notify.gates.spec`) cannot say is checked here, so a gate that loads
never fails for a reason the file holds: the URL (https, or http to loopback only; no
credentials, templates or white space in it; ``${NAME}`` only in the query string), ``auth``
(exactly one of ``basic`` or ``header`` with ``token``; values hold text and ``${NAME}``
references only), the ``secret`` reference, the action ids (unique) and values (JSON), that the
follow-up templates exist, ``on_timed_out`` only with ``on_timeout: drop``, and, when the
environment is given, that every referenced variable is set and the secret is a valid
``whsec_`` secret.

Merging over the project's gate: each key the rule writes wins (``null`` included: ``auth: null``
means no credentials, ``on_rejected: null`` no follow-up; for ``url`` and ``timeout``, which
always have a value, ``null`` is the same as leaving the key out), the others come from the
project, and ``actions`` are the project's followed by the rule's, their ids unique across both.
Only the keys the rule writes are checked here; the project's were checked with its file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crm_notify.actions.env import MissingVariableError, expand
from crm_notify.errors import RuleFileError
from crm_notify.gates.model import (
    DEFAULT_GATE_RETRIES,
    DEFAULT_GATE_TIMEOUT,
    GateAuth,
    GateConfig,
    GateRetry,
    OnTimeout,
)
from crm_notify.gates.spec import GateActionSpec, GateAuthSpec, GateFollowUpSpec, GateSpec
from crm_notify.rules._actions import RESERVED_HEADERS
from crm_notify.rules._compile import TemplateExists
from crm_notify.rules._problems import Problems
from crm_notify.rules._urls import static_url_problem
from crm_notify.rules._validation_errors import dotted
from crm_notify.rules.yaml_source import NodePath, YamlDocument

#: An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_AUTH_HINT = "write auth: {basic: ${USER}:${PASSWORD}} or auth: {header: X-Token, token: ${TOKEN}}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BaseGate:
    """The project's gate, which every rule's ``gate:`` is merged over.

    Parameters:
        config: the compiled gate; ``None`` when the project file has problems (they are
            reported with that file, and rules are then checked without it).
        path: the project file.
        action_lines: the line of each project action's ``id``.
        on_timed_out_line: the line of the project's ``on_timed_out`` (0: none).
    """

    config: GateConfig | None
    path: Path
    action_lines: Mapping[str, int] = field(default_factory=dict)
    on_timed_out_line: int = 0


def compile_gate(
    spec: GateSpec | Literal[False] | None,
    key: NodePath,
    *,
    document: YamlDocument,
    path: Path,
    environ: Mapping[str, str] | None,
    template_exists: TemplateExists | None,
    base: BaseGate | None = None,
) -> tuple[GateConfig | None, list[RuleFileError]]:
    """Check and compile a ``gate:``, merged over the project's gate when there is one.

    Parameters:
        spec: the validated gate; ``None`` (not written: the project's gate, if any), or
            ``False`` (no gate, not even the project's).
        key: the path of the ``gate`` key in the document (``("gate",)``, ``("rules", i,
            "gate")``).
        document: the file's data and line map.
        path: the rule file.
        environ: the environment ``${NAME}`` references are read from; ``None`` skips the
            check that they are set and that the secret is valid (``rules test`` and other
            tools without the secrets).
        template_exists: when given, called with the follow-up templates.
        base: the project's gate (``None``: the project has none).

    Returns:
        The gate (``None`` when there is none, or on a problem), and the problems.
    """
    if spec is False:
        return None, []
    inherited = base.config if base is not None else None
    if spec is None:
        return inherited, []
    problems = Problems(document, path, environ)
    written = spec.model_fields_set
    # A project file with problems: they are reported with it; check only what the rule writes
    project_unknown = base is not None and inherited is None
    url = spec.url
    if url is not None:
        _check_url(url, (*key, "url"), problems)
    elif inherited is not None:
        url = inherited.url
    elif not project_unknown:
        problems.add(key, f"missing required key 'url' in '{dotted(key)}'")
    if "auth" in written or inherited is None:
        auth = _compile_auth(spec.auth, (*key, "auth"), problems) if spec.auth else None
    else:
        auth = inherited.auth
    if "secret" in written or inherited is None:
        secret_variable = problems.secret(
            spec.secret, (*key, "secret"), example="GATE_SIGNING_SECRET"
        )
    else:
        secret_variable = inherited.secret_variable
    actions = _compile_actions(spec.actions or [], (*key, "actions"), problems, base)
    if inherited is not None:
        actions = inherited.actions + actions
        timeout = spec.timeout or inherited.timeout
    else:
        timeout = spec.timeout or DEFAULT_GATE_TIMEOUT
    if "on_timeout" in written or inherited is None:
        on_timeout = OnTimeout(spec.on_timeout)
    else:
        on_timeout = inherited.on_timeout
    follow_ups: dict[str, tuple[str | None, GateRetry | None]] = {}
    for follow_up in ("on_rejected", "on_timed_out"):
        if follow_up not in written and inherited is not None:
            follow_ups[follow_up] = _inherited_follow_up(inherited, follow_up)
            continue
        chosen: GateFollowUpSpec | None = getattr(spec, follow_up)
        follow_ups[follow_up] = _follow_up(chosen)
        if chosen is None:
            continue
        where = (*key, follow_up)
        drop_unknown = project_unknown and "on_timeout" not in written
        if follow_up == "on_timed_out" and on_timeout is not OnTimeout.DROP and not drop_unknown:
            problems.add(
                where,
                f"'{dotted(where)}' is only used with 'on_timeout: drop'",
                "with release, timed-out sends go out as they are; set 'on_timeout: drop' "
                "or remove it",
            )
        elif (
            chosen.template is not None
            and template_exists is not None
            and not template_exists(chosen.template)
        ):
            problems.add(
                (*where, "template"),
                f"template '{chosen.template}' does not exist",
                f"create templates/{chosen.template}/ or fix the name",
            )
    inherited_timed_out = "on_timed_out" not in written and any(follow_ups["on_timed_out"])
    if inherited_timed_out and on_timeout is not OnTimeout.DROP:
        assert base is not None  # the project's own file allows on_timed_out only with drop
        problems.add(
            (*key, "on_timeout"),
            f"'{dotted((*key, 'on_timeout'))}: {on_timeout}' leaves the project's "
            f"'on_timed_out' ({base.path}:{base.on_timed_out_line}) unused",
            "with release, timed-out sends go out as they are; add 'on_timed_out: null' "
            "here, or keep 'on_timeout: drop'",
        )
    if problems.found or url is None:
        return None, problems.found
    return GateConfig(
        url=url,
        auth=auth,
        secret_variable=secret_variable,
        timeout=timeout,
        on_timeout=on_timeout,
        actions=actions,
        on_rejected=follow_ups["on_rejected"][0],
        on_timed_out=follow_ups["on_timed_out"][0],
        retry_rejected=follow_ups["on_rejected"][1],
        retry_timed_out=follow_ups["on_timed_out"][1],
        source_path=path,
        source_line=document.line_for(key) or 0,
    ), []


def _follow_up(spec: GateFollowUpSpec | None) -> tuple[str | None, GateRetry | None]:
    """A written ``on_rejected`` / ``on_timed_out``: (template, retry), at most one set."""
    if spec is None:
        return None, None
    if spec.retry_after is not None:
        return None, GateRetry(after=spec.retry_after, times=spec.retries or DEFAULT_GATE_RETRIES)
    return spec.template, None


def _inherited_follow_up(config: GateConfig, follow_up: str) -> tuple[str | None, GateRetry | None]:
    """The project's ``on_rejected`` / ``on_timed_out``: (template, retry)."""
    if follow_up == "on_rejected":
        return config.on_rejected, config.retry_rejected
    return config.on_timed_out, config.retry_timed_out


def _check_url(url: str, key: NodePath, problems: Problems) -> None:
    problem = static_url_problem(
        url,
        template_problem=(
            "the gate URL is static: templates are not allowed in it",
            "${NAME} reads an environment variable in the query string",
        ),
        host_example="https://crm-gate.example.com/path",
        credentials_hint=_AUTH_HINT,
        check_variables=lambda text: problems.variables(key, text, "the URL"),
    )
    if problem is not None:
        problems.add(key, *problem)


def _compile_auth(spec: GateAuthSpec, key: NodePath, problems: Problems) -> GateAuth | None:
    before = len(problems.found)
    if spec.basic is not None and (spec.header is not None or spec.token is not None):
        problems.add(
            key, f"'{dotted(key)}' takes either 'basic', or 'header' and 'token'", _AUTH_HINT
        )
        return None
    if spec.basic is None and (spec.header is None or spec.token is None):
        if spec.header is None and spec.token is None:
            problems.add(key, f"'{dotted(key)}' needs 'basic', or 'header' and 'token'", _AUTH_HINT)
        else:
            given, needed = ("header", "token") if spec.token is None else ("token", "header")
            problems.add(
                (*key, given), f"'{dotted((*key, given))}' needs '{needed}' as well", _AUTH_HINT
            )
        return None
    if spec.basic is not None:
        where = (*key, "basic")
        if _check_value(spec.basic, where, "basic auth", problems):
            _check_basic_form(spec.basic, where, problems)
    else:
        assert spec.header is not None and spec.token is not None
        _check_header(spec.header, (*key, "header"), problems)
        _check_value(spec.token, (*key, "token"), f"the value of header '{spec.header}'", problems)
    if len(problems.found) > before:
        return None
    return GateAuth(basic=spec.basic, header=spec.header, token=spec.token)


def _check_header(name: str, key: NodePath, problems: Problems) -> None:
    if not _HEADER_NAME.fullmatch(name):
        problems.add(key, f"'{name}' is not a valid header name", "e.g. X-Gate-Token")
    elif name.lower() in RESERVED_HEADERS:
        problems.add(
            key,
            f"header '{name}' is set by crm-notify",
            "the body is JSON; the webhook-* headers sign the request",
        )


def _check_value(value: str, key: NodePath, what: str, problems: Problems) -> bool:
    """Check a credential: text and ``${NAME}`` references only; whether it is fine."""
    if any(char in value for char in "\r\n\0"):
        problems.add(key, f"{what} contains a line break or NUL")
        return False
    if any(marker in value for marker in ("{{", "{%")):
        problems.add(
            key,
            f"{what} holds a template, but credentials are static",
            "${NAME} reads an environment variable",
        )
        return False
    return problems.variables(key, value, what)


def _check_basic_form(basic: str, key: NodePath, problems: Problems) -> None:
    """``basic`` is ``USER:PASSWORD``: a ``:`` written, or in the variables' values."""
    if ":" in basic.replace("$$", ""):
        return
    if problems.environ is None:
        return  # the ':' may come from a variable: checked when the environment is known
    try:
        value = expand(basic, problems.environ)
    except MissingVariableError:  # reported by _check_value
        return
    if ":" not in value:
        problems.add(
            key,
            "basic auth is USER:PASSWORD, and this one has no ':'",
            "e.g. basic: ${GATE_USER}:${GATE_PASSWORD}",
        )


def _compile_actions(
    specs: list[GateActionSpec], key: NodePath, problems: Problems, project: BaseGate | None
) -> tuple[dict[str, Any], ...]:
    actions = []
    seen: dict[str, NodePath] = {}
    for index, spec in enumerate(specs):
        base = (*key, index)
        if project is not None and spec.id in project.action_lines:
            problems.add(
                (*base, "id"),
                f"action id '{spec.id}' is already used by the project's gate "
                f"({project.path}:{project.action_lines[spec.id]})",
                "the rule's actions extend the project's, and action ids must be unique "
                "within a gate: use another id",
            )
        elif spec.id in seen:
            problems.add(
                (*base, "id"),
                f"action id '{spec.id}' is already used by '{dotted(seen[spec.id])}'",
                "action ids must be unique within a gate",
            )
        seen.setdefault(spec.id, base)
        action = spec.model_dump()
        bad = _non_json(action, base)
        if bad is not None:
            bad_key, value = bad
            problems.add(
                bad_key,
                f"'{dotted(bad_key)}' is {value}, which JSON cannot carry",
                "actions are sent to the integration as JSON",
            )
        actions.append(action)
    return tuple(actions)


def _non_json(value: Any, key: NodePath) -> tuple[NodePath, float] | None:
    """The first value under ``value`` that JSON cannot carry (``.nan``, ``.inf``), if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for part, item in items:
        found = _non_json(item, (*key, part))
        if found is not None:
            return found
    return None
