"""The rule-file format of a send gate (a rule's ``gate:``).

::

    gate:
      url: https://loyalty.example/crm-gate   # required, static: https (http: loopback only);
                                              #   ${NAME} allowed in the query string only
      auth:                                   # optional, one of:
        basic: ${GATE_USER}:${GATE_PASSWORD}  #   HTTP Basic, USER:PASSWORD
        # header: X-Gate-Token                #   or a header of your choice...
        # token: ${GATE_TOKEN}                #   ...and its value
                                              # values: text and ${NAME} (environment variables)
      secret: ${GATE_SIGNING_SECRET}          # optional: the Standard Webhooks signing secret
                                              #   (whsec_...); default CRM_NOTIFY_WEBHOOK_SECRET
      timeout: 1h                             # optional, default 1h, at most 7d: how long held
                                              #   sends wait for the finish call
      on_timeout: release                     # optional: release (default) | drop
      actions:                                # optional: what the integration is asked to do,
        - {id: check-stock}                   #   each a mapping with a unique string `id`; the
        - {id: add-promo, field: promo_code}  #   other keys are passed on as they are
      on_rejected: {template: cart_rejected}  # optional: send this template to rejected items,
                                              #   or {retry_after: 1d, retries: 2}: try the
                                              #   same send again later (gated again)
      on_timed_out: {template: cart_later}    # optional, with on_timeout: drop: the same, for
                                              #   the dropped items

A rule may also write ``gate: false``: no gate, not even the project's. The project's gate
(``gate:`` in ``_project.yaml``, the same format with ``url`` required) applies to every rule; a
rule's own ``gate:`` is merged over it (the keys it writes win, its ``actions`` follow the
project's), so there a rule's ``url`` may be left out.

What the values mean and how they are checked is in :mod:`crm_notify.rules._gate`.

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
    PlainValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from crm_notify._spec_durations import (
    DurationJsonSchema,
    duration_field_value,
    positive_at_most,
)

#: Longest gate timeout: held sends should not wait longer than a week.
MAX_GATE_TIMEOUT = timedelta(days=7)
#: What a template (folder under ``templates/``) name must look like; the same as
#: ``crm_notify.rules.model.TEMPLATE_NAME_PATTERN`` (a test keeps them equal).
TEMPLATE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
#: Longest action id.
MAX_ACTION_ID_CHARS = 128
#: Longest URL accepted.
MAX_URL_CHARS = 2048
#: Longest wait before a rejected or timed-out send is tried again.
MAX_RETRY_AFTER = timedelta(days=30)
#: Most retries of one send a follow-up may ask for.
MAX_RETRIES = 10


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GateAuthSpec(_Spec):
    """``gate.auth``: ``basic`` (``USER:PASSWORD``), or ``header`` and ``token``."""

    model_config = ConfigDict(
        title="GateAuth",
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["basic"],
                    "not": {"anyOf": [{"required": ["header"]}, {"required": ["token"]}]},
                },
                {"required": ["header", "token"], "not": {"required": ["basic"]}},
            ]
        },
    )

    basic: Annotated[str, Field(min_length=1)] | None = None
    header: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    token: Annotated[str, Field(min_length=1)] | None = None


class GateActionSpec(BaseModel):
    """``gate.actions[i]``: what the integration is asked to do; ``id`` names it, the other
    keys are free (passed on as they are)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True, title="GateAction")

    id: Annotated[str, Field(min_length=1, max_length=MAX_ACTION_ID_CHARS)]


