"""Preview of a webhook action: the request it would send now, credentials masked.

The request is built by the :class:`~crm_notify.actions.sender.WebhookActionSender` that sends
it (:func:`~crm_notify.actions.sender.render_body`, ``request_for``, ``http_request``), without
storing or sending anything. Masked as ``***``: header values and query-string values built
from ``${NAME}`` references, and the ``webhook-signature`` (a valid signature, printed, could
be replayed to the receiver within its tolerance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from crm_notify.actions.env import expand, referenced_variables
from crm_notify.actions.model import WebhookAction
from crm_notify.actions.sender import WebhookActionSender, render_body
from crm_notify.actions.signing import new_message_id
from crm_notify.clock import now
from crm_notify.errors import RenderError

#: What a masked credential is shown as.
MASK = "***"
#: The header carrying the request's signature (masked).
SIGNATURE_HEADER = "webhook-signature"


@dataclass(frozen=True)
class WebhookPreview:
    """One webhook action's request as it would go out, credentials masked.

    ``headers`` are every header sent, in order; ``body`` is the exact text sent (empty
    without a body). ``signing`` says which secret signs it, or ``unsigned``. ``error`` is
    set, and the request fields are empty, when the request cannot be built (the reason a
    real send would fail with: ``render: ...`` or ``action: ...``).
    """

    action: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    body: str = ""
    signing: str = "unsigned"
    error: str | None = None

    @property
    def body_text(self) -> str:
        """The body for reading: JSON indented, form fields one per line."""
        if not self.body:
            return "(no body)"
        if self.content_type == "application/x-www-form-urlencoded":
            fields = parse_qsl(self.body, keep_blank_values=True)
            return "\n".join(f"{name} = {value}" for name, value in fields)
        try:
            return json.dumps(json.loads(self.body), indent=2, ensure_ascii=False)
        except ValueError:
            return self.body


def preview_request(
    sender: WebhookActionSender, action: WebhookAction, *, rule: str, context: dict[str, Any]
) -> WebhookPreview:
    """``action``'s request as ``sender`` would send it now with ``context`` (a fresh
    ``webhook-id``), credentials masked; nothing is stored or sent.

    Returns:
        The request, or its ``error`` when it cannot be built.
    """
    message_id = new_message_id()
    try:
        body = render_body(
            action, rule=rule, context={"gate": {}, **context}, message_id=message_id
        )
        request = sender.request_for(action, notification_id=0, body=body, message_id=message_id)
        built = sender.http_request(request, timestamp=int(now().timestamp()))
    except (RenderError, LookupError, ValueError, httpx.InvalidURL) as exc:
        # The reasons a real send fails with (MissingVariableError is a LookupError).
        kind = "render" if isinstance(exc, RenderError) else "action"
        if isinstance(exc, httpx.InvalidURL):
            kind = "invalid URL"
        return WebhookPreview(
            action.name, action.method, masked_url(action), error=f"{kind}: {exc}"
        )
    masked = {name.lower() for name, value in action.headers if referenced_variables(value)}
    masked.add(SIGNATURE_HEADER)
    headers = []
    for raw_name, raw_value in built.headers.raw:
        name = raw_name.decode(built.headers.encoding)
        value = raw_value.decode(built.headers.encoding)
        headers.append((name, MASK if name.lower() in masked else value))
    if request.secret is None:
        signing = "unsigned"
    elif action.secret_variable is not None:
        signing = f"signed with ${{{action.secret_variable}}}"
    else:
        signing = "signed with CRM_NOTIFY_WEBHOOK_SECRET"
    return WebhookPreview(
        action=action.name,
        method=built.method,
        url=masked_url(action),
        headers=tuple(headers),
        content_type=request.content_type,
        body=body,
        signing=signing,
    )


def masked_url(action: WebhookAction) -> str:
    """``action``'s URL as httpx sends it, with each query-string value that comes from a
    ``${NAME}`` reference shown as ``***`` (a parameter whose name has one: all of it)."""
    parts = urlsplit(action.url)
    pieces = []
    for piece in parts.query.split("&") if parts.query else ():
        name, equals, _ = piece.partition("=")
        if not referenced_variables(piece):
            pieces.append(piece)
        elif equals and not referenced_variables(name):
            pieces.append(f"{name}={MASK}")
        else:
            pieces.append(MASK)
    return str(httpx.URL(expand(parts._replace(query="&".join(pieces)).geturl(), {})))
