"""The guard extension point: one check between "a rule matched" and "a message is queued".

A guard takes keyword-only options when built and has one method, :meth:`Guard.check`, which
returns ``None`` to let a send through, or a :class:`Verdict` that skips or defers it, with the
reason and the inputs that decided it (stored in the decision log).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from sqlmodel import Session

from crm_notify.contacts.models import Contact
from crm_notify.outbox.models import DecisionOutcome
from crm_notify.rules.model import Rule


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guards decided for one send: ``send``, ``skip`` (with a reason) or ``defer``
    (until a time). ``details`` are the inputs that decided it (consent record, limit, count...),
    kept as JSON in the decision log."""

    outcome: DecisionOutcome
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    until: datetime | None = None

    @classmethod
    def send(cls, reason: str = "rule matched", /, **details: Any) -> Verdict:
        """Let the send through."""
        return cls(DecisionOutcome.SEND, reason, details)

    @classmethod
    def skip(cls, reason: str, /, **details: Any) -> Verdict:
        """Do not send; ``reason`` says why."""
        return cls(DecisionOutcome.SKIP, reason, details)

    @classmethod
    def defer(cls, until: datetime, reason: str, /, **details: Any) -> Verdict:
        """Send later, not before ``until`` (UTC); the guards run again then."""
        return cls(DecisionOutcome.DEFER, reason, details, until)

    @property
    def allows(self) -> bool:
        """Whether the send may go ahead now."""
        return self.outcome == DecisionOutcome.SEND


@dataclass(frozen=True, slots=True)
class PlannedSend:
    """A send decided earlier in the same transaction but not written yet (intake writes a
    batch's notifications at its end); rate limits count these too."""

    contact_id: int
    rule: str
    purpose: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SendAttempt:
    """One send the guards are asked about.

    ``at_delivery`` is set when a worker re-checks a queued notification just before handing it
    to the ESP: only the guards that can change their answer meanwhile (consent, suppression)
    run then; and, with ``released`` (a send a gate held), those whose answer depends on the
    time it goes out (quiet hours). ``notification_id`` is the
    notification being delivered, at delivery, and ``to_address`` its recipient when the
    caller has just read it in this transaction (``None``: the guards read it). ``rule`` is
    the loaded rule (``None`` at delivery, but for a send a gate held, and when it was removed
    since).
    """

    rule_name: str
    purpose: str
    contact: Contact
    moment: datetime
    rule: Rule | None = None
    at_delivery: bool = False
    released: bool = False
    notification_id: int | None = None
    to_address: str | None = None
    planned: Sequence[PlannedSend] = ()


class Guard:
    """Base class of guards; subclasses set :attr:`name` and implement :meth:`check`."""

    #: Short name of the guard, shown in decision details.
    name: ClassVar[str] = "guard"
    #: Whether the guard runs again at delivery time (consent and suppression do).
    at_delivery: ClassVar[bool] = False
    #: Whether the guard runs again when a send held by a gate is first delivered (quiet
    #: hours do: the hold may have moved the send into the night).
    after_hold: ClassVar[bool] = False

    def check(self, session: Session, attempt: SendAttempt) -> Verdict | None:
        """Return ``None`` to let ``attempt`` through, or a skip or defer :class:`Verdict`."""
        raise NotImplementedError(f"{type(self).__name__}.check")
