"""Quiet hours: sends that fall inside a nightly window in the contact's time zone wait for its end.

The window is wall-clock time where the contact lives (``21:00-08:00``, wrapping midnight when
the end is before the start). Its end is the next local ``end`` time after the send, turned
into UTC with the zone's rules for that day, so daylight-saving changes are handled: an end
that falls in a spring-forward gap ends at the gap (the first instant the clock shows a later
time), and one that occurs twice in a fall-back fold ends at its first occurrence after the send.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import Session

from crm_notify.clock import as_utc
from crm_notify.contacts.models import Contact
from crm_notify.guards.base import Guard, SendAttempt, Verdict
from crm_notify.outbox.models import DecisionOutcome
from crm_notify.rules.model import QuietWindow

#: Contact traits that may name a time zone, in order, after the ``timezone`` column.
TIMEZONE_TRAITS = ("timezone", "time_zone")


def quiet_until(moment_utc: datetime, window: QuietWindow, tz: ZoneInfo) -> datetime | None:
    """When the quiet window holding ``moment_utc`` ends, or ``None`` when it is outside it.

    Parameters:
        moment_utc: the send time (aware; naive is taken as UTC).
        window: the quiet window, in local wall-clock time.
        tz: the contact's time zone.

    Returns:
        The end of the window, as an aware UTC datetime later than ``moment_utc``; ``None``
        when the local time at ``moment_utc`` is not inside the window.
    """
    moment = as_utc(moment_utc)
    local = moment.astimezone(tz)
    if not window.contains(local.time()):
        return None
    day = local.date() if local.time().replace(fold=0) < window.end else local.date() + _DAY
    for _ in range(3):  # a zone could skip a whole day (Samoa, 2011): try the next ones
        end = _first_instant_at(datetime.combine(day, window.end), tz, after=moment)
        if end is not None:
            return end
        day += _DAY
    return None  # unreachable for real zones


def _first_instant_at(wall: datetime, tz: ZoneInfo, *, after: datetime) -> datetime | None:
    """The first UTC instant after ``after`` at which the clock in ``tz`` shows ``wall`` or,
    when ``wall`` is skipped (a gap), the first instant it shows a later time."""
    candidates = sorted({wall.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1)})
    existing = [utc for utc in candidates if _wall(utc, tz) == wall and utc > after]
    if existing:
        return existing[0]
    if any(_wall(utc, tz) == wall for utc in candidates):
        return None  # the time exists but has passed
    # A gap: the wall time falls between the clock's jump; find the jump (to the second).
    low, high = candidates[0], candidates[-1]
    while high - low > _SECOND:
        middle = low + (high - low) / 2
        if _wall(middle, tz) >= wall:
            high = middle
        else:
            low = middle
    start = high.replace(microsecond=0)
    if _wall(start, tz) < wall:
        start += _SECOND
    return start if start > after else None


def _wall(utc: datetime, tz: ZoneInfo) -> datetime:
    return utc.astimezone(tz).replace(tzinfo=None, fold=0)


_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)


def contact_zone(contact: Contact, default: ZoneInfo) -> ZoneInfo:
    """The contact's time zone: its ``timezone`` column, else a ``timezone``/``time_zone`` trait;
    ``default`` when none is given or the name is not a known IANA zone."""
    traits: dict[str, Any] = contact.traits or {}
    for name in (contact.timezone, *(traits.get(key) for key in TIMEZONE_TRAITS)):
        if isinstance(name, str) and 0 < len(name) <= 64:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                continue
    return default


class QuietHoursGuard(Guard):
    """Defers sends that fall inside the quiet window in the contact's time zone.

    A rule's ``quiet_hours`` decides: ``false`` never, ``true`` the configured window, a window
    of its own; unset (``None``), the configured window applies to every purpose but
    ``transactional``. At delivery the guard runs again only for a send a gate held (at each
    attempt): the hold may have moved it into the night.

    Parameters:
        window: the configured window (``CRM_NOTIFY_QUIET_HOURS``); ``None`` turns the default
            and ``quiet_hours: true`` off (rules with a window of their own still apply it).
        default_timezone: IANA zone of contacts that give none (``CRM_NOTIFY_DEFAULT_TIMEZONE``).

    Raises:
        ZoneInfoNotFoundError: ``default_timezone`` is not a known zone.
    """

    name = "quiet_hours"
    at_delivery = False
    after_hold = True

    def __init__(self, *, window: QuietWindow | None, default_timezone: str) -> None:
        self.window = window
        self.default_zone = ZoneInfo(default_timezone)

    def check(self, session: Session, attempt: SendAttempt) -> Verdict | None:
        """Defer ``attempt`` to the end of the quiet window when it falls inside one."""
        window = self.window_for(attempt)
        if window is None:
            return None
        zone = contact_zone(attempt.contact, self.default_zone)
        until = quiet_until(attempt.moment, window, zone)
        if until is None:
            return None
        local_end = until.astimezone(zone)
        details = {"timezone": zone.key, "window": str(window), "until": until.isoformat()}
        # Not Verdict.defer(): its ``until`` parameter takes the detail's name.
        return Verdict(
            DecisionOutcome.DEFER,
            f"quiet hours until {local_end:%H:%M} {zone.key}",
            details,
            until,
        )

    def window_for(self, attempt: SendAttempt) -> QuietWindow | None:
        """The window that applies to ``attempt``, or ``None`` when quiet hours do not."""
        setting = attempt.rule.quiet_hours if attempt.rule is not None else None
        if isinstance(setting, QuietWindow):
            return setting
        if setting is None and attempt.purpose == "transactional":
            return None
        return self.window if setting is not False else None
