"""The rule-file format of a fetch step (an item of a rule's ``fetch:`` list).

::

    fetch:
      - name: recommendations          # required: the template variable it fills
        url: https://reco.example/v1/carts/{{ cart.cart_id }}/products?limit=3
                                       # required: https (http: loopback only); scheme and host
                                       #   static; {{ expression }} in the path and query only
                                       #   (each value percent-encoded); ${NAME} in the query only
        method: GET                    # optional: GET (default) | POST
        headers:                       # optional; values may hold ${NAME} (environment variables)
          Authorization: Bearer ${RECO_TOKEN}
        body: {cart: "{{ cart.cart_id }}"}   # POST only: a JSON body, templated as a webhook
                                       #   action's
        timeout: 2s                    # optional, default 2s, at most 10s
        cache: 1h                      # optional: keep a successful answer this long
        on_error: fallback             # optional: fallback (the default with `fallback`) |
                                       #   skip (the default without) | defer
        fallback: {products: []}       # the data used when the request fails (a mapping or list)
        retry_after: 15m               # on_error: defer only, and required there

What the values mean and how they are checked is in :mod:`crm_notify.rules._fetch`.

This module imports nothing from :mod:`crm_notify.rules` at import time: the rule model imports
it, so the duration helpers are looked up when a value is validated (or a schema built).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

#: What a fetch name must look like: a template variable (no ``-``).
FETCH_NAME_PATTERN = r"^[a-z_][a-z0-9_]*$"
#: Longest URL accepted.
MAX_URL_CHARS = 2048
#: How long a request may take when the rule does not say, and at most.
DEFAULT_TIMEOUT = timedelta(seconds=2)
MAX_TIMEOUT = timedelta(seconds=10)
#: Longest time an answer is cached.
MAX_CACHE = timedelta(days=30)
#: Longest wait before a deferred send tries the request again.
MAX_RETRY_AFTER = timedelta(days=7)


def _duration(value: Any) -> timedelta:
    """Pydantic before-validator: a duration as rule files write it (``2s``, ``PT2S``)."""
    from crm_notify.rules.model import duration_value  # see the module docstring

    return duration_value(value)


def _positive_at_most(most: timedelta) -> Any:
    """Pydantic after-validator: a duration more than zero, at most ``most``."""

    def check(value: timedelta) -> timedelta:
        from crm_notify.rules.durations import format_duration  # as above

        if value <= timedelta(0):
            raise PydanticCustomError(
                "duration_not_positive",
                "must be more than zero, got '{value}'",
                {"value": format_duration(value)},
            )
        if value > most:
            raise PydanticCustomError(
                "fetch_duration_too_long",
                "must be at most {most}, got '{value}'",
                {"most": format_duration(most), "value": format_duration(value)},
            )
        return value

    return check


class _DurationJsonSchema:
    """The JSON Schema of a positive duration, written as in the rest of the file."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        from crm_notify.rules.durations import DURATION_JSON_PATTERN  # see the module docstring

        return {
            "type": "string",
            "pattern": DURATION_JSON_PATTERN,
            "not": {"pattern": "^(0|P?T?(0+[WDHMSwdhms]T?)+)$"},
            "examples": ["2s", "15m", "1h"],
            "description": self.description,
        }


#: ``timeout``: more than zero, at most 10s.
_Timeout = Annotated[
    timedelta,
    BeforeValidator(_duration),
    AfterValidator(_positive_at_most(MAX_TIMEOUT)),
    _DurationJsonSchema("How long the request may take: 1s to 10s; default 2s"),
]
#: ``cache``: more than zero, at most 30d.
_Cache = Annotated[
    timedelta,
    BeforeValidator(_duration),
    AfterValidator(_positive_at_most(MAX_CACHE)),
    _DurationJsonSchema("Keep a successful answer this long (by request): 90s, 1h; at most 30d"),
]
#: ``retry_after``: more than zero, at most 7d.
_RetryAfter = Annotated[
    timedelta,
    BeforeValidator(_duration),
    AfterValidator(_positive_at_most(MAX_RETRY_AFTER)),
    _DurationJsonSchema("With on_error: defer, try again this much later: at most 7d"),
]


def _upper(value: Any) -> Any:
    """Pydantic before-validator: ``get`` is ``GET``."""
    return value.upper() if isinstance(value, str) else value


_FALLBACK_SCHEMA = {
    "type": ["object", "array"],
    "description": "The data the template gets when the request fails (on_error: fallback)",
}


class FetchStepSpec(BaseModel):
    """``fetch[i]``: an HTTP request whose JSON answer the rule's emails render with."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, title="FetchStep")

    name: Annotated[str, Field(pattern=FETCH_NAME_PATTERN, max_length=64)]
    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)]
    method: Annotated[Literal["GET", "POST"], BeforeValidator(_upper)] = "GET"
    headers: dict[str, str] | None = None
    body: Any = None
    timeout: _Timeout = Field(default=DEFAULT_TIMEOUT, json_schema_extra={"default": "2s"})
    cache: _Cache | None = None
    on_error: Literal["fallback", "skip", "defer"] | None = Field(
        default=None,
        description="On a timeout, an error status, or an answer that is not JSON: render with "
        "`fallback`, skip the email, or defer it by `retry_after`; default: fallback when "
        "`fallback` is given, else skip",
    )
    fallback: Annotated[Any, WithJsonSchema(_FALLBACK_SCHEMA)] = None
    retry_after: _RetryAfter | None = None
