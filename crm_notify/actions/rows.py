"""The notifications one rule firing writes: its email, and one row per webhook action.

Every row of a firing has its own idempotency key: the email's is the firing's key
(``rule:messageId``, or the timer's), an action's adds ``#webhook:<action name>``, so a
duplicate event or a replayed timer cannot write (or send) any of them twice. The first row
(the email, or the first action of a rule without one) is the firing's *primary* row: it
carries the rule's ``dedupe_key`` value (``unique_key``), whose unique constraint allows one
row per rule, contact and key.

Rate limits count firings, not rows (:func:`firing_key`): a rule that emails and calls an SMS
gateway counts once against its ``limit`` and against ``CRM_NOTIFY_MARKETING_LIMIT``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_notify.actions.model import WEBHOOK_CHANNEL

if TYPE_CHECKING:
    from crm_notify.actions.model import WebhookAction
    from crm_notify.rules.model import Rule

#: What separates the firing's key from the action in an action row's idempotency key.
ACTION_KEY_SEPARATOR = "#webhook:"


def action_key(firing_key: str, action: WebhookAction) -> str:
    """The idempotency key of ``action``'s row for the firing whose key is ``firing_key``."""
    return f"{firing_key}{ACTION_KEY_SEPARATOR}{action.name}"


def firing_key(idempotency_key: str) -> str:
    """The key of the firing a row belongs to (its own key for an email row)."""
    return idempotency_key.partition(ACTION_KEY_SEPARATOR)[0]


def firing_rows(rule: Rule, email: dict[str, Any]) -> list[dict[str, Any]]:
    """The column values of every notification one firing of ``rule`` writes.

    Parameters:
        rule: the rule.
        email: the values of the firing's email row, as it would be written (its
            ``idempotency_key``, ``unique_key``, ``context`` and the rest).

    Returns:
        The email row when the rule sends email, then one row per action (channel
        ``webhook``, ``template`` the action's name, ``to_address`` its URL without query);
        only the first row keeps ``unique_key``.
    """
    rows = [email] if rule.sends_email else []
    for action in rule.actions:
        rows.append(
            {
                **email,
                "idempotency_key": action_key(email["idempotency_key"], action),
                "channel": WEBHOOK_CHANNEL,
                "template": action.name,
                "to_address": action.target,
                "unique_key": None,
            }
        )
    if rows and not rule.sends_email:
        rows[0]["unique_key"] = email.get("unique_key")
    return rows


def send_reason(reason: str, row: dict[str, Any]) -> str:
    """The reason recorded with the ``send`` decision of ``row``: ``reason`` for an email,
    with the action named for a webhook row (``rule matched (webhook sms)``)."""
    if row.get("channel") == WEBHOOK_CHANNEL:
        return f"{reason} (webhook {row['template']})"
    return reason
