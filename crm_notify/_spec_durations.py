"""Duration fields of the rule-file spec models of other packages (a send gate's ``timeout``,
a fetch step's ``timeout``/``cache``/``retry_after``): parsing, a positive upper bound, and
their JSON Schema.

Imports nothing from :mod:`crm_notify.rules` at import time (the rule model imports the
modules that use this one), so the duration helpers are looked up when a value is validated or
a schema built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError


def duration_field_value(value: Any) -> timedelta:
    """Pydantic before-validator: a duration as rule files write it (``1h``, ``PT1H``)."""
    from crm_notify.rules.model import duration_value  # see the module docstring

    return duration_value(value)


def positive_at_most(most: timedelta, *, code: str) -> Callable[[timedelta], timedelta]:
    """Pydantic after-validator: a duration more than zero, at most ``most`` (``code``: the
    error type of a longer one, e.g. ``gate_duration_too_long``)."""

    def check(value: timedelta) -> timedelta:
        from crm_notify.rules.durations import format_duration  # see the module docstring

        if value <= timedelta(0):
            raise PydanticCustomError(
                "duration_not_positive",
                "must be more than zero, got '{value}'",
                {"value": format_duration(value)},
            )
        if value > most:
            raise PydanticCustomError(
                code,
                "must be at most {most}, got '{value}'",
                {"most": format_duration(most), "value": format_duration(value)},
            )
        return value

    return check


class DurationJsonSchema:
    """The JSON Schema of a positive duration, written as in the rest of the file."""

    def __init__(self, description: str, *, examples: Sequence[str] = ("1h", "30m", "1d")) -> None:
        self.description = description
        self.examples = list(examples)

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        from crm_notify.rules.durations import DURATION_JSON_PATTERN  # see the module docstring

        return {
            "type": "string",
            "pattern": DURATION_JSON_PATTERN,
            "not": {"pattern": "^(0|P?T?(0+[WDHMSwdhms]T?)+)$"},
            "examples": self.examples,
            "description": self.description,
        }
