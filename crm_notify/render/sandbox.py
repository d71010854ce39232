"""The sandboxed, resource-bounded Jinja environment for admin-written templates and conditions.

Bounds (see :class:`SandboxLimits`) are enforced in layers:

* compile time: source length; intercepted operators and guarded calls are never
  constant-folded, so ``{{ 9**9**9 }}`` cannot hang the compiler;
* per operation: ``*``, ``**``, ``%``, ``+``, ``~``, padding/``replace``/``join``/``format``
  methods and the amplifying filters are refused *before* they build something huge;
* per render: total loop iterations, created characters, output characters and wall time,
  kept in a :class:`contextvars.ContextVar` (thread safe), checked at every loop item, call,
  filter, operator and output chunk.

Render through :meth:`BoundedSandboxEnvironment.render`, ``Template.render()`` or
:meth:`CompiledExpression.evaluate`; ``Template.generate()`` and other entry points fail closed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from types import BuiltinMethodType, FunctionType, MethodType
from typing import Any, NoReturn, cast

from jinja2 import StrictUndefined, Template, nodes, select_autoescape
from jinja2.environment import TemplateExpression
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser
from jinja2.runtime import Context, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from crm_notify.errors import ConfigurationError, RenderError, SandboxLimitError
from crm_notify.render import _filters, _transform
from crm_notify.render._budget import active, bounded
from crm_notify.render._errors import syntax_error, translate
from crm_notify.render._ops import (
    BoundedEscapeFormatter,
    BoundedFormatter,
    check_binop,
    precheck_call,
    result_size,
)
from crm_notify.render._sizes import check_number

#: Types a template context may contain (exact types; containers are checked recursively).
PLAIN_SCALARS = frozenset({str, Markup, int, float, bool, type(None), datetime, date, Decimal})

#: Deepest container nesting accepted by :func:`ensure_plain_data`.
MAX_DATA_DEPTH = 64


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Resource bounds for one render of a template or one evaluation of an expression.

    Parameters:
        max_source_chars: longest template or expression source accepted at compile time.
        max_output_chars: longest rendered output.
        max_loop_iterations: loop items over all loops of one render.
        max_seconds: wall time of one render, checked between operations.
        max_sequence_len: most items/characters one operation may add to its input
            (``*``, padding widths, ``replace``, ``join``, format widths); also the widest
            integer in bits (``**``) and, converted to digits, the largest Decimal exponent.
        max_work_chars: characters/items created over one render, counting output built
            inside macros and blocks and every call, filter and operator result.

    Raises:
        ConfigurationError: a limit is not positive.
    """

    max_source_chars: int = 262_144
    max_output_chars: int = 1_000_000
    max_loop_iterations: int = 100_000
    max_seconds: float = 1.0
    max_sequence_len: int = 100_000
    max_work_chars: int = 20_000_000

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise ConfigurationError(f"SandboxLimits.{field.name} must be positive")


