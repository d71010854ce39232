"""Pre-checks for the operators, methods and ``str.format`` calls a template can make."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from jinja2.sandbox import SandboxedFormatter
from markupsafe import EscapeFormatter, Markup

from crm_notify.render._sizes import (
    SEQUENCES,
    check_format_spec,
    check_growth,
    check_int_arg,
    check_join,
    check_printf,
    check_strftime,
)

if TYPE_CHECKING:
    from jinja2 import Environment

    from crm_notify.render.sandbox import SandboxLimits

#: ``str``/``bytes`` methods whose first argument is the result width.
_PADDING = frozenset({"center", "ljust", "rjust", "zfill"})

#: How much ``Markup`` escaping can grow an inserted string (``'`` -> ``&#39;``).
ESCAPE_FACTOR = 5


def result_size(value: object) -> int:
    """Size charged to the work budget for a created value (items or characters)."""
    if isinstance(value, (*SEQUENCES, dict)):
        return len(value)
    return 0


def check_binop(limits: SandboxLimits, operator: str, left: Any, right: Any) -> None:
    """Refuse ``left <operator> right`` when its result would be too large to compute.

    Raises:
        SandboxLimitError: repetition, power or ``%`` formatting exceeds the limits.
    """
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, SEQUENCES) and isinstance(count, int):
                what = f"'*' on {type(seq).__name__}"
                check_growth(limits, what, len(seq) * count, len(seq))
                return
        if isinstance(left, int) and isinstance(right, int):
            check_growth(limits, "'*' on int (bits)", left.bit_length() + right.bit_length())
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            check_growth(limits, "'**' (bits)", right * math.log2(abs(left)))
    elif operator == "%" and isinstance(left, str | bytes):
        check_printf(limits, left, right)
    elif operator == "+" and left is right and isinstance(left, SEQUENCES):
        check_growth(limits, f"'+' on {type(left).__name__}", 2 * len(left), len(left))


def precheck_call(
    limits: SandboxLimits, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Check a call to a method that can amplify its input; return the (maybe copied) args.

    ``join`` consumes its iterable, so it is materialised once and passed on as a list.

    Raises:
        SandboxLimitError: the call would grow data past ``limits.max_sequence_len``.
    """
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    what = f"{type(owner).__name__}.{name}()"
    if isinstance(owner, str | bytes):
        return _precheck_sequence_method(limits, what, owner, name, args, kwargs)
    if isinstance(owner, int) and name == "to_bytes":
        check_int_arg(limits, what, args[0] if args else kwargs.get("length", 1))
    elif isinstance(owner, date) and name == "strftime" and args:
        check_strftime(limits, args[0])
    return args


def _precheck_sequence_method(
    limits: SandboxLimits,
    what: str,
    owner: str | bytes,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[Any, ...]:
    if name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        if isinstance(tabsize, int):
            check_growth(limits, what, tabs * tabsize + len(owner), len(owner))
        return args
    if not args:
        return args
    first = args[0]
    if name in _PADDING and isinstance(first, int):
        check_growth(limits, what, first, len(owner))
    elif name == "replace" and len(args) >= 2:
        _check_replace(limits, what, owner, args)
    elif name == "join":
        items = list(first)
        check_join(limits, what, len(owner), items)
        return (items, *args[1:])
    elif name == "translate":
        table = first.values() if isinstance(first, Mapping) else first
        longest = max((len(v) for v in table if isinstance(v, str)), default=1)
        check_growth(limits, what, len(owner) * longest, len(owner))
    return args


def _check_replace(
    limits: SandboxLimits, what: str, owner: str | bytes, args: tuple[Any, ...]
) -> None:
    old, new = args[0], args[1]
    count = args[2] if len(args) > 2 else -1
    if not (isinstance(old, str | bytes) and isinstance(new, str | bytes)):
        return
    try:
        hits = owner.count(old)  # type: ignore[arg-type]
    except TypeError:
        return
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    factor = ESCAPE_FACTOR if isinstance(owner, Markup) else 1
    check_growth(limits, what, len(owner) + hits * (factor * len(new) - len(old)), len(owner))


class BoundedFormatter(SandboxedFormatter):
    """``str.format`` for templates: bounded widths and bounded repetition of large values."""

    def __init__(self, env: Environment, limits: SandboxLimits, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._limits = limits
        self._seen: dict[int, int] = {}
        self._produced = 0
        self._distinct = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        """Format like :meth:`string.Formatter.vformat`, counting growth per call."""
        self._seen, self._produced, self._distinct = {}, 0, 0
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        """Format one field after bounding its spec and the total growth so far."""
        check_format_spec(self._limits, format_spec, value)
        text = super().format_field(value, format_spec)
        self._produced += len(text)
        if id(value) not in self._seen:
            self._seen[id(value)] = len(text)
            self._distinct += len(text)
        check_growth(self._limits, "str.format()", self._produced, self._distinct)
        return text


class BoundedEscapeFormatter(BoundedFormatter, EscapeFormatter):
    """The escaping variant used for ``Markup.format``."""
