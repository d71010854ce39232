"""The rule test file format as pydantic models (see :mod:`crm_notify.rules.testing`).

Validation errors are mapped onto lines by the rule loader's helper, so a test file's
problems read like a rule file's: ``rules/x.test.yaml:12: unknown key 'tracks'``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    model_validator,
)
from pydantic_core import PydanticCustomError

from crm_notify.rules.model import (
    RULE_NAME_PATTERN,
    TEMPLATE_NAME_PATTERN,
    Purpose,
    duration_value,
    not_negative,
)

#: The ``userId`` of a case's contact, and of its events, when the file names none.
DEFAULT_USER_ID = "test-user"
#: The keys of an event, of which it has exactly one.
EVENT_KINDS = ("track", "identify", "call")


def _moment(value: Any) -> datetime:
    """An ISO 8601 date-time (YAML timestamps arrive as text); naive values are UTC."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError(
            "datetime_type", "should be a date-time such as 2026-03-27T12:00:00Z"
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PydanticCustomError(
            "datetime_parsing",
            "should be a date-time such as 2026-03-27T12:00:00Z, got '{value}'",
            {"value": value},
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


#: A duration of zero or more from the start of the case.
_Offset = Annotated[timedelta, BeforeValidator(duration_value), AfterValidator(not_negative)]
#: A duration from the start of the case that may be negative (an event dated before it).
_SignedOffset = Annotated[timedelta, BeforeValidator(duration_value)]
_NonEmptyStr = Annotated[str, Field(min_length=1)]
_RuleName = Annotated[str, Field(pattern=RULE_NAME_PATTERN)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ContactSpec(_Spec):
    """``contact``: identified at the start of the case, before its events."""

    user_id: _NonEmptyStr = DEFAULT_USER_ID
    email: str | None = None
    traits: dict[str, Any] = Field(default_factory=dict)
    consent: list[Annotated[Purpose, Strict(False)]] = Field(default_factory=list)


class EventSpec(_Spec):
    """One Segment call of ``events``, arriving ``at`` after the start."""

    at: _Offset
    track: _NonEmptyStr | None = None
    properties: dict[str, Any] | None = None
    identify: dict[str, Any] | None = None
    call: dict[str, Any] | None = None
    user_id: _NonEmptyStr | None = None
    timestamp: _SignedOffset | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> EventSpec:
        present = [kind for kind in EVENT_KINDS if getattr(self, kind) is not None]
        if len(present) != 1:
            raise PydanticCustomError(
                "event_kind",
                "needs exactly one of {keys} (found {found})",
                {
                    "keys": ", ".join(repr(kind) for kind in EVENT_KINDS),
                    "found": ", ".join(repr(kind) for kind in present) or "none",
                },
            )
        if self.properties is not None and self.track is None:
            raise PydanticCustomError(
                "event_properties", "'properties' goes with 'track' (a call has its own)"
            )
        return self


class ExpectSpec(_Spec):
    """One notification of ``expect``."""

    rule: _RuleName | None = None
    template: Annotated[str, Field(pattern=TEMPLATE_NAME_PATTERN)]
    at: _Offset | None = None


class GateAnswerSpec(_Spec):
    """``gate``: how the integration answers the case's gates (gated rules only).

    ``release`` (the default): it finishes each gate ``after`` it opened, releasing its items;
    ``reject``: it rejects every item then (with ``reason``), and the rule's ``on_rejected``
    follows; ``none``: it never answers, and the gate's timeout decides.
    """

    answer: Literal["release", "reject", "none"] = "release"
    after: _Offset = timedelta(0)
    reason: _NonEmptyStr | None = None


class CaseSpec(_Spec):
    """One case of ``cases``."""

    name: _NonEmptyStr
    contact: ContactSpec | None = None
    start: Annotated[datetime, BeforeValidator(_moment)] | None = None
    events: list[EventSpec] = Field(default_factory=list)
    until: _Offset | None = None
    rule: _RuleName | None = None
    gate: GateAnswerSpec | None = None
    expect: list[ExpectSpec]


class RuleTestFileSpec(_Spec):
    """A rule test file: ``cases:``, a list of cases."""

    cases: Annotated[list[CaseSpec], Field(min_length=1)]
