"""The rule file format (pydantic models, which also give its JSON Schema) and the loaded ``Rule``.

A file in ``rules/`` holds either one rule (a mapping with ``name``) or several (``rules:``, a
list of such mappings). Fields::

    name: order-shipped            # required, unique across all files, [a-z0-9][a-z0-9_-]*
    description: Tell the customer their parcel is on its way.   # optional
    enabled: true                  # optional, default true
    trigger:                       # required, exactly ONE of these keys:
      order_status: {to: shipped}            # derived: an order's status changed to (and optionally `from:`) given value(s); `to`/`from` take a string or a list
      # event: Order Completed               # a track event by name
      # identify: {first: true}              # an identify call; first: true = only when the contact is created
      # idle_for: {entity: cart, after: 48h} # the entity had no activity for `after` (> 0); entity: cart only; `activity:` optional event name(s) that count, default Product Added, Product Removed, Cart Viewed, Checkout Started
    when: "order.total > 0"        # optional condition expression, or a list of them (all must hold); variables: event, contact, order, cart
    template: order_shipped        # required unless `steps` or `actions`: folder name under templates/
    delay: 2h                      # optional, default 0: send this long after the trigger time (the event's timestamp; for idle_for, when the idle period ends)
    not_before: 1h                 # optional send window, from the trigger time: not sent earlier than this
    not_after: 24h                 # optional: not sent at all later than this; must be more than `delay`, and not less than `not_before`
    # steps:                       # instead of template/delay/not_before/not_after: messages sent in order
    #   - name: first              #   optional, default step-1, step-2...; unique within the rule, like a rule name
    #     delay: 0h                #   required, from the trigger time (not the previous step); never less than the previous step's
    #     template: abandoned_cart #   required
    #     when: cart.total > 20    #   optional expression or list: this step is skipped (the next ones still run) unless all hold
    #     not_before: 1h           #   optional send window, as above
    #     not_after: 24h           #   optional, as above
    exit_when: "cart.status != 'open'"   # optional expression or list, same variables as `when`; checked before EVERY step: if ANY holds, the sequence stops
    cancel_on: [Order Completed]   # optional track event name(s) that cancel this rule's pending steps for the same entity (the cart or order id in the event), or the same contact when the rule has no entity
    dedupe_window: 30d             # optional, default 30d; order_status triggers: fires at most once per order and `to` status within it (a status flapping back and forth does not re-send); other triggers ignore it
    purpose: transactional         # required: transactional, marketing, or a purpose configured in CRM_NOTIFY_PURPOSES; every purpose but transactional needs consent
    channel: email                 # optional, default email (only email for now)
    limit: {count: 1, per: 7d}     # optional: at most `count` sends of this rule per contact per `per` (> 0); shorthand "1/7d"
    over_limit: drop               # optional, default drop: over a cap (this rule's limit or CRM_NOTIFY_MARKETING_LIMIT): drop (recorded) | defer (until the window allows) | digest (merged into one later message)
    digest_template: weekly_digest # required with over_limit: digest, else not allowed: folder under templates/ of the digest message
    quiet_hours: true              # optional: true (the configured CRM_NOTIFY_QUIET_HOURS) | false | {start: "21:00", end: "08:00"} (or "21:00-08:00"), in the contact's time zone; default: on for every purpose but transactional
    dedupe_key: "{{ order.order_id }}"   # optional template (or bare expression), same variables as `when`: one notification per rule, contact and key; an empty or undefined key does not dedupe
    actions:                       # optional (not with `steps`): HTTP requests sent with (or, without `template`, instead of) the email; see crm_notify.actions.spec
      - type: webhook
        url: https://api.sms.example/v1/messages
        headers: {Authorization: "Bearer ${SMS_API_TOKEN}"}
        body: {to: "{{ contact.traits.phone }}", text: "Your order {{ order.order_id }} is on its way"}
    fetch:                         # optional: HTTP requests made before each email of the rule is rendered, their JSON answers template variables; see crm_notify.fetch.spec
      - name: recommendations
        url: https://reco.example/v1/carts/{{ cart.cart_id }}/products?limit=3
        timeout: 2s                # default 2s, at most 10s; cache: 1h optional
        fallback: {products: []}   # on_error: fallback (default with fallback) | skip | defer (with retry_after)
    gate:                          # optional: hold the sends until an outside system approves, rejects or enriches them; see crm_notify.gates.spec
      url: https://loyalty.example/crm-gate
      auth: {header: X-Gate-Token, token: "${GATE_TOKEN}"}
      timeout: 1h                  # default 1h, at most 7d; on_timeout: release (default) | drop
                                   # merged over the project's gate (_project.yaml); gate: false = none

Files are read as YAML 1.2: ``on``, ``yes`` and ``NO`` are strings, only ``true``/``false`` are
booleans. Values are not coerced: ``enabled: "yes"`` or ``event: 42`` is an error (quote it).
Unknown keys are errors. ``template`` is a single folder name (letters, digits, ``_``, ``-``).

Durations (``after``, ``delay``, ``not_before``, ``not_after``, ``dedupe_window``) are strings:
``90s``, ``30m``, ``48h``, ``2d``, ``1w``, combinations largest unit first (``1d12h``), or ISO 8601
(``PT48H``, ``P2D``); ``0`` is zero. They are elapsed time: ``1d`` is always 24 hours, so a
daylight-saving change does not stretch or shrink it (see :mod:`crm_notify.rules.durations`).
None may be negative; ``after``, ``not_after`` and ``dedupe_window`` must be more than zero.
"""  # noqa: E501

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from jinja2 import Template, UndefinedError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from crm_notify.actions.spec import WebhookActionSpec
from crm_notify.errors import ConditionError, RenderError
from crm_notify.fetch.spec import FetchStepSpec
from crm_notify.gates.spec import RuleGateField
from crm_notify.rules.durations import (
    DURATION_JSON_PATTERN,
    InvalidDurationError,
    format_duration,
    parse_duration,
)
from crm_notify.rules.triggers import CART_ACTIVITY_EVENTS, IdleTrigger, Trigger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crm_notify.actions.model import WebhookAction
    from crm_notify.fetch.model import FetchStep
    from crm_notify.gates.model import GateConfig
    from crm_notify.render.sandbox import BoundedSandboxEnvironment
    from crm_notify.rules.conditions import Condition

