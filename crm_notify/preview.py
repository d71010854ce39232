"""Preview: what a rule would send to a contact, rendered through the real code path.

The email is rendered as delivery renders it; each webhook action's request as its sender
would build it (:mod:`crm_notify.actions.preview`, credentials masked). Nothing is stored or
sent, and fetch steps make no request: the email renders with their fallback data
(:mod:`crm_notify.fetch.preview`).
"""

from __future__ import annotations

import email.policy
import json
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

from sqlmodel import Session, col, or_, select

from crm_notify.actions.preview import WebhookPreview, preview_request
from crm_notify.actions.sender import WebhookActionSender
from crm_notify.commerce.models import Cart, Order
from crm_notify.commerce.state import cart_data, order_data
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import contact_data
from crm_notify.context import stored_event_data
from crm_notify.decisions import attempt_for, failing_condition, missing_recipient
from crm_notify.errors import CrmNotifyError, EventValidationError
from crm_notify.events.emails import normalise_email
from crm_notify.events.models import Event
from crm_notify.events.schemas import SegmentCall
from crm_notify.fetch.preview import FetchPreview, preview_fetches
from crm_notify.guards import SendPolicy
from crm_notify.intake import event_data
from crm_notify.outbox.models import DecisionOutcome, Notification
from crm_notify.render.mime import build_message
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.model import Rule
from crm_notify.rules.triggers import EventTrigger, IdentifyTrigger
from crm_notify.unsubscribe.links import UnsubscribeLinks


class PreviewError(CrmNotifyError):
    """The preview cannot be made (unknown contact, nothing to preview with)."""


@dataclass(frozen=True)
class Preview:
    """A rendered preview and the verdict a real send would get.

    ``verdict`` is ``"would be sent"``, ``"would be skipped: <reason>"`` or ``"would be
    deferred: <reason>"``, for the whole firing. ``message`` is the email (``None`` for a rule
    with only actions); ``requests`` are its webhook actions' requests, in rule order;
    ``fetches`` its fetch steps' requests (not made) and what the email rendered with instead.
    """

    message: EmailMessage | None
    verdict: str
    context: dict[str, Any]
    requests: tuple[WebhookPreview, ...] = ()
    fetches: tuple[FetchPreview, ...] = ()

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
    fetches, fetched = preview_fetches(rule.fetch, {**context, "gate": {}})
    data.update(fetched)
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
    return Preview(
        message=message, verdict=verdict, context=context, requests=requests, fetches=fetches
    )


def headers_text(message: EmailMessage) -> str:
    """The message's headers as they would be sent."""
    raw = message.as_string(policy=email.policy.SMTP)
    return raw.split("\r\n\r\n", 1)[0].replace("\r\n", "\n")