class GateFollowUpSpec(_Spec):
    """``gate.on_rejected`` / ``gate.on_timed_out``: a template to send instead, or a retry of
    the same send later (held by the gate again), at most ``retries`` times."""

    model_config = ConfigDict(
        title="GateFollowUp",
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["template"],
                    "not": {"anyOf": [{"required": ["retry_after"]}, {"required": ["retries"]}]},
                },
                {"required": ["retry_after"], "not": {"required": ["template"]}},
            ]
        },
    )

    template: Annotated[str, Field(pattern=TEMPLATE_NAME_PATTERN)] | None = None
    retry_after: (
        Annotated[
            timedelta,
            BeforeValidator(duration_field_value),
            AfterValidator(positive_at_most(MAX_RETRY_AFTER, code="gate_duration_too_long")),
            DurationJsonSchema(
                "Try the same send again this much later (held by the gate again): 90s, 30m, "
                "1h, 2d, or ISO 8601; more than zero, at most 30d"
            ),
        ]
        | None
    ) = None
    retries: Annotated[int, Field(ge=1, le=MAX_RETRIES)] | None = None

    @model_validator(mode="after")
    def _one_path(self) -> GateFollowUpSpec:
        if self.template is None and self.retry_after is None:
            raise PydanticCustomError(
                "gate_follow_up",
                "needs 'template' (send another template) or 'retry_after' (try the same send "
                "again later)",
            )
        if self.template is not None and self.retry_after is not None:
            raise PydanticCustomError(
                "gate_follow_up",
                "takes either 'template' (send another template) or 'retry_after' (try the "
                "same send again later), not both",
            )
        if self.retries is not None and self.retry_after is None:
            raise PydanticCustomError(
                "gate_follow_up_retries", "uses 'retries' only with 'retry_after'"
            )
        return self


class GateSpec(_Spec):
    """``gate``: hold the rule's sends until an outside system approves them.

    ``url`` is required unless the project has a gate (the loader checks it): a rule's gate is
    merged over the project's, so there it may give only the keys it changes. ``None`` for a
    key means not written (``model_fields_set`` tells a written ``null`` apart).
    """

    model_config = ConfigDict(
        title="Gate",
        json_schema_extra={
            # on_timeout may come from the project's gate, so it is not required here
            "dependentSchemas": {
                "on_timed_out": {"properties": {"on_timeout": {"const": "drop"}}},
            }
        },
    )

    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)] | None = None
    auth: GateAuthSpec | None = None
    secret: Annotated[str, Field(min_length=1)] | None = None
    timeout: (
        Annotated[
            timedelta,
            BeforeValidator(duration_field_value),
            AfterValidator(positive_at_most(MAX_GATE_TIMEOUT, code="gate_duration_too_long")),
            DurationJsonSchema(
                "How long held sends wait for the finish call: 90s, 30m, 1h, 2d, or ISO 8601 "
                "(PT1H); more than zero, at most 7d; default 1h"
            ),
        ]
        | None
    ) = None
    on_timeout: Literal["release", "drop"] = "release"
    actions: Annotated[list[GateActionSpec], Field(min_length=1)] | None = None
    on_rejected: GateFollowUpSpec | None = None
    on_timed_out: GateFollowUpSpec | None = None


class ProjectGateSpec(GateSpec):
    """``gate`` of ``_project.yaml``: the gate of every rule, which their own ``gate:`` extends."""

    model_config = ConfigDict(
        title="ProjectGate",
        json_schema_extra={
            "dependentSchemas": {
                "on_timed_out": {
                    "properties": {"on_timeout": {"const": "drop"}},
                    "required": ["on_timeout"],
                }
            }
        },
    )

    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)]


def _gate_or_off(value: Any) -> GateSpec | Literal[False] | None:
    """Pydantic plain validator of a rule's ``gate:``: a gate mapping, ``false``, or nothing.

    A plain validator rather than a union, so the problems inside a gate keep their own place
    (``gate.url``, not ``gate.GateSpec.url``).
    """
    if value is None or value is False:
        return value
    if not isinstance(value, dict | GateSpec):
        raise PydanticCustomError(
            "gate_type",
            "should be a mapping (the gate), or false (no gate, not even the project's)",
        )
    return GateSpec.model_validate(value)


#: A rule's ``gate:``: its gate (merged over the project's), ``False`` (no gate, not even the
#: project's), or ``None`` (not written: the project's gate, if any).
RuleGateField = Annotated[
    GateSpec | Literal[False] | None,
    PlainValidator(_gate_or_off, json_schema_input_type=GateSpec | Literal[False] | None),
]
