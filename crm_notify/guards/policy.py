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
for messages already queued; for a send a gate held, quiet hours too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlmodel import Session

from crm_notify.errors import ConfigurationError
from crm_notify.guards.base import Guard, SendAttempt, Verdict

if TYPE_CHECKING:
    from crm_notify.config import Settings
    from crm_notify.rules.model import Limit, QuietWindow

#: The quiet window when none is configured.
DEFAULT_QUIET_HOURS = "21:00-08:00"


class SendPolicy:
    """Runs ``guards`` in order; the first that does not let a send through decides.

    Parameters:
        guards: the guards, in the order above. An empty policy lets everything through
            (tests of other stages).
    """

    def __init__(self, *, guards: Sequence[Guard] = ()) -> None:
        self.guards = tuple(guards)

    @classmethod
    def standard(
        cls,
        *,
        quiet_hours: QuietWindow | None = None,
        default_timezone: str = "UTC",
        marketing_limit: Limit | None = None,
    ) -> SendPolicy:
        """The policy above, with its options (quiet window 21:00-08:00 when not given)."""
        from crm_notify.guards.consent import ConsentGuard
        from crm_notify.guards.quiet_hours import QuietHoursGuard
        from crm_notify.guards.rate_limit import RateLimitGuard
        from crm_notify.guards.suppression import SuppressionGuard
        from crm_notify.rules.model import parse_quiet_hours

        return cls(
            guards=(
                SuppressionGuard(),
                ConsentGuard(),
                QuietHoursGuard(
                    window=quiet_hours or parse_quiet_hours(DEFAULT_QUIET_HOURS),
                    default_timezone=default_timezone,
                ),
                RateLimitGuard(marketing_limit=marketing_limit),
            )
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SendPolicy:
        """The policy above, configured by ``settings``.

        Raises:
            ConfigurationError: ``CRM_NOTIFY_QUIET_HOURS`` or ``CRM_NOTIFY_MARKETING_LIMIT``
                cannot be read.
        """
        from crm_notify.guards.consent import ConsentGuard
        from crm_notify.guards.quiet_hours import QuietHoursGuard
        from crm_notify.guards.rate_limit import RateLimitGuard
        from crm_notify.guards.suppression import SuppressionGuard
        from crm_notify.rules.model import parse_limit, parse_quiet_hours

        try:
            window = parse_quiet_hours(settings.quiet_hours)
        except ValueError as exc:
            raise ConfigurationError(f"CRM_NOTIFY_QUIET_HOURS: {exc}") from exc
        try:
            limit = parse_limit(settings.marketing_limit) if settings.marketing_limit else None
        except ValueError as exc:
            raise ConfigurationError(f"CRM_NOTIFY_MARKETING_LIMIT: {exc}") from exc
        return cls(
            guards=(
                SuppressionGuard(),
                ConsentGuard(),
                QuietHoursGuard(window=window, default_timezone=settings.default_timezone),
                RateLimitGuard(marketing_limit=limit),
            )
        )

    def check(self, session: Session, attempt: SendAttempt) -> Verdict:
        """The verdict for ``attempt``: the first guard's refusal, or ``send``."""
        for guard in self.guards:
            if attempt.at_delivery and not (
                guard.at_delivery or (attempt.released and guard.after_hold)
            ):
                continue
            verdict = guard.check(session, attempt)
            if verdict is not None and not verdict.allows:
                return verdict
        return Verdict.send()
