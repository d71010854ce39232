"""Preview: what a rule would send to a contact, rendered through the real code path.

The email is rendered as delivery renders it; each webhook action's request is built by the
:class:`~crm_notify.actions.sender.WebhookActionSender` that sends it (:func:`render_body`,
``request_for``, ``http_request``), without storing or sending anything. Credentials are
masked as ``***``: header values and query-string values built from ``${NAME}`` references,
and the ``webhook-signature`` (a valid signature, printed, could be replayed to the receiver
within its tolerance).
"""

from __future__ import annotations

import email.policy
import json
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from sqlmodel import Session, col, or_, select

from crm_notify.actions.env import expand, referenced_variables
from crm_notify.actions.model import WebhookAction
from crm_notify.actions.sender import WebhookActionSender, render_body
from crm_notify.actions.signing import new_message_id
from crm_notify.clock import now
from crm_notify.commerce.models import Cart, Order
from crm_notify.commerce.state import cart_data, order_data
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import contact_data
from crm_notify.context import stored_event_data
from crm_notify.decisions import attempt_for, failing_condition, missing_recipient
from crm_notify.errors import CrmNotifyError, EventValidationError, RenderError
from crm_notify.events.emails import normalise_email
from crm_notify.events.models import Event
from crm_notify.events.schemas import SegmentCall
from crm_notify.guards import SendPolicy
from crm_notify.intake import event_data
from crm_notify.outbox.models import DecisionOutcome, Notification
from crm_notify.render.mime import build_message
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.model import Rule
from crm_notify.rules.triggers import EventTrigger, IdentifyTrigger
from crm_notify.unsubscribe.links import UnsubscribeLinks

#: What a masked credential is shown as.
MASK = "***"
#: The header carrying the request's signature (masked).
SIGNATURE_HEADER = "webhook-signature"


class PreviewError(CrmNotifyError):
    """The preview cannot be made (unknown contact, nothing to preview with)."""


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


@dataclass(frozen=True)
class Preview:
    """A rendered preview and the verdict a real send would get.

    ``verdict`` is ``"would be sent"``, ``"would be skipped: <reason>"`` or ``"would be
    deferred: <reason>"``, for the whole firing. ``message`` is the email (``None`` for a rule
    with only actions); ``requests`` are its webhook actions' requests, in rule order.
    """

    message: EmailMessage | None
    verdict: str
    context: dict[str, Any]
    requests: tuple[WebhookPreview, ...] = ()

    @property
    def html(self) -> str | None:
        """The HTML part, if there is an email and its template has one."""
        if self.message is None:
            return None
        part = self.message.get_body(preferencelist=("html",))
        return None if part is None else str(part.get_content())

    @property
    def text(self) -> str | None:
        """The plain-text part, if there is an email and its template has one."""
        if self.message is None:
            return None
        part = self.message.get_body(preferencelist=("plain",))
        return None if part is None else str(part.get_content())


def find_contact_by_address(session: Session, who: str) -> Contact:
    """Find a contact by email (case-insensitive) or user id.

    Raises:
        PreviewError: no such contact.
    """
    try:
        address = normalise_email(who.strip())
    except EventValidationError:
        address = who.strip()
    contact = session.exec(
        select(Contact).where(or_(col(Contact.email) == address, col(Contact.user_id) == who))
    ).first()
    if contact is None:
        raise PreviewError(f"no contact with email or userId {who!r}")
    return contact


def _latest_event(session: Session, rule: Rule, contact: Contact) -> dict[str, Any] | None:
    query = select(Event).where(Event.contact_id == contact.id)
    trigger = rule.trigger
    if isinstance(trigger, EventTrigger):
        query = query.where(Event.name == trigger.event)
    elif isinstance(trigger, IdentifyTrigger):
        query = query.where(Event.type == "identify")
    else:
        query = query.where(col(Event.name).startswith("Order "))
    event = session.exec(query.order_by(col(Event.timestamp).desc())).first()
    return None if event is None else stored_event_data(event)


