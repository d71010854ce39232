"""Bounded versions of the Jinja filters (and ``lipsum``) that can amplify their input.

Every filter of a :class:`~crm_notify.render.sandbox.BoundedSandboxEnvironment` is further
wrapped by :func:`guard`, which checks the deadline and charges the result to the work budget.
Limits are read from the active render budget, so these run only inside a bounded render.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from jinja2 import filters, pass_environment, pass_eval_context
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup, soft_str

from crm_notify.errors import SandboxLimitError
from crm_notify.render._budget import active
from crm_notify.render._ops import ESCAPE_FACTOR, result_size
from crm_notify.render._sizes import (
    check_growth,
    check_int_arg,
    check_join,
    check_number,
    check_printf,
    max_digits,
)

if TYPE_CHECKING:
    from jinja2 import Environment
    from jinja2.nodes import EvalContext

#: Longest ``tojson`` indent accepted (it is repeated per line and nesting level).
MAX_JSON_INDENT = 16


def _center(value: Any, width: int = 80) -> str:
    check_growth(active().limits, "center filter", _int(width), len(soft_str(value)))
    return filters.do_center(value, width)


def _indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = soft_str(s)
    step = len(width) if isinstance(width, str) else _int(width)
    check_growth(active().limits, "indent filter", (text.count("\n") + 1) * step)
    return filters.do_indent(s, width, first, blank)


@pass_environment
def _wordwrap(
    environment: Environment,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    limits, text = active().limits, soft_str(s)
    check_int_arg(limits, "wordwrap width", width)
    lines = 2 * len(text) // max(_int(width), 1) + text.count("\n") + 2
    separator = wrapstring if wrapstring is not None else environment.newline_sequence
    check_growth(limits, "wordwrap filter", lines * len(separator))
    return filters.do_wordwrap(
        environment, s, width, break_long_words, wrapstring, break_on_hyphens
    )


@pass_environment
def _truncate(
    env: Environment,
    s: str,
    length: int = 255,
    killwords: bool = False,
    end: str = "...",
    leeway: int | None = None,
) -> str:
    check_int_arg(active().limits, "truncate length", length)
    check_int_arg(active().limits, "truncate leeway", leeway)
    return filters.do_truncate(env, s, length, killwords, end, leeway)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    check_printf(active().limits, soft_str(value), kwargs or args)
    return filters.do_format(value, *args, **kwargs)


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old_text = soft_str(s), soft_str(old)
    hits = text.count(old_text)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    factor = ESCAPE_FACTOR if eval_ctx.autoescape else 1
    growth = hits * (factor * len(soft_str(new)) - len(old_text))
    check_growth(active().limits, "replace filter", len(text) + growth, len(text))
    return filters.do_replace(eval_ctx, s, old, new, count)


@pass_eval_context
def _join(
    eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    items = list(value)
    if attribute is not None:
        getter = filters.make_attrgetter(eval_ctx.environment, attribute)
        items = [getter(item) for item in items]
    factor = ESCAPE_FACTOR if eval_ctx.autoescape else 1
    check_join(active().limits, "join filter", factor * len(soft_str(d)), items)
    return filters.sync_do_join(eval_ctx, items, d)


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    check_int_arg(active().limits, "batch size", linecount)
    return filters.do_batch(value, linecount, fill_with)


def _slice(value: Iterable[Any], slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    check_int_arg(active().limits, "slice count", slices)
    return filters.sync_do_slice(list(value), slices, fill_with)


def _round(value: float, precision: int = 0, method: str = "common") -> float:
    if isinstance(precision, int) and abs(precision) > max_digits(active().limits):
        raise SandboxLimitError(f"round precision {precision:,} is too large")
    return filters.do_round(value, precision, method)  # type: ignore[arg-type]


@pass_eval_context
def _tojson(eval_ctx: EvalContext, value: Any, indent: int | None = None) -> Markup:
    size = len(indent) if isinstance(indent, str) else (indent or 0)
    if size > MAX_JSON_INDENT:
        raise SandboxLimitError(f"tojson indent {size:,} exceeds the limit of {MAX_JSON_INDENT}")
    return filters.do_tojson(eval_ctx, value, indent)


@pass_eval_context
def _urlize(
    eval_ctx: EvalContext,
    value: str,
    trim_url_limit: int | None = None,
    nofollow: bool = False,
    target: str | None = None,
    rel: str | None = None,
    extra_schemes: Iterable[str] | None = None,
) -> str:
    per_link = len(soft_str(target or "")) + len(soft_str(rel or ""))
    check_growth(active().limits, "urlize filter", len(soft_str(value).split()) * per_link)
    return filters.do_urlize(eval_ctx, value, trim_url_limit, nofollow, target, rel, extra_schemes)


def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """``lipsum()`` with the number of generated words bounded by ``max_sequence_len``."""
    check_growth(active().limits, "lipsum()", _int(n) * _int(max) * 8)
    return generate_lorem_ipsum(n, html, min, max)


#: Filters replaced by a bounded version before every filter is wrapped by :func:`guard`.
BOUNDED_FILTERS: dict[str, Callable[..., Any]] = {
    "batch": _batch,
    "center": _center,
    "format": _format,
    "indent": _indent,
    "join": _join,
    "replace": _replace,
    "round": _round,
    "slice": _slice,
    "tojson": _tojson,
    "truncate": _truncate,
    "urlize": _urlize,
    "wordwrap": _wordwrap,
}


def _int(value: object) -> int:
    """``value`` when it is an int (bool included), else 0 (the filter reports the type)."""
    return value if isinstance(value, int) else 0


def guard(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter so it checks the deadline and charges its result to the work budget.

    Parameters:
        func: the filter; its ``pass_context``/``pass_eval_context`` marker is kept.

    Returns:
        The wrapped filter.
    """

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = active()
        budget.check_deadline()
        result = func(*args, **kwargs)
        budget.charge(result_size(result))
        check_number(budget.limits, result)
        return result

    return guarded