#: What a rule name must look like.
RULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
#: What a template (folder under ``templates/``) name must look like.
TEMPLATE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
#: The keys of ``trigger:``, of which a rule has exactly one.
TRIGGER_KEYS = ("order_status", "event", "identify", "idle_for")
#: The rule-level keys that describe a single message, which ``steps:`` replaces.
SINGLE_STEP_KEYS = ("template", "delay", "not_before", "not_after")
#: How long an ``order_status`` rule stays quiet for an order and status it has fired for.
DEFAULT_DEDUPE_WINDOW = timedelta(days=30)
#: What a purpose name must look like (as ``CRM_NOTIFY_PURPOSES`` requires).
PURPOSE_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
#: The purposes rules may name when no others are configured.
BUILTIN_PURPOSES = ("transactional", "marketing")
#: Longest rendered ``dedupe_key``.
MAX_DEDUPE_KEY_CHARS = 255

_ZERO = timedelta(0)


class Purpose(StrEnum):
    """Why a message is sent; marketing mail needs consent, transactional mail does not."""

    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


class OverLimit(StrEnum):
    """What happens to a send over a rate limit: dropped (and recorded), deferred until the
    window allows it, or merged into one later digest message."""

    DROP = "drop"
    DEFER = "defer"
    DIGEST = "digest"


_LIMIT_TEXT = re.compile(r"\s*(?P<count>[^/\s]*)\s*/\s*(?P<per>\S*)\s*")
_CLOCK = re.compile(r"(?P<hour>[01]?[0-9]|2[0-3]):(?P<minute>[0-5][0-9])")
_WORDS = (
    (timedelta(days=1), "day"),
    (timedelta(hours=1), "hour"),
    (timedelta(minutes=1), "minute"),
    (timedelta(seconds=1), "second"),
)


