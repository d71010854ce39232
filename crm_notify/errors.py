"""The exception tree of crm-notify.

::

    CrmNotifyError
    ├── EventError                  bad event input (HTTP 4xx)
    │   ├── EventValidationError      a field is missing or wrong (names the field)
    │   └── PayloadTooLargeError      a Segment size limit was exceeded
    ├── RuleError                   rule files and rule evaluation
    │   ├── RuleFileError             a rule file is invalid (path, line, reason)
    │   └── ConditionError            a condition failed while being evaluated
    ├── RenderError                 templates
    │   ├── TemplateNotFoundError     no such template (or language variant)
    │   └── SandboxLimitError         a template or condition exceeded a resource bound
    ├── EspError                    delivery through an email service provider
    │   ├── EspTransientError         worth retrying (network, timeout, 4xx greylisting, 5xx)
    │   └── EspPermanentError         retrying will not help (rejected recipient, bad credentials)
    ├── WebhookError                a provider's tracking webhook call was refused
    │   ├── WebhookAuthError          missing or wrong credentials or signature (HTTP 401/403)
    │   ├── WebhookPayloadError       the body is not in the provider's format (HTTP 400)
    │   └── WebhookUnavailableError   something the check needs is unreachable (HTTP 503)
    └── GateClosedError             a send gate is finished or timed out (nothing changed)

    ConfigurationError              invalid settings; outside the tree so no handler swallows it
"""

from __future__ import annotations

from pathlib import Path


class CrmNotifyError(Exception):
    """Base of every operational error raised by crm-notify."""


class EventError(CrmNotifyError):
    """An incoming event was rejected."""


class EventValidationError(EventError):
    """A field of an incoming event is missing or invalid.

    Parameters:
        field: dotted path of the offending field, e.g. ``batch[3].userId``.
        message: what is wrong with it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class PayloadTooLargeError(EventError):
    """A request exceeded one of Segment's size limits.

    Parameters:
        limit_name: which limit, e.g. ``"32 KB per call"``.
        limit_bytes: the limit in bytes.
        field: where the oversized part is, e.g. ``batch[7]`` (empty for the whole body).
    """

    def __init__(self, limit_name: str, limit_bytes: int, field: str = "") -> None:
        self.limit_name = limit_name
        self.limit_bytes = limit_bytes
        self.field = field
        where = f"{field} " if field else "request body "
        super().__init__(f"{where}exceeds the Segment limit of {limit_name} ({limit_bytes} bytes)")


class RuleError(CrmNotifyError):
    """Base for rule-file and rule-evaluation errors."""


class RuleFileError(RuleError):
    """A rule file cannot be loaded.

    Parameters:
        path: the rule file.
        line: 1-based line of the offending node, or ``None`` when unknown.
        message: what is wrong.
        suggestion: an optional hint ("did you mean 'trigger'?").
    """

    def __init__(
        self, path: Path | str, line: int | None, message: str, suggestion: str | None = None
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        self.suggestion = suggestion
        location = f"{self.path}:{line}" if line else str(self.path)
        text = f"{location}: {message}"
        if suggestion:
            text += f" ({suggestion})"
        super().__init__(text)


class ConditionError(RuleError):
    """A rule condition raised an error or hit a sandbox limit while being evaluated."""


class RenderError(CrmNotifyError):
    """A template could not be rendered."""


class TemplateNotFoundError(RenderError):
    """The named template, or one of its parts, does not exist."""


class SandboxLimitError(RenderError):
    """A template or condition exceeded a resource bound (time, output size, loop length)."""


class EspError(CrmNotifyError):
    """Base for delivery failures.

    Parameters:
        esp: the adapter's name, e.g. ``"smtp"``.
        message: what happened.
        status_code: the provider's status (HTTP or SMTP code) when there was one.
        body: the provider's response text when there was one.
    """

    def __init__(
        self, esp: str, message: str, *, status_code: int | None = None, body: str = ""
    ) -> None:
        self.esp = esp
        self.status_code = status_code
        self.body = body
        super().__init__(f"{esp}: {message}" + (f" (status {status_code})" if status_code else ""))


class EspTransientError(EspError):
    """A delivery failure worth retrying.

    Parameters:
        retry_after_s: seconds the provider asked us to wait, when it said.
        maybe_accepted: the request reached the provider and no answer came back (a read
            timeout, a connection dropped mid-transaction): the provider may have the message,
            so it must not be handed to another ESP.
    """

    def __init__(
        self,
        esp: str,
        message: str,
        *,
        status_code: int | None = None,
        body: str = "",
        retry_after_s: float | None = None,
        maybe_accepted: bool = False,
    ) -> None:
        super().__init__(esp, message, status_code=status_code, body=body)
        self.retry_after_s = retry_after_s
        self.maybe_accepted = maybe_accepted


class EspPermanentError(EspError):
    """A delivery failure that retrying will not fix."""


class WebhookError(CrmNotifyError):
    """Base for refused tracking-webhook calls.

    Parameters:
        provider: the webhook's provider, e.g. ``"sendgrid"``.
        message: what is wrong (never the secret, never an address).
        status_code: the HTTP status to answer with.
    """

    status_code = 400

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        self.message = message
        super().__init__(f"{provider} webhook: {message}")


class WebhookAuthError(WebhookError):
    """The call is not authentic: credentials missing (401) or wrong, or a bad signature (403).

    Parameters:
        missing: ``True`` when no credentials or signature came at all (answered with 401).
    """

    def __init__(self, provider: str, message: str, *, missing: bool = False) -> None:
        super().__init__(provider, message)
        self.status_code = 401 if missing else 403


class WebhookPayloadError(WebhookError):
    """The body is not in the provider's documented format."""


class WebhookUnavailableError(WebhookError):
    """Something the check needs could not be fetched (an SNS signing certificate, a
    subscription confirmation URL): answered with 503, so the provider retries."""

    status_code = 503


class GateClosedError(CrmNotifyError):
    """The send gate is no longer open (finished or timed out): nothing was changed.

    Parameters:
        public_id: the gate.
        status: its status.
    """

    def __init__(self, public_id: str, status: str) -> None:
        self.public_id = public_id
        self.status = status
        super().__init__(f"gate {public_id} is {status}")


class ConfigurationError(Exception):
    """Settings are missing or invalid. Raised at start-up, never swallowed."""
