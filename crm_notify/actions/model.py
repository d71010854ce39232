"""A loaded webhook action: what one rule firing sends to another tool over HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from crm_notify.actions.body import ContentType, WebhookBody
from crm_notify.actions.env import expand, expand_headers
from crm_notify.actions.signing import SigningSecret

#: ``Notification.channel`` of a webhook action.
WEBHOOK_CHANNEL = "webhook"
#: Variables a webhook body may read: the condition variables, ``webhook`` (its ``id``,
#: ``rule`` and ``action``) and ``gate`` (what a send gate's integration attached; empty
#: without a gate).
BODY_VARIABLES = frozenset({"event", "contact", "order", "cart", "webhook", "gate"})
#: Length of ``Notification.to_address``.
TARGET_CHARS = 320


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookAction:
    """One ``type: webhook`` item of a rule's ``actions:``, checked and compiled.

    ``url`` and header values may hold ``${NAME}`` references (the query string only, for the
    URL), resolved from the environment when the request is built; ``secret_variable`` names
    the variable holding the signing secret (``None``: the configured default).
    """

    name: str
    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    content_type: ContentType = "json"
    body: WebhookBody | None = None
    secret_variable: str | None = None
    source_path: Path = field(default_factory=Path)
    source_line: int = 0

    @property
    def target(self) -> str:
        """Where the requests go, for ``Notification.to_address``: the URL without its query
        string (which may carry credentials) and fragment."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"[:TARGET_CHARS]

    def resolved_url(self, environ: Mapping[str, str]) -> str:
        """The URL with ``${NAME}`` references in its query string replaced.

        Raises:
            MissingVariableError: a referenced variable is not set.
        """
        return expand(self.url, environ)

    def resolved_headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The configured headers with ``${NAME}`` references replaced.

        Raises:
            MissingVariableError: a referenced variable is not set.
            ValueError: a value contains a line break or NUL once resolved.
        """
        return expand_headers(self.headers, environ)

    def secret(
        self, environ: Mapping[str, str], default: SigningSecret | None
    ) -> SigningSecret | None:
        """The signing secret: the one ``secret:`` names, else ``default``.

        Raises:
            MissingVariableError: the named variable is not set.
            ValueError: its value is not a signing secret.
        """
        if self.secret_variable is None:
            return default
        return SigningSecret.parse(expand("${" + self.secret_variable + "}", environ))