class InvalidLimitError(ValueError):
    """A limit that does not parse; ``reason`` says why, without repeating the text."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"invalid limit {text!r}: {reason}")


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` sends per ``per`` of elapsed time (a sliding window)."""

    count: int
    per: timedelta

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a limit's count must be at least 1, got {self.count}")
        if self.per <= _ZERO:
            raise ValueError(f"a limit's window must be more than zero, got {self.per}")

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.per)}"

    def describe(self) -> str:
        """The limit in words: ``1 per 7 days``, ``3 per day``, ``2 per 1d12h``."""
        return f"{self.count} per {readable_duration(self.per).removeprefix('1 ')}"


def readable_duration(delta: timedelta) -> str:
    """Write a duration in words when it is a whole number of one unit (``7 days``,
    ``1 day``, ``36 hours``), else as rule files do (``1d12h``)."""
    for unit, word in _WORDS:
        if delta >= unit and delta % unit == _ZERO:
            count = delta // unit
            return f"{count} {word}" + ("" if count == 1 else "s")
    return format_duration(delta)


def parse_limit(text: str) -> Limit:
    """Parse ``COUNT/DURATION`` (``1/7d``, ``3/24h``) into a :class:`Limit`.

    Raises:
        InvalidLimitError: (a ``ValueError``) not of that form, a count below 1, or a duration
            that does not parse or is not more than zero.

    Returns:
        The limit.
    """
    match = _LIMIT_TEXT.fullmatch(text)
    if match is None:
        raise InvalidLimitError(text, "write COUNT/DURATION, e.g. 1/7d or 3/24h")
    count, per = match["count"], match["per"]
    if not count.isdigit() or not count.isascii() or int(count) < 1 or len(count) > 9:
        raise InvalidLimitError(text, f"the count should be a whole number from 1, got {count!r}")
    try:
        window = parse_duration(per)
    except InvalidDurationError as exc:
        raise InvalidLimitError(text, f"{exc.message} ({exc.suggestion})") from exc
    if window <= _ZERO:
        raise InvalidLimitError(text, f"the duration must be more than zero, got {per!r}")
    return Limit(int(count), window)


@dataclass(frozen=True, slots=True)
class QuietWindow:
    """A daily quiet window in local time; it wraps midnight when ``end`` is before ``start``
    (``21:00-08:00``). ``start`` is inside it, ``end`` is not.

    Raises:
        ValueError: ``start`` equals ``end``, or a time has a zone or seconds.
    """

    start: time
    end: time

    def __post_init__(self) -> None:
        for value in (self.start, self.end):
            if value.tzinfo is not None or value.second or value.microsecond:
                raise ValueError(f"quiet hours are whole minutes of local time, got {value}")
        if self.start == self.end:
            raise ValueError(f"quiet hours start and end at the same time ({self.start:%H:%M})")

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, clock: time) -> bool:
        """Whether the local wall-clock time ``clock`` is inside the window."""
        clock = clock.replace(tzinfo=None, fold=0)
        if self.start < self.end:
            return self.start <= clock < self.end
        return clock >= self.start or clock < self.end


def parse_clock(text: str) -> time:
    """Parse a wall-clock time ``HH:MM`` (``8:00`` too), 00:00 to 23:59.

    Raises:
        ValueError: anything else.
    """
    match = _CLOCK.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid time {text!r}: use HH:MM from 00:00 to 23:59, e.g. 21:00")
    return time(int(match["hour"]), int(match["minute"]))


def parse_quiet_hours(text: str) -> QuietWindow | None:
    """Parse ``HH:MM-HH:MM`` (``21:00-08:00``) into a window; empty text means none.

    Raises:
        ValueError: not of that form, or start equals end.

    Returns:
        The window, or ``None`` for empty text.
    """
    if not text.strip():
        return None
    start, dash, end = text.partition("-")
    if not dash:
        raise ValueError(f"invalid quiet hours {text!r}: use HH:MM-HH:MM, e.g. 21:00-08:00")
    return QuietWindow(parse_clock(start), parse_clock(end))


