"""Durations: compact (48h, 1d12h) and ISO 8601 (PT48H) text <-> elapsed-time timedeltas."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from crm_notify.rules import InvalidDurationError, format_duration, parse_duration
from crm_notify.rules.durations import DURATION_JSON_PATTERN

VALID = [
    ("90s", timedelta(seconds=90)),
    ("30m", timedelta(minutes=30)),
    ("48h", timedelta(hours=48)),
    ("2d", timedelta(days=2)),
    ("1w", timedelta(weeks=1)),
    ("1d12h", timedelta(days=1, hours=12)),
    ("2h30m", timedelta(hours=2, minutes=30)),
    ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
    ("0h", timedelta(0)),
    ("0", timedelta(0)),
    ("PT48H", timedelta(hours=48)),
    ("P2D", timedelta(days=2)),
    ("P1W", timedelta(weeks=1)),
    ("P1DT12H", timedelta(days=1, hours=12)),
    ("PT30M", timedelta(minutes=30)),
    ("PT1H30M15S", timedelta(hours=1, minutes=30, seconds=15)),
]
INVALID = [
    "48 hours",
    "",
    "48",
    "h",
    "1.5h",
    "48H",
    "12h1d",
    "1h1h",
    " 48h",
    "-",
    "P",
    "PT",
    "P2DT",
    "P1.5D",
    "pt48h",
    "PT48h",
    "٤٨h",
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_parse_valid_forms(text: str, expected: timedelta) -> None:
    # Given a compact, combined or ISO 8601 duration; when parsed, then it is that elapsed time
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", INVALID)
def test_parse_rejects_other_text(text: str) -> None:
    # Given text that is not a duration; when parsed, then a ValueError says how to write one
    with pytest.raises(InvalidDurationError) as caught:
        parse_duration(text)
    assert isinstance(caught.value, ValueError)
    assert caught.value.message == f"invalid duration {text!r}"
    assert str(caught.value) == f"invalid duration {text!r} (use e.g. 48h, 30m, 2d)"


@pytest.mark.parametrize("text", ["P1M", "P1Y", "P1Y2M3D", "P1MT2H"])
def test_parse_rejects_months_and_years(text: str) -> None:
    # Given an ISO duration in calendar units; when parsed, then the error says why
    with pytest.raises(ValueError, match="months and years have no fixed length") as caught:
        parse_duration(text)
    assert isinstance(caught.value, InvalidDurationError)
    assert caught.value.suggestion == "use days, e.g. 30d or P30D"


def test_parse_negative_and_too_long() -> None:
    # Given a leading minus, then the duration is negative (callers refuse it where meaningless)
    assert parse_duration("-2d") == timedelta(days=-2)
    assert parse_duration("-PT1H") == timedelta(hours=-1)

    # Given a duration beyond what a timedelta holds, or a huge number, then it is refused
    with pytest.raises(InvalidDurationError, match="too long"):
        parse_duration("99999999999999w")
    with pytest.raises(InvalidDurationError, match=r"too long") as caught:
        parse_duration("9" * 5000 + "s")
    assert len(caught.value.message) < 100


def test_day_is_24_hours_of_elapsed_time() -> None:
    # Given "1d"; then it is exactly 24 hours, whatever the calendar does that day
    assert parse_duration("1d") == parse_duration("24h") == timedelta(seconds=86_400)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(days=2), "2d"),
        (timedelta(hours=48), "2d"),
        (timedelta(hours=36), "1d12h"),
        (timedelta(hours=5), "5h"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=30), "30d"),
        (timedelta(weeks=1), "7d"),
        (timedelta(days=1, seconds=1), "1d1s"),
        (timedelta(0), "0s"),
        (timedelta(hours=-2), "-2h"),
        (timedelta(seconds=1, microseconds=500_000), "1.5s"),
    ],
)
def test_format(delta: timedelta, text: str) -> None:
    # Given a duration; when formatted, then it is written in rule-file style
    assert format_duration(delta) == text


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_format_round_trips(text: str, expected: timedelta) -> None:
    # Given a parsed duration; when formatted and parsed again, then nothing changes
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_json_pattern_accepts_what_parses(text: str, expected: timedelta) -> None:
    # Given the schema's pattern (ECMA syntax that Python's re reads the same way)
    assert re.search(DURATION_JSON_PATTERN, text)


@pytest.mark.parametrize("text", [*INVALID, "-2d", "P1M"])
def test_json_pattern_rejects_what_does_not(text: str) -> None:
    assert not re.search(DURATION_JSON_PATTERN, text, flags=re.ASCII)
