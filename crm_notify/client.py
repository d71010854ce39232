"""The in-process Python API: emit Segment calls without going through HTTP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from crm_notify.clock import now
from crm_notify.config import Settings, load_settings
from crm_notify.events.schemas import SegmentCall, parse_batch, parse_call
from crm_notify.intake import IngestResult
from crm_notify.runtime import Runtime


class CrmNotify:
    """Emit events in-process, exactly as the HTTP API would receive them.

    Parameters:
        settings: configuration; read from the environment when omitted.
        runtime: an existing runtime to share (the settings are then ignored).

    With Redis configured, resulting notifications are queued for the workers; with the
    embedded default they are delivered before the call returns. Use as a context manager,
    or call :meth:`close`.
    """

    def __init__(self, settings: Settings | None = None, *, runtime: Runtime | None = None) -> None:
        self._own_runtime = runtime is None
        self.runtime = runtime or Runtime.from_settings(settings or load_settings())

    def emit(self, call: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> IngestResult:
        """Ingest one Segment call (a dict with ``type``), a list of them, or a batch body.

        Raises:
            EventValidationError: a call is invalid; nothing is written.
        """
        received = now()
        calls: list[SegmentCall]
        if isinstance(call, Mapping) and "batch" in call:
            calls = parse_batch(dict(call), received_at=received)
        elif isinstance(call, Mapping):
            calls = [parse_call(dict(call), type_hint=None, received_at=received)]
        else:
            calls = parse_batch({"batch": [dict(c) for c in call]}, received_at=received)
        return self.runtime.intake.ingest(calls, "python")

    def track(
        self,
        event: str,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
        message_id: str | None = None,
    ) -> IngestResult:
        """Emit a ``track`` call."""
        return self.emit(
            _drop_none(
                type="track",
                event=event,
                userId=user_id,
                anonymousId=anonymous_id,
                properties=dict(properties or {}),
                timestamp=timestamp.isoformat() if timestamp else None,
                messageId=message_id,
            )
        )

    def identify(
        self,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        traits: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
        message_id: str | None = None,
    ) -> IngestResult:
        """Emit an ``identify`` call."""
        return self.emit(
            _drop_none(
                type="identify",
                userId=user_id,
                anonymousId=anonymous_id,
                traits=dict(traits or {}),
                timestamp=timestamp.isoformat() if timestamp else None,
                messageId=message_id,
            )
        )

    def close(self) -> None:
        """Release the runtime when this client built it."""
        if self._own_runtime:
            self.runtime.close()

    def __enter__(self) -> CrmNotify:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _drop_none(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def emit(
    call: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, settings: Settings | None = None
) -> IngestResult:
    """Ingest Segment call(s) in-process with a short-lived client (see :class:`CrmNotify`)."""
    with CrmNotify(settings) as client:
        return client.emit(call)
