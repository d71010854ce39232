"""The send policy: the guards every send passes, in order, at decision and at delivery time.

The whole policy, in one place:

1. **Suppression** (skip): an address on the suppression list for every purpose is never
   mailed, transactional mail included; one suppressed for a purpose gets nothing of it.
2. **Consent** (skip): ``transactional`` mail needs no consent; every other purpose
   (``marketing`` and custom purposes) needs the contact's latest consent record for it to be a
   grant. No record means no consent.
3. **Quiet hours** (defer): non-transactional mail (and transactional mail of a rule that asks)
   that falls inside the quiet window in the contact's time zone waits for the window's end.
4. **Rate limits** (drop, defer or digest, as the rule says): per contact and rule, and per
   contact across all non-transactional mail.

At delivery time, suppression and consent run again, so a withdrawal or a bounce takes effect
for messages already queued.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session

from crm_notify.guards.base import Guard, SendAttempt, Verdict


class SendPolicy:
    """Runs ``guards`` in order; the first that does not let a send through decides.

    Parameters:
        guards: the guards, in the order above. An empty policy lets everything through
            (tests of other stages).
    """

    def __init__(self, *, guards: Sequence[Guard] = ()) -> None:
        self.guards = tuple(guards)

    def check(self, session: Session, attempt: SendAttempt) -> Verdict:
        """The verdict for ``attempt``: the first guard's refusal, or ``send``."""
        for guard in self.guards:
            if attempt.at_delivery and not guard.at_delivery:
                continue
            verdict = guard.check(session, attempt)
            if verdict is not None and not verdict.allows:
                return verdict
        return Verdict.send()
