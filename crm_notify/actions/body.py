"""The body of a webhook action: compiled from the rule file at load, rendered in the sandbox
at delivery.

Three forms:

- ``json`` with a mapping or list: its string leaves are templates. A leaf that is one
  expression and nothing else (``"{{ order.total }}"``) keeps the value's JSON type (a number,
  ``true``, ``null``, a list); any other template renders to a string; other scalars are sent
  as written. The result is serialised as compact UTF-8 JSON.
- ``json`` with a string: one template that must render JSON (use ``| tojson`` for values);
  it is checked at delivery, and a rendering that is not JSON fails the notification.
- ``form``: a flat mapping field -> template (or scalar), sent as
  ``application/x-www-form-urlencoded``; ``true``/``false`` for booleans, empty for null, JSON
  for a list or mapping an expression yields.

Mapping keys are sent as written. Templates may read only the variables they are given when
compiled (``event``, ``contact``, ``order``, ``cart``, ``webhook``), so a typo fails at load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, NamedTuple, NoReturn
from urllib.parse import urlencode

from jinja2 import Template, TemplateError, meta

from crm_notify.errors import RenderError
from crm_notify.render.sandbox import BoundedSandboxEnvironment, CompiledExpression

#: The two body encodings.
ContentType = Literal["json", "form"]
#: The ``Content-Type`` header of each encoding.
CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "form": "application/x-www-form-urlencoded",
}
#: A leaf that is one ``{{ expression }}`` and nothing else.
_EXPRESSION_ONLY = re.compile(r"\A\s*\{\{(?P<expression>(?:(?!\{\{|\}\}).)*)\}\}\s*\Z", re.DOTALL)
#: Where a template starts: text without any of these is sent as written.
_TEMPLATE_MARKERS = ("{{", "{%", "{#")

#: A position inside the body: keys and indexes from its root.
BodyPath = tuple[str | int, ...]


class BodyProblem(NamedTuple):
    """Something wrong with a body, at ``path`` (relative to the body)."""

    path: BodyPath
    message: str
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedBody:
    """A rendered body: the ``Content-Type`` header and the exact bytes to send."""

    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class _Text:
    """A leaf rendered to a string."""

    template: Template


@dataclass(frozen=True, slots=True)
class _Value:
    """A leaf that is one expression: its value, with its JSON type."""

    expression: CompiledExpression


class WebhookBody:
    """A compiled body; build it with :func:`compile_body`.

    Parameters:
        content_type: ``json`` or ``form``.
        tree: the compiled structure (for a ``json`` string: a single leaf).
        environment: the sandbox that compiled it (its bounds apply when rendering).
    """

    __slots__ = ("_environment", "_tree", "content_type")

    def __init__(
        self, content_type: ContentType, tree: Any, environment: BoundedSandboxEnvironment
    ) -> None:
        self.content_type = content_type
        self._tree = tree
        self._environment = environment

    def __repr__(self) -> str:
        return f"WebhookBody({self.content_type})"

    def render(self, context: Mapping[str, Any]) -> RenderedBody:
        """Render the body with ``context``.

        Parameters:
            context: plain data: ``event``, ``contact``, ``order``, ``cart``, ``webhook``.

        Raises:
            RenderError: a template failed (an undefined value, a sandbox bound), a string body
                did not render JSON, or a value cannot be written as JSON.

        Returns:
            The ``Content-Type`` and the bytes.
        """
        header = CONTENT_TYPES[self.content_type]
        if self.content_type == "form":
            fields = [(key, _form_text(self._build(leaf, context))) for key, leaf in self._tree]
            return RenderedBody(header, urlencode(fields).encode("ascii"))
        if isinstance(self._tree, _Text):
            text = self._environment.render(self._tree.template, context)
            try:
                json.loads(text)
            except ValueError as exc:
                raise RenderError(f"the body did not render JSON: {exc}") from exc
            return RenderedBody(header, text.encode("utf-8"))
        value = self._build(self._tree, context)
        try:
            text = json.dumps(
                value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_plain
            )
        except (TypeError, ValueError) as exc:
            raise RenderError(f"the body cannot be written as JSON: {exc}") from exc
        return RenderedBody(header, text.encode("utf-8"))

    def _build(self, node: Any, context: Mapping[str, Any]) -> Any:
        if isinstance(node, _Text):
            return self._environment.render(node.template, context)
        if isinstance(node, _Value):
            return node.expression.evaluate(context)
        if isinstance(node, dict):
            return {key: self._build(item, context) for key, item in node.items()}
        if isinstance(node, list):
            return [self._build(item, context) for item in node]
        return node


def compile_body(
    value: Any,
    content_type: ContentType,
    *,
    environment: BoundedSandboxEnvironment,
    variables: Iterable[str],
) -> tuple[WebhookBody | None, list[BodyProblem]]:
    """Compile a body as written in a rule file.

    Parameters:
        value: the ``body`` value (a mapping, a list, a string), or ``None`` for no body.
        content_type: ``json`` or ``form``.
        environment: the sandbox to compile templates in.
        variables: the variables templates may read (besides the sandbox's globals).

    Returns:
        The compiled body (``None`` for no body, or when there are problems), and the problems.
    """
    if value is None:
        return None, []
    compiler = _Compiler(environment, frozenset(variables) | set(environment.globals))
    tree: Any
    if content_type == "form":
        if not isinstance(value, dict):
            hint = "write the fields as a mapping, e.g. body: {to: '{{ contact.traits.phone }}'}"
            return None, [BodyProblem((), "a form body must be a mapping of field -> value", hint)]
        tree = []
        for key, item in value.items():
            if isinstance(item, dict | list):
                message = f"form field '{key}' must be text or a scalar, not a {_kind(item)}"
                compiler.problems.append(BodyProblem((key,), message, "form fields are flat"))
                continue
            tree.append((key, compiler.leaf(item, (key,))))
    elif isinstance(value, str):
        try:
            tree = _Text(compiler.template(value, ()))
        except _Invalid:
            tree = None
    elif isinstance(value, dict | list):
        tree = compiler.node(value, ())
    else:
        message = f"a json body must be a mapping, a list or a template string, not {value!r}"
        return None, [BodyProblem((), message)]
    if compiler.problems:
        return None, compiler.problems
    return WebhookBody(content_type, tree, environment), []


class _Invalid(Exception):
    """A leaf did not compile (the problem is recorded)."""


class _Compiler:
    def __init__(self, environment: BoundedSandboxEnvironment, allowed: frozenset[str]) -> None:
        self.environment = environment
        self.allowed = allowed
        self.problems: list[BodyProblem] = []

    def node(self, value: Any, path: BodyPath) -> Any:
        if isinstance(value, dict):
            return {key: self.node(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.node(item, (*path, index)) for index, item in enumerate(value)]
        return self.leaf(value, path)

    def leaf(self, value: Any, path: BodyPath) -> Any:
        if isinstance(value, str):
            if not any(marker in value for marker in _TEMPLATE_MARKERS):
                return value
            try:
                only = _EXPRESSION_ONLY.match(value)
                if only is not None:
                    return _Value(self.expression(only["expression"], value, path))
                return _Text(self.template(value, path))
            except _Invalid:
                return None
        if value is None or isinstance(value, bool | int | float):
            return value
        self.problems.append(BodyProblem(path, f"unsupported value {value!r}", "quote it"))
        return None

    def template(self, source: str, path: BodyPath) -> Template:
        try:
            template = self.environment.from_string(source)
        except (RenderError, TemplateError) as exc:
            self._fail(path, f"invalid template {_shorten(source)!r}: {_reason(exc)}")
        self._check_variables(source, path)
        return template

    def expression(self, text: str, source: str, path: BodyPath) -> CompiledExpression:
        try:
            expression = self.environment.compile_expression(text.strip())
        except (RenderError, TemplateError) as exc:
            self._fail(path, f"invalid expression {_shorten(source)!r}: {_reason(exc)}")
        self._check_variables(source, path)
        return expression

    def _check_variables(self, source: str, path: BodyPath) -> None:
        try:
            names = meta.find_undeclared_variables(self.environment.parse(source))
        except TemplateError:  # pragma: no cover - it compiled just before
            return
        unknown = sorted(set(names) - self.allowed)
        if unknown:
            known = ", ".join(sorted(self.allowed - set(self.environment.globals)))
            self._fail(
                path,
                f"unknown variable '{unknown[0]}' in {_shorten(source)!r}",
                f"a body can use {known}",
            )

    def _fail(self, path: BodyPath, message: str, hint: str | None = None) -> NoReturn:
        self.problems.append(BodyProblem(path, message, hint))
        raise _Invalid


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(exc: Exception) -> str:
    """The sandbox's message without its ``<string>:1:`` location (ours names the key)."""
    text = str(exc)
    return text.split(": ", 1)[-1] if text.startswith("<") else text


def _kind(value: Any) -> str:
    return "mapping" if isinstance(value, dict) else "list"


def _plain(value: Any) -> Any:
    """``json.dumps`` default: dates as ISO 8601, decimals as numbers."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON data")


def _form_text(value: Any) -> str:
    """A form field's text: booleans as ``true``/``false``, null as empty, structures as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_plain)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)