def build_preview(
    *,
    session: Session,
    rule: Rule,
    contact: Contact,
    templates: TemplateStore,
    mail_from: str,
    call: SegmentCall | None = None,
    language: str | None = None,
    policy: SendPolicy | None = None,
    links: UnsubscribeLinks | None = None,
    webhooks: WebhookActionSender | None = None,
) -> Preview:
    """Render what ``rule`` would send to ``contact`` for ``call`` or their latest matching
    event: its email, and the request of each webhook action.

    Parameters:
        webhooks: the sender that would send the rule's webhook actions (the runtime's);
            required when the rule has actions.

    Raises:
        PreviewError: no event given and none stored for this contact and rule, or a rule with
            actions but no ``webhooks``.
        RenderError: the email template fails (the same error a real send would get). A
            webhook body that fails is reported in its :class:`WebhookPreview` instead.
    """
    if rule.actions and webhooks is None:
        raise PreviewError(f"rule {rule.name!r} has webhook actions: pass webhooks=")
    data = event_data(call) if call is not None else _latest_event(session, rule, contact)
    if data is None:
        raise PreviewError(
            f"contact has no stored event for rule {rule.name!r}; pass one with --event FILE"
        )
    properties = data.get("properties") or {}
    order = cart = None
    if properties.get("order_id") is not None:
        order = session.exec(
            select(Order).where(Order.order_id == str(properties["order_id"]))
        ).first()
    if properties.get("cart_id") is not None:
        cart = session.exec(select(Cart).where(Cart.cart_id == str(properties["cart_id"]))).first()
    context: dict[str, Any] = {
        "event": data,
        "contact": contact_data(contact),
        "order": order_data(order),
        "cart": cart_data(cart),
    }
    verdict = "would be sent"
    failed = failing_condition(rule.conditions, context) or missing_recipient(rule, contact)
    if failed is None:
        guards = (policy or SendPolicy.standard()).check(session, attempt_for(rule, contact))
        if guards.outcome == DecisionOutcome.DEFER:
            verdict = f"would be deferred: {guards.reason}"
        elif not guards.allows:
            failed = guards.reason
    if failed is not None:
        verdict = f"would be skipped: {failed}"
    requests: tuple[WebhookPreview, ...] = ()
    if rule.actions:
        assert webhooks is not None
        # The context as a webhook row stores it (a JSON column) and the sender reads it back.
        stored = json.loads(json.dumps(context))
        requests = tuple(
            preview_request(webhooks, action, rule=rule.name, context=stored)
            for action in rule.actions
        )
    if not rule.sends_email:
        return Preview(message=None, verdict=verdict, context=context, requests=requests)
    data = dict(context)
    if links is not None and contact.id is not None:
        # The links a real send would carry (for a notification not written yet).
        sample = Notification(
            idempotency_key="preview",
            rule=rule.name,
            template=rule.template,
            purpose=str(rule.purpose),
            contact_id=contact.id,
            to_address=contact.email or "",
        )
        urls = links.for_notification(sample)
        if urls is not None:
            data["unsubscribe_url"], data["preferences_url"] = urls
    rendered = templates.render(rule.template, data, language=language or contact.language)
    from_name, from_address = parseaddr(mail_from)
    message = build_message(
        rendered,
        from_address=from_address,
        from_name=from_name or None,
        to_address=contact.email or "no-address@invalid",
        extra_headers={"X-CRM-Notify-Rule": rule.name},
    )
    return Preview(message=message, verdict=verdict, context=context, requests=requests)


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
        body = render_body(action, rule=rule, context=context, message_id=message_id)
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


def headers_text(message: EmailMessage) -> str:
    """The message's headers as they would be sent."""
    raw = message.as_string(policy=email.policy.SMTP)
    return raw.split("\r\n\r\n", 1)[0].replace("\r\n", "\n")
