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
    when: "order.total > 0"        # optional condition expression, or a list of them (all must hold); variables: event, contact, order, cart
    template: order_shipped        # required: folder name under templates/
    purpose: transactional         # required: transactional | marketing
    channel: email                 # optional, default email (only email for now)

Files are read as YAML 1.2: ``on``, ``yes`` and ``NO`` are strings, only ``true``/``false`` are
booleans. Values are not coerced: ``enabled: "yes"`` or ``event: 42`` is an error (quote it).
Unknown keys are errors. ``template`` is a single folder name (letters, digits, ``_``, ``-``).
"""  # noqa: E501

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from crm_notify.rules.triggers import Trigger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crm_notify.rules.conditions import Condition

#: What a rule name must look like.
RULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
#: What a template (folder under ``templates/``) name must look like.
TEMPLATE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
#: The keys of ``trigger:``, of which a rule has exactly one.
TRIGGER_KEYS = ("order_status", "event", "identify")


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


class TriggerSpec(_Spec):
    """``trigger``: exactly one of ``order_status``, ``event``, ``identify``."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    order_status: OrderStatusSpec | None = None
    event: _NonEmptyStr | None = None
    identify: IdentifySpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TriggerSpec:
        present = [key for key in TRIGGER_KEYS if getattr(self, key) is not None]
        if len(present) != 1:
            raise PydanticCustomError(
                "trigger_count",
                "needs exactly one of 'order_status', 'event', 'identify' (found {found})",
                {"found": ", ".join(repr(key) for key in present) or "none"},
            )
        return self


class RuleSpec(_Spec):
    """One rule as written in a file."""

    model_config = ConfigDict(title="Rule")

    name: Annotated[str, Field(pattern=RULE_NAME_PATTERN)]
    description: str | None = None
    enabled: bool = True
    trigger: TriggerSpec
    when: _StringOrList | None = None
    template: Annotated[str, Field(pattern=TEMPLATE_NAME_PATTERN)]
    purpose: Purpose = Field(strict=False)
    channel: Literal["email"] = "email"


class RulesFileSpec(_Spec):
    """A file holding several rules under ``rules:``."""

    model_config = ConfigDict(title="Rules")

    rules: Annotated[list[RuleSpec], Field(min_length=1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A loaded rule, its conditions compiled.

    ``source_path`` and ``source_line`` locate it (the line of its ``name``) for messages.
    """

    name: str
    description: str | None = None
    enabled: bool = True
    trigger: Trigger
    conditions: tuple[Condition, ...] = ()
    template: str
    purpose: Purpose
    channel: str = "email"
    source_path: Path = field(default_factory=Path)
    source_line: int = 0

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
