"""Durations in rule files: ``48h``, ``30m``, ``2d``, ``1w``, ``90s``, ``1d12h``, ISO ``PT48H``.

A duration is elapsed time. ``1d`` is exactly 24 hours and ``1w`` exactly 7 days, so a delay that
spans a daylight-saving change still ends 24 hours later on the clock of the world, not at the
same wall-clock time. Months and years have no fixed length and are refused.

Compact form: whole numbers with units ``w``, ``d``, ``h``, ``m``, ``s``, largest first, each at
most once (``1d12h``, ``2h30m``). ISO 8601 form: ``P[nW][nD][T[nH][nM][nS]]`` (``PT48H``,
``P2D``, ``P1DT12H``). ``0`` is zero. A leading ``-`` gives a negative duration, which callers
refuse where it means nothing; parsing it lets them say so instead of "invalid".
"""

from __future__ import annotations

import re
from datetime import timedelta

#: How to write a duration, for error messages.
DURATION_HINT = "use e.g. 48h, 30m, 2d"
#: A JSON Schema (ECMA 262) pattern for a non-negative duration; ``parse_duration`` accepts it.
DURATION_JSON_PATTERN = (
    r"^(0|(?=[0-9])([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?"
    r"|P(?=[0-9]|T[0-9])([0-9]+W)?([0-9]+D)?(T(?=[0-9])([0-9]+H)?([0-9]+M)?([0-9]+S)?)?)$"
)

_UNITS = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_COMPACT = re.compile(
    r"(?=[0-9])(?:(?P<w>[0-9]+)w)?(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?"
    r"(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?"
)
_ISO = re.compile(
    r"P(?=[0-9]|T[0-9])(?:(?P<w>[0-9]+)W)?(?:(?P<d>[0-9]+)D)?"
    r"(?:T(?=[0-9])(?:(?P<h>[0-9]+)H)?(?:(?P<m>[0-9]+)M)?(?:(?P<s>[0-9]+)S)?)?"
)
_ISO_CALENDAR = re.compile(r"P[^T]*[YM]")


class InvalidDurationError(ValueError):
    """A duration that does not parse (a ``ValueError``: the rule loader words it for its files).

    Parameters:
        text: the duration as written.
        reason: why, when more can be said than "invalid".
        suggestion: how to write it instead.
    """

    def __init__(
        self, text: str, reason: str | None = None, suggestion: str = DURATION_HINT
    ) -> None:
        self.text = text
        shown = text if len(text) <= 40 else text[:37] + "..."
        self.message = f"invalid duration {shown!r}" + (f": {reason}" if reason else "")
        self.suggestion = suggestion
        super().__init__(f"{self.message} ({suggestion})")


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as ``48h``, ``1d12h`` or ``PT48H`` into elapsed time.

    ``d`` is exactly 24 hours and ``w`` 7 days of elapsed time, so daylight-saving changes do
    not stretch or shrink a duration.

    Parameters:
        text: the duration; see the module docstring for the forms.

    Raises:
        InvalidDurationError: (a ``ValueError``) not one of the forms, or out of range.

    Returns:
        The duration; negative for a leading ``-``.
    """
    negative = text.startswith("-")
    body = text[1:] if negative else text
    if body == "0":
        return timedelta(0)
    match = _COMPACT.fullmatch(body) or _ISO.fullmatch(body)
    if match is None:
        if _ISO_CALENDAR.match(body):
            raise InvalidDurationError(
                text, "months and years have no fixed length", "use days, e.g. 30d or P30D"
            )
        raise InvalidDurationError(text)
    try:
        total = sum(
            (_UNITS[unit] * int(count) for unit, count in match.groupdict().items() if count),
            timedelta(0),
        )
    except (OverflowError, ValueError) as exc:
        raise InvalidDurationError(text, "too long") from exc
    return -total if negative else total


def format_duration(delta: timedelta) -> str:
    """Write a duration the way rule files do: ``2d``, ``36h`` as ``1d12h``, ``90s`` as ``1m30s``.

    Units go from days down to seconds (days are not folded into weeks: ``30d`` stays ``30d``);
    zero is ``0s``; sub-second parts are written as decimal seconds (``0.5s``), which
    :func:`parse_duration` does not read back.

    Parameters:
        delta: the duration.

    Returns:
        The text, with a leading ``-`` when negative.
    """
    if delta < timedelta(0):
        return "-" + format_duration(-delta)
    hours, rest = divmod(delta.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    units = ((delta.days, "d"), (hours, "h"), (minutes, "m"))
    text = "".join(f"{value}{unit}" for value, unit in units if value)
    if delta.microseconds:
        return text + f"{seconds}.{delta.microseconds:06d}".rstrip("0") + "s"
    if seconds or not text:
        text += f"{seconds}s"
    return text
