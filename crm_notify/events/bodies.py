"""Request and response bodies of the Tracking API, for the OpenAPI document only.

The routes read and parse the raw body themselves (gzip, strict JSON), so these models are
never used to validate requests: ``schemas.parse_call`` / ``parse_batch`` do that.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crm_notify.events.schemas import CallType

_ID = str | int


class CallBody(BaseModel):
    """Fields common to every call; unknown fields are accepted and stored."""

    model_config = ConfigDict(extra="allow")

    type: CallType | None = Field(None, description="Implied by the route when absent.")
    messageId: str | None = Field(None, max_length=255, description="Generated when absent.")
    userId: _ID | None = Field(None, description="userId or anonymousId is required.")
    anonymousId: _ID | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    timestamp: datetime | None = Field(None, description="ISO 8601; naive means UTC.")
    originalTimestamp: datetime | None = None
    writeKey: str | None = Field(None, description="Alternative to HTTP Basic auth.")


class TrackBody(CallBody):
    """A track call."""

    event: str = Field(max_length=255)
    properties: dict[str, Any] | None = None


class IdentifyBody(CallBody):
    """An identify call."""

    traits: dict[str, Any] | None = None


class PageBody(CallBody):
    """A page (or screen) call."""

    name: str | None = Field(None, max_length=255)
    category: str | None = None
    properties: dict[str, Any] | None = None


class GroupBody(CallBody):
    """A group call."""

    groupId: _ID
    traits: dict[str, Any] | None = None


class AliasBody(CallBody):
    """An alias call."""

    userId: _ID
    previousId: _ID


class BatchItem(CallBody):
    """One call inside a batch: ``type`` is required, other fields as for its route."""

    type: CallType  # required here, optional on single routes
    event: str | None = Field(None, max_length=255)
    name: str | None = Field(None, max_length=255)
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    groupId: _ID | None = None
    previousId: _ID | None = None


class BatchBody(BaseModel):
    """A batch of calls: at most 500 KB, 2500 calls and 32 KB per call."""

    model_config = ConfigDict(extra="allow")

    batch: list[BatchItem]
    context: dict[str, Any] | None = Field(None, description="Merged under each call's context.")
    integrations: dict[str, Any] | None = None
    sentAt: datetime | None = None
    writeKey: str | None = Field(None, description="Alternative to HTTP Basic auth.")


class SuccessResponse(BaseModel):
    """The body Segment answers an accepted request with."""

    success: bool = True


class ErrorResponse(BaseModel):
    """A rejected request.

    ``code`` and ``message`` are what the Segment and RudderStack SDKs read from an error body.
    """

    error: str
    field: str | None = Field(None, description="Path of the offending field, e.g. batch[3].event")
    code: str
    message: str


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Return the JSON schema of ``model`` with its ``$defs`` inlined (for ``openapi_extra``).

    Parameters:
        model: a model whose nested models are not recursive.

    Returns:
        A self-contained schema.
    """
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
