"""A rule's ``actions:`` -> checked, compiled webhook actions, each problem at its line.

Everything that can be checked before a send is checked here, so a rule file that loads never
fails at send for a reason the file holds: the URL (https, or http to loopback only; no
credentials or templates in it; ``${NAME}`` only in the query string), header names and values
(``${NAME}`` references only; no line breaks; not the headers crm-notify sets itself), the body
templates (syntax and variables), the secret reference, and, when the environment is given,
that every referenced variable is set and the secret is a valid ``whsec_`` secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from crm_notify.actions.body import compile_body
from crm_notify.actions.model import BODY_VARIABLES, WebhookAction
from crm_notify.actions.spec import WebhookActionSpec
from crm_notify.errors import RuleFileError
from crm_notify.render.sandbox import BoundedSandboxEnvironment
from crm_notify.rules._problems import Problems
from crm_notify.rules._urls import static_url_problem
from crm_notify.rules._validation_errors import dotted
from crm_notify.rules.model import OverLimit, RuleSpec
from crm_notify.rules.yaml_source import NodePath, YamlDocument

#: An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Headers crm-notify sets itself (lower case): the body's, the connection's, the signature's.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


def compile_actions(
    spec: RuleSpec,
    prefix: NodePath,
    *,
    document: YamlDocument,
    path: Path,
    environment: BoundedSandboxEnvironment,
    environ: Mapping[str, str] | None,
) -> tuple[tuple[WebhookAction, ...], list[RuleFileError]]:
    """Check and compile a rule's ``actions``.

    Parameters:
        spec: the validated rule.
        prefix: the rule's path in the document (``()`` or ``("rules", i)``).
        document: the file's data and line map.
        path: the rule file.
        environment: the sandbox to compile body templates in.
        environ: the environment ``${NAME}`` references are read from; ``None`` skips the
            check that they are set (``rules test`` and other tools without the secrets).

    Returns:
        The actions (incomplete when there are problems), and the problems.
    """
    if spec.actions is None:
        return (), []
    checker = Problems(document, path, environ)
    key = (*prefix, "actions")
    if spec.steps is not None:
        checker.add(
            key,
            f"'{dotted(key)}' cannot be used with 'steps'",
            "actions go with a single-message rule (template, or actions alone, and delay)",
        )
    if spec.over_limit is OverLimit.DIGEST and spec.template is None:
        checker.add(
            (*prefix, "over_limit"),
            "'over_limit: digest' collects sends into one email, and this rule sends none",
            "use drop or defer for a rule with only actions",
        )
    actions: list[WebhookAction] = []
    named: dict[str, NodePath] = {}
    for index, action in enumerate(spec.actions):
        base = (*key, index)
        name = action.name or f"webhook-{index + 1}"
        if name in named:
            checker.add(
                (*base, "name"),
                f"action name '{name}' is already used by '{dotted(named[name])}'",
                "action names must be unique within a rule (unnamed ones are webhook-1, ...)",
            )
        named.setdefault(name, base)
        compiled = _compile_one(action, name, base, checker, environment)
        if compiled is not None:
            actions.append(compiled)
    return tuple(actions), checker.found


def _compile_one(
    action: WebhookActionSpec,
    name: str,
    base: NodePath,
    checker: Problems,
    environment: BoundedSandboxEnvironment,
) -> WebhookAction | None:
    before = len(checker.found)
    _check_url(action.url, (*base, "url"), checker)
    headers = check_headers(action.headers or {}, (*base, "headers"), checker)
    secret_variable = checker.secret(action.secret, (*base, "secret"), example="SMS_WEBHOOK_SECRET")
    body = None
    if action.body is not None and action.method == "GET":
        checker.add((*base, "body"), "a GET request carries no body", "use POST, PUT or PATCH")
    else:
        body, body_problems = compile_body(
            action.body, action.content_type, environment=environment, variables=BODY_VARIABLES
        )
        for problem in body_problems:
            where = dotted((*base, "body", *problem.path))
            checker.add((*base, "body", *problem.path), f"{where}: {problem.message}", problem.hint)
    if len(checker.found) > before:
        return None
    return WebhookAction(
        name=name,
        url=action.url,
        method=action.method,
        headers=headers,
        content_type=action.content_type,
        body=body,
        secret_variable=secret_variable,
        source_path=checker.path,
        source_line=checker.document.line_for(base) or 0,
    )


def _check_url(url: str, key: NodePath, checker: Problems) -> None:
    problem = static_url_problem(
        url,
        template_problem=(
            "the URL is static: templates are not allowed in it",
            "put event data in the body; ${NAME} reads an environment variable in the query",
        ),
        host_example="https://hooks.example.com/path",
        credentials_hint="send them in a header, e.g. Authorization: Bearer ${API_TOKEN}",
        check_variables=lambda text: checker.variables(key, text, "the URL"),
    )
    if problem is not None:
        checker.add(key, *problem)


def check_headers(
    headers: dict[str, str],
    key: NodePath,
    checker: Problems,
    *,
    reserved: frozenset[str] = RESERVED_HEADERS,
    reserved_hint: str = (
        "the body's type comes from content_type; the webhook-* headers sign the request"
    ),
) -> tuple[tuple[str, str], ...]:
    """Check the ``headers:`` of an outbound request (names, no line breaks, static values
    with ``${NAME}`` references, none of ``reserved``); return the good ones, in order."""
    seen: dict[str, str] = {}
    result = []
    for name, value in headers.items():
        where = (*key, name)
        lower = name.lower()
        if not _HEADER_NAME.fullmatch(name):
            checker.add(where, f"'{name}' is not a valid header name")
            continue
        if lower in reserved:
            checker.add(where, f"header '{name}' is set by crm-notify", reserved_hint)
            continue
        if lower in seen:
            checker.add(where, f"header '{name}' is given twice (as '{seen[lower]}')")
            continue
        seen[lower] = name
        if any(char in value for char in "\r\n\0"):
            checker.add(where, f"the value of header '{name}' contains a line break or NUL")
            continue
        if any(marker in value for marker in ("{{", "{%")):
            checker.add(
                where,
                f"header '{name}' holds a template, but header values are static",
                "${NAME} reads an environment variable; put event data in the body",
            )
            continue
        if checker.variables(where, value, f"header '{name}'"):
            result.append((name, value))
    return tuple(result)
