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
it (its duration fields come from :mod:`crm_notify._spec_durations`).
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
    WithJsonSchema,
)

from crm_notify._spec_durations import (
    DurationJsonSchema,
    duration_field_value,
    positive_at_most,
)

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


#: ``timeout``: more than zero, at most 10s.
_Timeout = Annotated[
    timedelta,
    BeforeValidator(duration_field_value),
    AfterValidator(positive_at_most(MAX_TIMEOUT, code="fetch_duration_too_long")),
    DurationJsonSchema(
        "How long the request may take: 1s to 10s; default 2s", examples=("2s", "5s", "10s")
    ),
]
#: ``cache``: more than zero, at most 30d.
_Cache = Annotated[
    timedelta,
    BeforeValidator(duration_field_value),
    AfterValidator(positive_at_most(MAX_CACHE, code="fetch_duration_too_long")),
    DurationJsonSchema(
        "Keep a successful answer this long (by request): 90s, 1h; at most 30d",
        examples=("90s", "1h", "1d"),
    ),
]
#: ``retry_after``: more than zero, at most 7d.
_RetryAfter = Annotated[
    timedelta,
    BeforeValidator(duration_field_value),
    AfterValidator(positive_at_most(MAX_RETRY_AFTER, code="fetch_duration_too_long")),
    DurationJsonSchema(
        "With on_error: defer, try again this much later: at most 7d", examples=("15m", "1h", "1d")
    ),
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
