"""A loaded fetch step: the HTTP request a rule makes before each of its emails is rendered."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from crm_notify.actions.body import WebhookBody
from crm_notify.actions.env import expand, expand_headers
from crm_notify.errors import RenderError
from crm_notify.fetch.spec import DEFAULT_TIMEOUT
from crm_notify.render.sandbox import CompiledExpression

#: Variables a fetch step's URL and body may read: the condition variables and ``gate`` (what
#: a send gate's integration attached; empty without a gate).
FETCH_VARIABLES = frozenset({"event", "contact", "order", "cart", "gate"})
#: Names a fetch step may not take: the template variables crm-notify sets itself.
RESERVED_NAMES = frozenset(
    {
        *FETCH_VARIABLES,
        "webhook",
        "digest",
        "fetch",
        "unsubscribe_url",
        "preferences_url",
    }
)
#: Largest answer read; a longer one is an error (``too large``).
MAX_ANSWER_BYTES = 256 * 1024
#: The key of ``Notification.context`` that keeps the data an email was rendered with.
STORED_KEY = "fetch"


class OnError(enum.StrEnum):
    """What a failed request (timeout, error status, not JSON...) does to the email: render it
    with the step's fallback data, skip it (cancelled), or defer it by ``retry_after``."""

    FALLBACK = "fallback"
    SKIP = "skip"
    DEFER = "defer"


class FetchUrl:
    """A URL template: literal text with ``{{ expression }}`` values (path and query only).

    Each value is percent-encoded as a whole (a ``/``, ``?`` or ``&`` in it cannot change the
    path or add parameters); literal text may hold ``${NAME}`` references (query string only).

    Parameters:
        source: the URL as written.
        parts: literal text and compiled expressions, in order.
    """

    __slots__ = ("_parts", "source")

    def __init__(self, source: str, parts: Sequence[str | CompiledExpression]) -> None:
        self.source = source
        self._parts = tuple(parts)

    def __repr__(self) -> str:
        return f"FetchUrl({self.target!r})"

    @property
    def target(self) -> str:
        """The URL as written, without its query string (which may carry credentials)."""
        parts = urlsplit(self.source)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def render(self, context: Mapping[str, Any], environ: Mapping[str, str]) -> str:
        """The URL for ``context``, ``${NAME}`` references replaced from ``environ``.

        Raises:
            RenderError: an expression failed (an undefined value, a sandbox bound), or a value
                is ``.`` or ``..``.
            MissingVariableError: a referenced variable is not set.
        """
        pieces = []
        for part in self._parts:
            if isinstance(part, str):
                pieces.append(expand(part, environ))
            else:
                value = quote(_url_text(part.evaluate(context)), safe="")
                if value in (".", ".."):  # a path segment of its own would climb the path
                    raise RenderError(f"a URL value may not be {value!r}")
                pieces.append(value)
        return "".join(pieces)


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchStep:
    """One item of a rule's ``fetch:``, checked and compiled.

    Header values may hold ``${NAME}`` references, resolved when the request is built.
    ``fallback`` is the data used when the request fails and ``on_error`` is ``fallback``.
    """

    name: str
    url: FetchUrl
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: WebhookBody | None = None
    timeout: timedelta = DEFAULT_TIMEOUT
    cache: timedelta | None = None
    on_error: OnError = OnError.SKIP
    fallback: Any = None
    retry_after: timedelta | None = None
    source_path: Path = field(default_factory=Path)
    source_line: int = 0

    def resolved_headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The configured headers with ``${NAME}`` references replaced.

        Raises:
            MissingVariableError: a referenced variable is not set.
            ValueError: a value contains a line break or NUL once resolved.
        """
        return expand_headers(self.headers, environ)


def _url_text(value: Any) -> str:
    """A value as URL text: ``true``/``false``, empty for null, dates in ISO 8601."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)