class DedupeKey:
    """A rule's compiled ``dedupe_key``; built by the loader.

    Parameters:
        source: the key as written, e.g. ``"{{ order.order_id }}"``.
        template: the sandbox's compiled template.
        environment: the sandbox that compiled it (its bounds apply).
        path: the rule file, for error messages.
        line: the line of the key in that file.
    """

    __slots__ = ("_environment", "_template", "line", "path", "source")

    def __init__(
        self,
        source: str,
        template: Template,
        environment: BoundedSandboxEnvironment,
        *,
        path: Path,
        line: int | None,
    ) -> None:
        self.source = source
        self._template = template
        self._environment = environment
        self.path = path
        self.line = line

    def __repr__(self) -> str:
        return f"DedupeKey({self.source!r})"

    def render(self, context: Mapping[str, Any]) -> str | None:
        """Render the key with ``context``, stripped of surrounding white space.

        Parameters:
            context: the variables ``event``, ``contact``, ``order``, ``cart``.

        Raises:
            ConditionError: rendering failed (other than an undefined value), or the key is
                longer than :data:`MAX_DEDUPE_KEY_CHARS`.

        Returns:
            The key; ``None`` when it is empty or reads an undefined value (no dedupe then).
        """
        location = f"{self.path}:{self.line}" if self.line else str(self.path)
        try:
            text = self._environment.render(self._template, context).strip()
        except RenderError as exc:
            if isinstance(exc.__cause__, UndefinedError):
                return None
            raise ConditionError(
                f"{location}: dedupe_key {self.source[:80]!r} failed: {exc}"
            ) from exc
        if len(text) > MAX_DEDUPE_KEY_CHARS:
            raise ConditionError(
                f"{location}: dedupe_key {self.source[:80]!r} is {len(text)} characters long; "
                f"the limit is {MAX_DEDUPE_KEY_CHARS}"
            )
        return text or None