class BoundedTemplate(Template):
    """A template whose :meth:`render` runs under its environment's bounds."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        """Render like :meth:`BoundedSandboxEnvironment.render` (same bounds and errors)."""
        environment = cast(BoundedSandboxEnvironment, self.environment)
        return environment.render(self, dict(*args, **kwargs))


class BoundedSandboxEnvironment(ImmutableSandboxedEnvironment):
    """An immutable sandbox with resource bounds, strict undefined and HTML-only autoescape.

    Parameters:
        limits: the bounds; ``SandboxLimits()`` when omitted.
        **options: :class:`jinja2.Environment` options. Defaults: ``undefined=StrictUndefined``
            and autoescaping for ``.html``/``.htm``/``.xml`` names only (not for strings).
            Filters added after construction are not wrapped by the budget guard.

    Raises:
        ConfigurationError: ``enable_async`` was requested (not supported).
    """

    intercepted_binops = frozenset(ImmutableSandboxedEnvironment.default_binop_table)
    template_class = BoundedTemplate

    def __init__(self, limits: SandboxLimits | None = None, **options: Any) -> None:
        if options.get("enable_async"):
            raise ConfigurationError("BoundedSandboxEnvironment does not support enable_async")
        options.setdefault("undefined", StrictUndefined)
        options.setdefault(
            "autoescape", select_autoescape(("html", "htm", "xml"), default_for_string=False)
        )
        super().__init__(**options)
        self.limits = limits or SandboxLimits()
        self.filters.update(_filters.BOUNDED_FILTERS)
        self.filters = {name: _filters.guard(func) for name, func in self.filters.items()}
        self.globals["lipsum"] = _filters.bounded_lipsum

    def render(self, template: str | Template, context: Mapping[str, Any]) -> str:
        """Render ``template`` (a name for the loader, or a compiled template) with ``context``.

        Parameters:
            template: template name or :class:`jinja2.Template` of this environment.
            context: plain data (see :func:`ensure_plain_data`).

        Raises:
            TemplateNotFoundError: the named template (or one it includes) does not exist.
            SandboxLimitError: a bound was exceeded.
            RenderError: anything else went wrong; the message starts with ``name:line``.

        Returns:
            The rendered text.
        """
        return self.render_all([template], context)[0]

    def render_all(
        self, templates: Sequence[str | Template], context: Mapping[str, Any]
    ) -> list[str]:
        """Render each of ``templates`` with one ``context`` (the parts of one email), checking
        the context once; each template is rendered within its own bounds, as by :meth:`render`.

        Parameters:
            templates: names (for the loader) or templates compiled by this environment.
            context: the template data shared by all of them.

        Raises:
            SandboxLimitError: the context, or one of the renders, exceeds a limit.
            RenderError: a template fails to render (the first failing one).

        Returns:
            The rendered texts, in the order of ``templates``.
        """
        data = dict(context)
        ensure_plain_data(data, limits=self.limits)
        return [self._render_checked(template, data) for template in templates]

    def _render_checked(self, template: str | Template, data: dict[str, Any]) -> str:
        """Render ``template`` with ``data``, which :func:`ensure_plain_data` has accepted."""
        if isinstance(template, Template) and template.environment is not self:
            raise RenderError("the template was compiled by another environment (unbounded)")
        name = template if isinstance(template, str) else (template.name or "<string>")
        limit = self.limits.max_output_chars
        with bounded(self.limits) as budget:
            try:
                compiled = self.get_template(template)
                chunks: list[str] = []
                size = 0
                for chunk in compiled.root_render_func(compiled.new_context(data)):
                    size += len(chunk)
                    if size > limit:
                        raise SandboxLimitError(
                            f"{name}: output exceeds the limit of {limit:,} characters"
                        )
                    budget.check_deadline()
                    chunks.append(chunk)
            except Exception as exc:
                error = translate(exc, name)
                if error is exc:
                    raise
                raise error from exc
        return "".join(chunks)

    def compile_expression(
        self, source: str, undefined_to_none: bool = False
    ) -> CompiledExpression:
        """Compile a single expression, e.g. a rule condition ``order.total > 50``.

        Parameters:
            source: the expression.
            undefined_to_none: return ``None`` for an undefined result instead of raising.

        Raises:
            SandboxLimitError: ``source`` is longer than ``max_source_chars``.
            RenderError: ``source`` is not a valid expression.

        Returns:
            A :class:`CompiledExpression`.
        """
        self._check_source(source, "<expression>")
        try:
            parser = Parser(self, source, state="variable")
            expr = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError(
                    "unexpected text after the expression", parser.stream.current.lineno
                )
            body = [nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)]
            template = self.from_string(nodes.Template(body, lineno=1))
        except Exception as exc:
            error = translate(exc, f"expression {source[:80]!r}")
            if error is exc:
                raise
            raise error from exc
        return CompiledExpression(self, template, source, undefined_to_none)

    # -- Jinja hooks -------------------------------------------------------------------------

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        self._check_source(source, name or "<string>")
        return super()._parse(source, name, filename)

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        _transform.harden(source).set_environment(self)
        return super()._generate(source, name, filename, defer_init=defer_init)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``obj`` from template code, bounded (see :func:`_ops.precheck_call`)."""
        if type(obj) is FunctionType and obj in _transform.GUARDS:
            return context.call(obj, *args, **kwargs) if obj is _transform.concat else obj(*args)
        budget = active()
        budget.check_deadline()
        args = precheck_call(self.limits, obj, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        if not isinstance(obj, Macro):  # a macro's text was charged as it was emitted
            budget.charge(result_size(result))
        check_number(self.limits, result)
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Apply a binary operator after bounding its result (all operators are intercepted)."""
        budget = active()
        check_binop(self.limits, operator, left, right)
        result = super().call_binop(context, operator, left, right)
        budget.charge(result_size(result))
        check_number(self.limits, result)
        return result

    def handle_exception(self, source: str | None = None) -> NoReturn:
        """Raise compile errors as :class:`RenderError` (``name:line: syntax error: ...``)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, TemplateSyntaxError):
            raise syntax_error(exc) from exc
        super().handle_exception(source)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Sandbox ``str.format``/``format_map`` with bounded widths and repetition."""
        if not isinstance(value, MethodType | BuiltinMethodType):
            return None
        owner = value.__self__
        if value.__name__ not in ("format", "format_map") or not isinstance(owner, str):
            return None
        formatter: BoundedFormatter
        if isinstance(owner, Markup):
            formatter = BoundedEscapeFormatter(self, self.limits, escape=owner.escape)
        else:
            formatter = BoundedFormatter(self, self.limits)
        is_map = value.__name__ == "format_map"

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if not is_map:
                return type(owner)(formatter.vformat(owner, args, kwargs))
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one positional argument")
            return type(owner)(formatter.vformat(owner, (), args[0]))

        return bounded_format

    def _check_source(self, source: str, name: str) -> None:
        if len(source) > self.limits.max_source_chars:
            raise SandboxLimitError(
                f"{name}: source is {len(source):,} characters; "
                f"the limit is {self.limits.max_source_chars:,}"
            )


class CompiledExpression(TemplateExpression):
    """A compiled expression; call :meth:`evaluate` with plain data.

    Parameters:
        environment: the environment that compiled it (its limits apply).
        template: the compiled wrapper template (``result = <expression>``).
        source: the expression text, for messages.
        undefined_to_none: whether an undefined result becomes ``None`` instead of an error.
    """

    def __init__(
        self,
        environment: BoundedSandboxEnvironment,
        template: Template,
        source: str,
        undefined_to_none: bool,
    ) -> None:
        super().__init__(template, undefined_to_none)
        self.environment = environment
        self.template = template
        self.source = source
        self.undefined_to_none = undefined_to_none

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate with ``dict(*args, **kwargs)`` as context (Jinja's calling style)."""
        return self.evaluate(dict(*args, **kwargs))

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """Evaluate the expression with ``context``.

        Parameters:
            context: plain data (see :func:`ensure_plain_data`).

        Raises:
            SandboxLimitError: a bound was exceeded.
            RenderError: evaluation failed, e.g. an undefined name (the message names it), or
                the result is not plain data (a method someone forgot to call, say).

        Returns:
            The value, as plain data (``Markup`` becomes ``str``).
        """
        limits = self.environment.limits
        data = dict(context)
        ensure_plain_data(data, limits=limits)
        with bounded(limits):
            try:
                ctx = self.template.new_context(data)
                for _ in self.template.root_render_func(ctx):
                    pass
                result = ctx.vars["result"]
                if isinstance(result, Undefined) and not self.undefined_to_none:
                    result._fail_with_undefined_error()
            except Exception as exc:
                error = translate(exc, f"expression {self.source[:80]!r}")
                if error is exc:
                    raise
                raise error from exc
        if isinstance(result, Undefined):
            return None
        if isinstance(result, Markup):
            result = str(result)
        ensure_plain_data(result, limits=limits, path="result")
        return result


