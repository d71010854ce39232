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
    template: order_shipped        # required unless `steps`: folder name under templates/
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
    purpose: transactional         # required: transactional | marketing
    channel: email                 # optional, default email (only email for now)

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

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

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

from crm_notify.rules.durations import (
    DURATION_JSON_PATTERN,
    InvalidDurationError,
    format_duration,
    parse_duration,
)
from crm_notify.rules.triggers import CART_ACTIVITY_EVENTS, IdleTrigger, Trigger

if TYPE_CHECKING:
    from collections.abc import Mapping

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

_ZERO = timedelta(0)


class Purpose(StrEnum):
    """Why a message is sent; marketing mail needs consent, transactional mail does not."""

    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


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
            "oneOf": [{"required": ["template"]}, {"required": ["steps"]}],
            "dependentSchemas": {
                "steps": {"not": {"anyOf": [{"required": [key]} for key in SINGLE_STEP_KEYS]}}
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
    purpose: Purpose = Field(strict=False)
    channel: Literal["email"] = "email"


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
    becomes one step sent at once); ``template`` is always the first step's template.
    ``source_path`` and ``source_line`` locate it (the line of its ``name``) for messages.

    Raises:
        ValueError: neither ``template`` nor ``steps``, or a ``template`` that is not the first
            step's.
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
    purpose: Purpose
    channel: str = "email"
    source_path: Path = field(default_factory=Path)
    source_line: int = 0

    def __post_init__(self) -> None:
        if not self.steps:
            if not self.template:
                raise ValueError(f"rule {self.name!r} needs a template or steps")
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