def _one_or_many(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    raise PydanticCustomError("string_or_list", "must be a string or a list of strings")


def duration_value(value: Any) -> timedelta:
    """Pydantic before-validator: a duration as rule files write it (``48h``, ``PT48H``, ``0``)."""
    if isinstance(value, timedelta):
        return value
    if type(value) is int and value == 0:
        return _ZERO
    if not isinstance(value, str):
        raise PydanticCustomError("duration_type", "should be a duration such as 48h, 30m or 2d")
    try:
        return parse_duration(value)
    except InvalidDurationError as exc:
        raise PydanticCustomError(
            "duration_parsing", "{message}", {"message": exc.message, "hint": exc.suggestion}
        ) from exc


def not_negative(value: timedelta) -> timedelta:
    """Pydantic after-validator: refuse a negative duration."""
    if value < _ZERO:
        raise PydanticCustomError(
            "duration_negative",
            "must not be negative, got '{value}'",
            {"value": format_duration(value)},
        )
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= _ZERO:
        raise PydanticCustomError(
            "duration_not_positive",
            "must be more than zero, got '{value}'",
            {"value": format_duration(value)},
        )
    return value


_NonEmptyStr = Annotated[str, Field(min_length=1)]
_STRING_OR_LIST_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    ]
}
#: A string or a non-empty list of strings; validated to a list.
_StringOrList = Annotated[
    list[_NonEmptyStr],
    Field(min_length=1),
    BeforeValidator(_one_or_many),
    WithJsonSchema(_STRING_OR_LIST_SCHEMA),
]
_DURATION_DESCRIPTION = (
    "Elapsed time: 90s, 30m, 48h, 2d, 1w, combinations such as 1d12h, or ISO 8601 (PT48H, P2D)"
)
_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": DURATION_JSON_PATTERN, "examples": ["48h", "2d", "1d12h"]},
        {"const": 0},
    ],
    "description": _DURATION_DESCRIPTION,
}
_POSITIVE_DURATION_SCHEMA = {
    "type": "string",
    "pattern": DURATION_JSON_PATTERN,
    "not": {"pattern": "^(0|P?T?(0+[WDHMSwdhms]T?)+)$"},
    "examples": ["48h", "2d", "1d12h"],
    "description": _DURATION_DESCRIPTION + "; more than zero",
}
#: A duration of zero or more (``0`` allowed); validated to a ``timedelta``.
_Duration = Annotated[
    timedelta,
    BeforeValidator(duration_value),
    AfterValidator(not_negative),
    WithJsonSchema(_DURATION_SCHEMA),
]
#: A duration of more than zero; validated to a ``timedelta``.
_PositiveDuration = Annotated[
    timedelta,
    BeforeValidator(duration_value),
    AfterValidator(_positive),
    WithJsonSchema(_POSITIVE_DURATION_SCHEMA),
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LimitSpec(_Spec):
    """``limit``: at most ``count`` sends of the rule per contact per ``per``."""

    model_config = ConfigDict(title="Limit")

    count: Annotated[int, Field(ge=1, le=1_000_000)]
    per: _PositiveDuration


def _limit_value(value: Any) -> Any:
    """Pydantic before-validator: the ``"1/7d"`` shorthand of ``{count: 1, per: 7d}``."""
    if not isinstance(value, str):
        return value
    try:
        limit = parse_limit(value)
    except InvalidLimitError as exc:
        raise PydanticCustomError(
            "limit_parsing", "is not valid: {reason}", {"reason": exc.reason}
        ) from exc
    return {"count": limit.count, "per": limit.per}


def _quiet_hours_value(value: Any) -> bool | QuietWindow:
    """Pydantic before-validator: ``true``, ``false``, ``{start: "21:00", end: "08:00"}`` or
    ``"21:00-08:00"``."""
    if isinstance(value, bool | QuietWindow):
        return value
    try:
        if isinstance(value, str):
            window = parse_quiet_hours(value)
            if window is not None:
                return window
        elif isinstance(value, dict) and set(value) == {"start", "end"}:
            start, end = value["start"], value["end"]
            if isinstance(start, str) and isinstance(end, str):
                return QuietWindow(parse_clock(start), parse_clock(end))
    except ValueError as exc:
        raise PydanticCustomError(
            "quiet_hours", "is not valid: {reason}", {"reason": str(exc)}
        ) from exc
    raise PydanticCustomError(
        "quiet_hours_type",
        'should be true, false or {start: "21:00", end: "08:00"} (quoted HH:MM times)',
    )


_LIMIT_SCHEMA = {
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^\s*[0-9]+\s*/\s*\S+\s*$",
            "examples": ["1/7d", "3/24h"],
            "description": "COUNT/DURATION",
        },
        {
            "type": "object",
            "properties": {
                "count": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                "per": _POSITIVE_DURATION_SCHEMA,
            },
            "required": ["count", "per"],
            "additionalProperties": False,
        },
    ],
    "description": "At most `count` sends of this rule per contact per `per` (a sliding window)",
}
_CLOCK_SCHEMA = {"type": "string", "pattern": r"^([01]?[0-9]|2[0-3]):[0-5][0-9]$"}
_QUIET_HOURS_SCHEMA = {
    "anyOf": [
        {"type": "boolean"},
        {
            "type": "object",
            "properties": {"start": _CLOCK_SCHEMA, "end": _CLOCK_SCHEMA},
            "required": ["start", "end"],
            "additionalProperties": False,
        },
        {
            "type": "string",
            "pattern": r"^([01]?[0-9]|2[0-3]):[0-5][0-9]-([01]?[0-9]|2[0-3]):[0-5][0-9]$",
        },
    ],
    "description": "Defer sends inside these local hours of the contact: true (the configured "
    "window), false, or a window; default: on for every purpose but transactional",
}
_PURPOSE_SCHEMA = {
    "type": "string",
    "pattern": PURPOSE_NAME_PATTERN,
    "examples": list(BUILTIN_PURPOSES),
    "description": "transactional, marketing, or a purpose configured in CRM_NOTIFY_PURPOSES",
}
#: ``limit``: a mapping or the ``COUNT/DURATION`` shorthand; validated to a ``LimitSpec``.
_LimitField = Annotated[LimitSpec, BeforeValidator(_limit_value), WithJsonSchema(_LIMIT_SCHEMA)]
#: ``quiet_hours``: validated to ``True``, ``False`` or a ``QuietWindow``.
_QuietHours = Annotated[
    bool | QuietWindow,
    BeforeValidator(_quiet_hours_value),
    WithJsonSchema(_QUIET_HOURS_SCHEMA),
]


class OrderStatusSpec(_Spec):
    """``trigger.order_status``: the status moved to ``to`` (from ``from``, when given)."""

    to: _StringOrList
    from_: _StringOrList | None = Field(default=None, alias="from")

    @model_validator(mode="after")
    def _disjoint(self) -> OrderStatusSpec:
        shared = sorted(set(self.to) & set(self.from_ or ()))
        if shared:
            raise PydanticCustomError(
                "status_overlap",
                "'to' and 'from' share {shared}: a status change never keeps the same status",
                {"shared": ", ".join(repr(status) for status in shared)},
            )
        return self


