"""A rule's ``fetch:`` -> checked, compiled fetch steps, each problem at its line.

Everything that can be checked before a send is checked here: the step names (template
variables, unique, not one crm-notify sets), the URL (https, or http to loopback only; scheme
and host static; ``{{ expression }}`` values in the path and query only, their variables known;
``${NAME}`` in the query only; no credentials or fragment), the headers (as a webhook action's),
the body (POST only; its templates), ``on_error`` against ``fallback`` and ``retry_after``, the
fallback (a JSON object or list), that the rule sends email at all, and, when the environment is
given, that every referenced variable is set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from jinja2 import TemplateError, meta

from crm_notify.actions.body import compile_body
from crm_notify.errors import RenderError, RuleFileError
from crm_notify.fetch.model import FETCH_VARIABLES, RESERVED_NAMES, FetchStep, FetchUrl, OnError
from crm_notify.fetch.spec import FetchStepSpec
from crm_notify.render.sandbox import BoundedSandboxEnvironment, CompiledExpression
from crm_notify.rules._actions import check_headers
from crm_notify.rules._problems import Problems
from crm_notify.rules._urls import static_url_problem
from crm_notify.rules._validation_errors import dotted
from crm_notify.rules.model import RuleSpec
from crm_notify.rules.yaml_source import NodePath, YamlDocument

#: One ``{{ expression }}`` of a URL.
_EXPRESSION = re.compile(r"\{\{(?P<expression>.*?)\}\}", re.DOTALL)
#: Headers crm-notify sets itself on a fetch request (lower case).
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "transfer-encoding", "connection"}
)


def compile_fetch(
    spec: RuleSpec,
    prefix: NodePath,
    *,
    document: YamlDocument,
    path: Path,
    environment: BoundedSandboxEnvironment,
    environ: Mapping[str, str] | None,
) -> tuple[tuple[FetchStep, ...], list[RuleFileError]]:
    """Check and compile a rule's ``fetch``.

    Parameters:
        spec: the validated rule.
        prefix: the rule's path in the document (``()`` or ``("rules", i)``).
        document: the file's data and line map.
        path: the rule file.
        environment: the sandbox to compile URL and body templates in.
        environ: the environment ``${NAME}`` references are read from; ``None`` skips the
            check that they are set.

    Returns:
        The steps (incomplete when there are problems), and the problems.
    """
    if spec.fetch is None:
        return (), []
    checker = Problems(document, path, environ)
    key = (*prefix, "fetch")
    if spec.template is None and spec.steps is None:
        checker.add(
            key,
            "fetch steps fill an email's template, and this rule sends no email",
            "add a template, or put the request in a webhook action",
        )
    steps: list[FetchStep] = []
    named: dict[str, NodePath] = {}
    for index, item in enumerate(spec.fetch):
        base = (*key, index)
        if item.name in named:
            checker.add(
                (*base, "name"),
                f"fetch name '{item.name}' is already used by '{dotted(named[item.name])}'",
                "each step fills its own template variable",
            )
        named.setdefault(item.name, base)
        compiled = _compile_one(item, base, checker, environment)
        if compiled is not None:
            steps.append(compiled)
    return tuple(steps), checker.found


def _compile_one(
    item: FetchStepSpec, base: NodePath, checker: Problems, environment: BoundedSandboxEnvironment
) -> FetchStep | None:
    before = len(checker.found)
    if item.name in RESERVED_NAMES or item.name in environment.globals:
        checker.add(
            (*base, "name"),
            f"'{item.name}' is a template variable crm-notify sets itself",
            "choose another name, e.g. recommendations",
        )
    url = _compile_url(item.url, (*base, "url"), checker, environment)
    headers = check_headers(
        item.headers or {},
        (*base, "headers"),
        checker,
        reserved=_RESERVED_HEADERS,
        reserved_hint="a POST body is sent as JSON",
    )
    body = None
    if item.body is not None and item.method == "GET":
        checker.add((*base, "body"), "a GET request carries no body", "use method: POST")
    else:
        body, body_problems = compile_body(
            item.body, "json", environment=environment, variables=FETCH_VARIABLES
        )
        for problem in body_problems:
            where = dotted((*base, "body", *problem.path))
            checker.add((*base, "body", *problem.path), f"{where}: {problem.message}", problem.hint)
    on_error = _on_error(item, base, checker)
    if len(checker.found) > before or url is None:
        return None
    return FetchStep(
        name=item.name,
        url=url,
        method=item.method,
        headers=headers,
        body=body,
        timeout=item.timeout,
        cache=item.cache,
        on_error=on_error,
        fallback=item.fallback,
        retry_after=item.retry_after,
        source_path=checker.path,
        source_line=checker.document.line_for(base) or 0,
    )


def _on_error(item: FetchStepSpec, base: NodePath, checker: Problems) -> OnError:
    """``on_error`` (its default: ``fallback`` with a fallback, else ``skip``), checked against
    ``fallback`` and ``retry_after``."""
    has_fallback = item.fallback is not None
    on_error = OnError(item.on_error) if item.on_error else None
    on_error = on_error or (OnError.FALLBACK if has_fallback else OnError.SKIP)
    if on_error is OnError.FALLBACK and not has_fallback:
        checker.add(
            (*base, "on_error"),
            "'on_error: fallback' needs 'fallback' (the data to render with)",
            "e.g. fallback: {products: []}",
        )
    if has_fallback and on_error is not OnError.FALLBACK:
        checker.add(
            (*base, "fallback"),
            f"'fallback' is used only with 'on_error: fallback', not {on_error.value}",
            "remove it, or set on_error: fallback",
        )
    elif has_fallback and not isinstance(item.fallback, dict | list):
        checker.add(
            (*base, "fallback"),
            "the fallback must be a mapping or a list, as the answer it stands in for",
            "e.g. fallback: {products: []}",
        )
    elif has_fallback:
        try:
            json.dumps(item.fallback, allow_nan=False)
        except (TypeError, ValueError) as exc:
            checker.add((*base, "fallback"), f"the fallback is not JSON data: {exc}", "quote it")
    if on_error is OnError.DEFER and item.retry_after is None:
        checker.add(
            (*base, "on_error"),
            "'on_error: defer' needs 'retry_after' (when to try again)",
            "e.g. retry_after: 15m",
        )
    if item.retry_after is not None and on_error is not OnError.DEFER:
        checker.add(
            (*base, "retry_after"),
            "'retry_after' is used only with 'on_error: defer'",
            "remove it, or set on_error: defer",
        )
    return on_error


def _compile_url(
    url: str, key: NodePath, checker: Problems, environment: BoundedSandboxEnvironment
) -> FetchUrl | None:
    """The URL template, or ``None`` (the problem is recorded)."""
    if "{%" in url or "{#" in url:
        checker.add(
            key,
            "only {{ expression }} values are allowed in the URL, not {% %} or {# #}",
            "e.g. https://reco.example/carts/{{ cart.cart_id }}",
        )
        return None
    scheme_end = url.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    ends = [index for index in (url.find(char, start) for char in "/?#") if index >= 0]
    if "{{" in url[: min(ends, default=len(url))]:
        checker.add(
            key,
            "the URL's scheme and host are static: templates only in its path and query",
            "e.g. https://reco.example/carts/{{ cart.cart_id }}",
        )
        return None
    problem = static_url_problem(
        _EXPRESSION.sub("x", url),
        template_problem=("the URL has a '{{' without its '}}'", None),
        host_example="https://reco.example/v1/products",
        credentials_hint="send them in a header, e.g. Authorization: Bearer ${API_TOKEN}",
        check_variables=lambda text: checker.variables(key, text, "the URL"),
    )
    if problem is not None:
        checker.add(key, *problem)
        return None
    parts: list[str | CompiledExpression] = []
    position = 0
    allowed = FETCH_VARIABLES | set(environment.globals)
    for match in _EXPRESSION.finditer(url):
        parts.append(url[position : match.start()])
        source = match["expression"].strip()
        try:
            expression = environment.compile_expression(source)
            names = meta.find_undeclared_variables(environment.parse("{{ " + source + " }}"))
        except (RenderError, TemplateError) as exc:
            reason = str(exc).split(": ", 1)[-1] if str(exc).startswith("<") else str(exc)
            checker.add(key, f"invalid expression {{{{ {source[:80]} }}}} in the URL: {reason}")
            return None
        unknown = sorted(set(names) - allowed)
        if unknown:
            checker.add(
                key,
                f"unknown variable '{unknown[0]}' in the URL",
                "a URL can use " + ", ".join(sorted(FETCH_VARIABLES)),
            )
            return None
        parts.append(expression)
        position = match.end()
    parts.append(url[position:])
    return FetchUrl(url, [part for part in parts if not isinstance(part, str) or part])