def ensure_plain_data(
    value: object, *, limits: SandboxLimits | None = None, path: str = "context"
) -> None:
    """Check that ``value`` is plain data: dicts with str keys, lists, tuples and scalars.

    Scalars are str (and ``Markup``), int, float, bool, None, datetime, date and Decimal; ORM
    objects and anything else with behaviour are refused. Integers wider than
    ``limits.max_sequence_len`` bits and Decimals with a larger exponent are refused too,
    since converting them would be unbounded work.

    Parameters:
        value: the data (usually a template context).
        limits: bounds for numbers; ``SandboxLimits()`` when omitted.
        path: how to name ``value`` in messages.

    Raises:
        RenderError: naming the path of the first offending value.
    """
    _check_plain(value, [path], limits or SandboxLimits(), set(), set())


def _check_plain(
    value: object, trail: list[str], limits: SandboxLimits, open_: set[int], done: set[int]
) -> None:
    kind = type(value)
    if kind in PLAIN_SCALARS:
        try:
            check_number(limits, value)
        except SandboxLimitError as exc:
            raise RenderError(f"{''.join(trail)}: {exc}") from exc
        return
    if kind not in (dict, list, tuple):
        raise RenderError(
            f"{''.join(trail)}: {kind.__module__}.{kind.__qualname__} is not plain data "
            "(pass dicts, lists and scalars to templates)"
        )
    key = id(value)
    if key in done:
        return
    if key in open_:
        raise RenderError(f"{''.join(trail)}: contains itself")
    if len(open_) >= MAX_DATA_DEPTH:
        raise RenderError(f"{''.join(trail)}: nested deeper than {MAX_DATA_DEPTH} levels")
    open_.add(key)
    if isinstance(value, dict):
        for name, item in value.items():
            if type(name) is not str:
                raise RenderError(f"{''.join(trail)}: key {name!r} is not a str")
            trail.append(f"[{name!r}]")
            _check_plain(item, trail, limits, open_, done)
            trail.pop()
    else:
        for index, item in enumerate(cast("list[object]", value)):
            trail.append(f"[{index}]")
            _check_plain(item, trail, limits, open_, done)
            trail.pop()
    open_.discard(key)
    done.add(key)