class IdentifySpec(_Spec):
    """``trigger.identify``: ``first: true`` fires only for the call that created the contact."""

    first: bool = False


class IdleForSpec(_Spec):
    """``trigger.idle_for``: the ``entity`` had none of the ``activity`` events for ``after``."""

    entity: Literal["cart"]
    after: _PositiveDuration
    activity: _StringOrList | None = Field(
        default=None, json_schema_extra={"default": [*sorted(CART_ACTIVITY_EVENTS)]}
    )


class TriggerSpec(_Spec):
    """``trigger``: exactly one of ``order_status``, ``event``, ``identify``, ``idle_for``."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    order_status: OrderStatusSpec | None = None
    event: _NonEmptyStr | None = None
    identify: IdentifySpec | None = None
    idle_for: IdleForSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TriggerSpec:
        present = [key for key in TRIGGER_KEYS if getattr(self, key) is not None]
        if len(present) != 1:
            raise PydanticCustomError(
                "trigger_count",
                "needs exactly one of {keys} (found {found})",
                {
                    "keys": ", ".join(repr(key) for key in TRIGGER_KEYS),
                    "found": ", ".join(repr(key) for key in present) or "none",
                },
            )
        return self


class StepSpec(_Spec):
    """One message of ``steps:``; ``delay`` and the window count from the trigger time."""

    model_config = ConfigDict(title="Step")

    name: Annotated[str, Field(pattern=RULE_NAME_PATTERN)] | None = None
    delay: _Duration
    template: Annotated[str, Field(pattern=TEMPLATE_NAME_PATTERN)]
    when: _StringOrList | None = None
    not_before: _Duration | None = None
    not_after: _PositiveDuration | None = None


class RuleSpec(_Spec):
    """One rule as written in a file."""

    model_config = ConfigDict(
        title="Rule",
        json_schema_extra={
            "anyOf": [
                {"required": ["template"]},
                {"required": ["steps"]},
                {"required": ["actions"]},
            ],
            "dependentSchemas": {
                "steps": {"not": {"anyOf": [{"required": [key]} for key in SINGLE_STEP_KEYS]}},
                "actions": {"not": {"required": ["steps"]}},
            },
        },
    )

    name: Annotated[str, Field(pattern=RULE_NAME_PATTERN)]
    description: str | None = None
    enabled: bool = True
    trigger: TriggerSpec
    when: _StringOrList | None = None
    template: Annotated[str, Field(pattern=TEMPLATE_NAME_PATTERN)] | None = None
    delay: _Duration | None = None
    not_before: _Duration | None = None
    not_after: _PositiveDuration | None = None
    steps: Annotated[list[StepSpec], Field(min_length=1)] | None = None
    exit_when: _StringOrList | None = None
    cancel_on: _StringOrList | None = None
    dedupe_window: _PositiveDuration = Field(
        default=DEFAULT_DEDUPE_WINDOW, json_schema_extra={"default": "30d"}
    )
    purpose: Annotated[str, WithJsonSchema(_PURPOSE_SCHEMA)]
    channel: Literal["email"] = "email"
    limit: _LimitField | None = None
    over_limit: OverLimit = Field(default=OverLimit.DROP, strict=False)
    digest_template: Annotated[str, Field(pattern=TEMPLATE_NAME_PATTERN)] | None = None
    quiet_hours: _QuietHours | None = None
    dedupe_key: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    actions: Annotated[list[WebhookActionSpec], Field(min_length=1)] | None = None
    fetch: Annotated[list[FetchStepSpec], Field(min_length=1)] | None = None
    gate: RuleGateField = None


class RulesFileSpec(_Spec):
    """A file holding several rules under ``rules:``."""

    model_config = ConfigDict(title="Rules")

    rules: Annotated[list[RuleSpec], Field(min_length=1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One message of a loaded rule: sent ``delay`` after the trigger time.

    ``not_before``/``not_after`` bound when it may go out, also from the trigger time; its
    ``conditions`` (the step's ``when``) must hold as well as the rule's.
    """

    index: int
    name: str
    delay: timedelta = _ZERO
    template: str
    conditions: tuple[Condition, ...] = ()
    not_before: timedelta | None = None
    not_after: timedelta | None = None

    def conditions_hold(self, context: Mapping[str, Any]) -> bool:
        """Return whether every condition of this step holds (the rule's are not included).

        Parameters:
            context: the variables ``event``, ``contact``, ``order``, ``cart``.

        Raises:
            ConditionError: a condition failed to evaluate.

        Returns:
            ``True`` when all hold, or there are none.
        """
        return all(condition.evaluate(context) for condition in self.conditions)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A loaded rule, its conditions compiled.

    A rule always has at least one step. Give either ``steps`` or only ``template`` (which
    becomes one step sent at once); ``template`` is always the first step's template. A rule
    with ``actions`` sends them with its single step; without a ``template`` it sends no email
    (its one step's template is then ``""``). A rule with a ``gate`` has its sends held until
    an outside system approves them (:mod:`crm_notify.gates`). Its ``fetch`` steps run before
    each of its step emails is rendered (:mod:`crm_notify.fetch`).
    ``source_path`` and ``source_line`` locate it (the line of its ``name``) for messages.
    ``quiet_hours`` ``None`` means the default: on (the configured window) for every purpose
    but ``transactional``.

    Raises:
        ValueError: neither ``template`` nor ``steps`` nor ``actions``, a ``template`` that is
            not the first step's, or ``actions`` with several steps.
    """

    name: str
    description: str | None = None
    enabled: bool = True
    trigger: Trigger
    conditions: tuple[Condition, ...] = ()
    template: str = ""
    steps: tuple[Step, ...] = ()
    exit_conditions: tuple[Condition, ...] = ()
    cancel_on: frozenset[str] = frozenset()
    dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW
    purpose: str
    channel: str = "email"
    limit: Limit | None = None
    over_limit: OverLimit = OverLimit.DROP
    digest_template: str | None = None
    quiet_hours: bool | QuietWindow | None = None
    dedupe_key: DedupeKey | None = None
    actions: tuple[WebhookAction, ...] = ()
    fetch: tuple[FetchStep, ...] = ()
    gate: GateConfig | None = None
    source_path: Path = field(default_factory=Path)
    source_line: int = 0

    def __post_init__(self) -> None:
        if self.actions and len(self.steps) > 1:
            raise ValueError(f"rule {self.name!r}: actions go with single-message rules only")
        if not self.steps:
            if not self.template and not self.actions:
                raise ValueError(f"rule {self.name!r} needs a template or steps (or actions)")
            object.__setattr__(
                self, "steps", (Step(index=0, name="step-1", template=self.template),)
            )
        elif not self.template:
            object.__setattr__(self, "template", self.steps[0].template)
        elif self.template != self.steps[0].template:
            raise ValueError(
                f"rule {self.name!r}: template {self.template!r} is not the first step's "
                f"({self.steps[0].template!r})"
            )

    @property
    def sends_email(self) -> bool:
        """Whether a firing sends an email (a rule with only ``actions`` does not)."""
        return bool(self.template)

    @property
    def is_timed(self) -> bool:
        """Whether the rule sends later than its trigger: ``idle_for``, or a step waits."""
        return isinstance(self.trigger, IdleTrigger) or any(
            step.delay > _ZERO or step.not_before is not None for step in self.steps
        )

    def conditions_hold(self, context: Mapping[str, Any]) -> bool:
        """Return whether every condition holds (stopping at the first that does not).

        Parameters:
            context: the variables ``event``, ``contact``, ``order``, ``cart``.

        Raises:
            ConditionError: a condition failed to evaluate.

        Returns:
            ``True`` when all hold, or there are none.
        """
        return all(condition.evaluate(context) for condition in self.conditions)

    def should_exit(self, context: Mapping[str, Any]) -> bool:
        """Return whether any ``exit_when`` condition holds, so the sequence stops.

        Parameters:
            context: the variables ``event``, ``contact``, ``order``, ``cart``.

        Raises:
            ConditionError: a condition failed to evaluate.

        Returns:
            ``True`` when one holds; ``False`` when none does, or there are none.
        """
        return any(condition.evaluate(context) for condition in self.exit_conditions)
