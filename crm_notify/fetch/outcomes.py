"""What a fetch step came to, as the decision log records it and the counters count it.

Every step of a delivery attempt has one outcome:

- ``ok``: the request answered JSON (2xx); ``cache_hit``: a cached answer was used;
- ``fallback``: the request failed and the step's fallback data was used;
- ``skip``: it failed, and the email is cancelled; ``defer``: it failed, and the email waits.

A failure has a kind from a closed list (the ``error`` label of the counters): ``timeout``,
``status 500`` (any status that is not 2xx), ``not json``, ``too large``, ``refused address``,
``network error``, ``request error`` (the URL or body did not render, a variable is not set),
``unusable answer`` (JSON, but the email did not render with it: another shape than expected).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

#: The key of a decision's ``details`` that describes a fetch.
DETAILS_KEY = "fetch"


class FetchOutcome(enum.StrEnum):
    """What one fetch step came to (see the module docstring)."""

    OK = "ok"
    CACHE_HIT = "cache_hit"
    FALLBACK = "fallback"
    SKIP = "skip"
    DEFER = "defer"


class FetchError(enum.StrEnum):
    """The kinds of failure; a status is counted as ``status NNN``."""

    TIMEOUT = "timeout"
    STATUS = "status"
    NOT_JSON = "not json"
    TOO_LARGE = "too large"
    REFUSED_ADDRESS = "refused address"
    NETWORK = "network error"
    REQUEST = "request error"
    UNUSABLE = "unusable answer"


class FetchFailure(Exception):
    """A request that did not give usable data.

    Parameters:
        kind: the kind of failure.
        message: what happened, for people (``timeout after 2s``, ``status 500``); no URL,
            header or answer text (they may carry credentials or personal data).
        status: the answer's status, when one came.
    """

    def __init__(self, kind: FetchError, message: str, *, status: int | None = None) -> None:
        self.kind = kind
        self.message = message
        self.status = status
        super().__init__(message)

    @property
    def label(self) -> str:
        """The kind as counted: ``status 500`` for a status, else the kind."""
        if self.kind is FetchError.STATUS and self.status is not None:
            return f"status {self.status}"
        return self.kind.value


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one fetch step in one delivery attempt.

    ``error`` and ``message`` are set when the request failed (see :class:`FetchFailure`);
    ``note`` adds why a failure that would defer skips instead; ``elapsed_ms`` is the request's
    duration (``None`` for a cache hit, or a request never made).
    """

    name: str
    outcome: FetchOutcome
    error: str | None = None
    message: str | None = None
    status: int | None = None
    elapsed_ms: int | None = None
    note: str | None = None

    @classmethod
    def failed(
        cls, name: str, outcome: FetchOutcome, failure: FetchFailure, elapsed_ms: int | None
    ) -> FetchResult:
        """The result of a failed request that led to ``outcome``."""
        return cls(
            name,
            outcome,
            error=failure.label,
            message=failure.message,
            status=failure.status,
            elapsed_ms=elapsed_ms,
        )

    @property
    def reason(self) -> str:
        """The decision log's reason: ``fetch recommendations: ok``, ``fetch recommendations
        failed: timeout after 2s; fallback data used``."""
        if self.outcome is FetchOutcome.OK:
            return f"fetch {self.name}: ok"
        if self.outcome is FetchOutcome.CACHE_HIT:
            return f"fetch {self.name}: cache hit"
        text = f"fetch {self.name} failed: {self.message}"
        if self.outcome is FetchOutcome.FALLBACK:
            text += "; fallback data used"
        if self.note:
            text += f"; {self.note}"
        return text

    def details(self) -> dict[str, Any]:
        """The decision's ``details``: ``{"fetch": {name, outcome, error, status, ms}}``."""
        entry: dict[str, Any] = {"name": self.name, "outcome": self.outcome.value}
        for key, value in (
            ("error", self.error),
            ("status", self.status),
            ("elapsed_ms", self.elapsed_ms),
        ):
            if value is not None:
                entry[key] = value
        return {DETAILS_KEY: entry}


def fetch_entry(details: Any) -> dict[str, Any] | None:
    """The fetch part of a decision's ``details``, or ``None`` when it is not about a fetch."""
    if not isinstance(details, dict):
        return None
    entry = details.get(DETAILS_KEY)
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        return entry
    return None
