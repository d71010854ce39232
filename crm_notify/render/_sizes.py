"""Size estimates that stop an operation *before* it allocates something huge.

Every check bounds the *growth* of one operation: how much larger its result is than the data
it consumed, counting each distinct input object once (so ``[s] * n | join`` is growth, not
input). Growth above ``max_sequence_len`` raises :class:`SandboxLimitError`. Cumulative growth
over a whole render is bounded separately by the work budget (``_budget.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from crm_notify.errors import SandboxLimitError

if TYPE_CHECKING:
    from crm_notify.render.sandbox import SandboxLimits

#: Sequence types whose length is what ``*``, ``+``, padding and joining multiply.
SEQUENCES = (str, bytes, list, tuple)

#: Python's ``date.strftime`` gives up on results longer than 256 times the format.
_STRFTIME_FACTOR = 256

_DIGITS = re.compile(r"\d+")


def check_growth(limits: SandboxLimits, what: str, produced: float, consumed: float = 0) -> None:
    """Raise when ``produced - consumed`` exceeds ``limits.max_sequence_len``.

    Parameters:
        limits: the bounds in force.
        what: the operation, for the message (``"'*' on str"``).
        produced: estimated size of the result.
        consumed: size of the distinct inputs the result is built from.

    Raises:
        SandboxLimitError: the operation would grow data past the limit.
    """
    if produced - consumed > limits.max_sequence_len:
        raise SandboxLimitError(
            f"{what} would create about {int(produced):,} items; "
            f"the limit is {limits.max_sequence_len:,}"
        )


def check_int_arg(limits: SandboxLimits, what: str, value: object) -> None:
    """Bound an integer argument such as a width, length or count (negative is fine)."""
    if isinstance(value, int) and abs(value) > limits.max_sequence_len:
        raise SandboxLimitError(
            f"{what} of {value:,} exceeds the limit of {limits.max_sequence_len:,}"
        )


def max_digits(limits: SandboxLimits) -> int:
    """Decimal digits of the widest integer allowed (``max_sequence_len`` bits)."""
    return int(limits.max_sequence_len * math.log10(2))


def check_number(limits: SandboxLimits, value: object) -> None:
    """Bound int width and Decimal exponent, so that ``int()``/``str()`` on them stays cheap.

    Raises:
        SandboxLimitError: ``value`` is an int wider than ``max_sequence_len`` bits or a finite
            Decimal whose exponent exceeds the same number of decimal digits.
    """
    if isinstance(value, int) and value.bit_length() > limits.max_sequence_len:
        raise SandboxLimitError(
            f"an integer of {value.bit_length():,} bits exceeds the limit of "
            f"{limits.max_sequence_len:,} bits"
        )
    if isinstance(value, Decimal) and value.is_finite() and value:
        exponent = value.adjusted()
        if abs(exponent) > max_digits(limits):
            raise SandboxLimitError(
                f"a decimal with exponent {exponent:,} exceeds the limit of "
                f"{max_digits(limits):,} digits"
            )


def text_size(value: object) -> int:
    """Length of ``value`` once turned into text (cheap for scalars)."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if isinstance(value, float):
        return 320
    if value is None:
        return 4
    return len(str(value))


def distinct_growth(items: Iterable[object], size: Callable[[object], int]) -> tuple[int, int]:
    """Return ``(total, distinct)`` sizes of ``items``, counting repeated objects once."""
    seen: dict[int, int] = {}
    total = 0
    for item in items:
        key = id(item)
        if key not in seen:
            seen[key] = size(item)
        total += seen[key]
    return total, sum(seen.values())


def check_join(limits: SandboxLimits, what: str, sep_len: int, items: list[Any]) -> None:
    """Bound joining ``items`` with a separator of ``sep_len``."""
    total, distinct = distinct_growth(items, text_size)
    check_growth(limits, what, total + sep_len * max(len(items) - 1, 0), distinct)


def check_format_spec(limits: SandboxLimits, spec: str, value: object) -> None:
    """Bound the widths and precisions of a ``str.format`` field spec."""
    for run in _DIGITS.findall(spec):
        if len(run) > 9 or int(run) > limits.max_sequence_len:
            raise SandboxLimitError(
                f"format width or precision {run[:12]} exceeds the limit of "
                f"{limits.max_sequence_len:,}"
            )
    if isinstance(value, date):
        check_growth(limits, "date format", _STRFTIME_FACTOR * len(spec), len(spec))


def check_strftime(limits: SandboxLimits, fmt: object) -> None:
    """Bound ``date.strftime``, whose result may be 256 times longer than its format."""
    if isinstance(fmt, str):
        check_growth(limits, "strftime", _STRFTIME_FACTOR * len(fmt), len(fmt))


def printf_specs(fmt: str | bytes) -> list[tuple[str | None, str, str, str]]:
    """Parse ``%`` conversions exactly as CPython does: ``(key, width, precision, type)``.

    Malformed tails are ignored; the real ``%`` operation reports them.
    """
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    specs: list[tuple[str | None, str, str, str]] = []
    i, n = 0, len(text)
    while (i := text.find("%", i) + 1) and i < n:
        key = None
        if text[i] == "(":
            depth, j = 1, i + 1
            while j < n and depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            if depth:
                break
            key, i = text[i + 1 : j - 1], j
        while i < n and text[i] in "-+ #0":
            i += 1
        width, i = _printf_number(text, i)
        precision = ""
        if i < n and text[i] == ".":
            precision, i = _printf_number(text, i + 1)
        while i < n and text[i] in "hlL":
            i += 1
        if i >= n:
            break
        specs.append((key, width, precision, text[i]))
        i += 1
    return specs


def _printf_number(text: str, i: int) -> tuple[str, int]:
    if i < len(text) and text[i] == "*":
        return "*", i + 1
    start = i
    while i < len(text) and "0" <= text[i] <= "9":
        i += 1
    return text[start:i], i


def check_printf(limits: SandboxLimits, fmt: str | bytes, values: object) -> None:
    """Bound ``fmt % values``: widths, precisions and repeated use of large values.

    Raises:
        SandboxLimitError: a ``*`` width, a too large width/precision, or too much growth.
    """
    positional = list(values) if isinstance(values, tuple) else [values]
    mapping = values if isinstance(values, Mapping) else None
    produced: list[tuple[object, int]] = []
    for key, width, precision, kind in printf_specs(fmt):
        numbers = []
        for number in (width, precision):
            if number == "*":
                raise SandboxLimitError("'*' widths are not allowed in % formatting")
            if len(number) > 9:
                raise SandboxLimitError(f"format width {number[:12]} is too large")
            numbers.append(int(number or 0))
            check_int_arg(limits, "format width or precision", numbers[-1])
        if kind == "%":
            continue
        if key is not None and mapping is not None:
            value = mapping.get(key)
        elif positional:
            value = positional.pop(0)
        else:
            break
        size = len(repr(value)) if kind in "ra" else text_size(value)
        produced.append((value, max(numbers[0], size + numbers[1])))
    total, distinct = distinct_growth([v for v, _ in produced], text_size)
    extra = sum(size for _, size in produced) - total
    check_growth(limits, "'%' formatting", total + extra, distinct)
