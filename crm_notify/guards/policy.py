"""The send policy: which guards a matched rule must pass before a send is written.

This release has one guard, and it is strict: a ``marketing`` rule never sends, because no
consent ledger exists yet to show that the contact agreed. ``transactional`` rules send.
"""

from __future__ import annotations

from crm_notify.contacts.models import Contact
from crm_notify.rules.model import Purpose, Rule


class SendPolicy:
    """Checks a matched rule for a contact; returns a skip reason, or ``None`` to send."""

    def check(self, *, rule: Rule, contact: Contact) -> str | None:
        """Return why ``rule`` must not send to ``contact``, or ``None`` when it may."""
        if rule.purpose == Purpose.MARKETING:
            return "no marketing consent recorded for this contact"
        return None
