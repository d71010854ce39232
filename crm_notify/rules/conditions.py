"""``Condition``: a rule's ``when`` expression, compiled in the sandbox when the rule is loaded.

Compiling also checks the variables the expression reads: only ``event``, ``contact``, ``order``,
``cart`` (and the sandbox's globals) exist, so ``contcat.email`` fails at load, not at send.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import TemplateError, meta

from crm_notify.errors import ConditionError, RenderError, RuleFileError
from crm_notify.render.sandbox import BoundedSandboxEnvironment, CompiledExpression

_SANDBOX_LOCATION = re.compile(r"^<[^>]*>:\d+: ")

#: The variables a condition may read.
CONDITION_VARIABLES = frozenset({"event", "contact", "order", "cart"})


class Condition:
    """A compiled ``when`` expression; build it with :func:`compile_condition`.

    Parameters:
        source: the expression as written, e.g. ``"order.total > 0"``.
        expression: the sandbox's compiled form.
        path: the rule file, for error messages.
        line: the line of the expression in that file.
    """

    __slots__ = ("_expression", "line", "path", "source")

    def __init__(
        self, source: str, expression: CompiledExpression, *, path: Path, line: int | None
    ) -> None:
        self.source = source
        self._expression = expression
        self.path = path
        self.line = line

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """Evaluate the expression and coerce the result with ``bool()``.

        Parameters:
            context: the variables, e.g. ``{"order": {...}, "contact": {...}}``.

        Raises:
            ConditionError: the expression failed (undefined variable, type error, sandbox limit).

        Returns:
            Whether the condition holds.
        """
        try:
            return bool(self._expression.evaluate(context))
        except (RenderError, TemplateError) as exc:
            location = f"{self.path}:{self.line}" if self.line else str(self.path)
            raise ConditionError(
                f"{location}: condition {_shorten(self.source)!r} failed: {_reason(exc)}"
            ) from exc


def compile_condition(
    source: str, *, environment: BoundedSandboxEnvironment, path: Path, line: int | None
) -> Condition:
    """Compile one ``when`` expression.

    Parameters:
        source: the expression.
        environment: the sandbox to compile it in.
        path: the rule file.
        line: the line of the expression.

    Raises:
        RuleFileError: a syntax error, or a variable other than :data:`CONDITION_VARIABLES`.

    Returns:
        The compiled condition.
    """
    try:
        expression = environment.compile_expression(source)
    except RenderError as exc:
        raise RuleFileError(
            path, line, f"invalid condition {_shorten(source)!r}: {_reason(exc)}"
        ) from exc
    allowed = CONDITION_VARIABLES | set(environment.globals)
    for name in sorted(_variables(source, environment) - allowed):
        close = difflib.get_close_matches(name, sorted(CONDITION_VARIABLES), n=1)
        raise RuleFileError(
            path,
            line,
            f"unknown variable '{name}' in condition {_shorten(source)!r}",
            f"did you mean '{close[0]}'?" if close else _variables_hint(),
        )
    return Condition(source, expression, path=path, line=line)


def _variables(source: str, environment: BoundedSandboxEnvironment) -> set[str]:
    """Return the top-level names ``source`` reads (empty if it cannot be analysed)."""
    try:
        return meta.find_undeclared_variables(environment.parse("{{ (" + source + "\n) }}"))
    except TemplateError:
        return set()


def _shorten(source: str, limit: int = 80) -> str:
    return source if len(source) <= limit else source[: limit - 3] + "..."


def _reason(exc: Exception) -> str:
    """Return the sandbox's message without its ``<string>:1:`` location (ours is better)."""
    return _SANDBOX_LOCATION.sub("", str(exc), count=1)


def _variables_hint() -> str:
    return "conditions can use " + ", ".join(sorted(CONDITION_VARIABLES))
