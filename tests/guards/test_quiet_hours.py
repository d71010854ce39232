"""Quiet hours: the window's end in the contact's zone, across midnight and DST changes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from freezegun import freeze_time
from sqlmodel import Session

from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.guards.base import SendAttempt
from crm_notify.guards.quiet_hours import QuietHoursGuard, contact_zone, quiet_until
from crm_notify.outbox.models import DecisionOutcome
from crm_notify.rules.model import QuietWindow, Rule, parse_quiet_hours
from crm_notify.rules.triggers import EventTrigger

WARSAW = ZoneInfo("Europe/Warsaw")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = QuietWindow(time(21), time(8))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- quiet_until ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        # Winter, Warsaw is UTC+1
        (utc(2024, 1, 15, 19, 59), None),  # 20:59 local, before the window
        (utc(2024, 1, 15, 20, 0), utc(2024, 1, 16, 7, 0)),  # 21:00 local: the start is inside
        (utc(2024, 1, 15, 21, 30), utc(2024, 1, 16, 7, 0)),  # 22:30 local
        (utc(2024, 1, 15, 23, 0), utc(2024, 1, 16, 7, 0)),  # 00:00 local, the next day
        (utc(2024, 1, 16, 5, 0), utc(2024, 1, 16, 7, 0)),  # 06:00 local, the same morning
        (utc(2024, 1, 16, 6, 59, 59), utc(2024, 1, 16, 7, 0)),  # a second before the end
        (utc(2024, 1, 16, 7, 0), None),  # 08:00 local: the end is outside
        # Summer, UTC+2
        (utc(2024, 7, 1, 19, 30), utc(2024, 7, 2, 6, 0)),
        (utc(2024, 7, 1, 18, 59), None),
        # The night DST starts (2024-03-31 02:00 CET -> 03:00 CEST): 08:00 is already CEST
        (utc(2024, 3, 30, 22, 0), utc(2024, 3, 31, 6, 0)),
        (utc(2024, 3, 31, 1, 30), utc(2024, 3, 31, 6, 0)),  # 03:30 CEST, after the gap
        # The night DST ends (2024-10-27 03:00 CEST -> 02:00 CET): 08:00 is CET again
        (utc(2024, 10, 26, 20, 0), utc(2024, 10, 27, 7, 0)),  # 22:00 CEST
        (utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 7, 0)),  # 02:30 CEST, first pass
        (utc(2024, 10, 27, 1, 30), utc(2024, 10, 27, 7, 0)),  # 02:30 CET, second pass
    ],
)
def test_quiet_until_in_warsaw(moment: datetime, expected: datetime | None) -> None:
    assert quiet_until(moment, NIGHT, WARSAW) == expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        # 2024-03-10 02:00 EST -> 03:00 EDT
        (utc(2024, 3, 10, 2, 0), utc(2024, 3, 10, 12, 0)),  # 21:00 EST on the 9th -> 08:00 EDT
        (utc(2024, 3, 10, 6, 59), utc(2024, 3, 10, 12, 0)),  # 01:59 EST
        (utc(2024, 3, 10, 7, 0), utc(2024, 3, 10, 12, 0)),  # 03:00 EDT
        # 2024-11-03 02:00 EDT -> 01:00 EST
        (utc(2024, 11, 3, 1, 0), utc(2024, 11, 3, 13, 0)),  # 21:00 EDT on the 2nd -> 08:00 EST
        (utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 13, 0)),  # 01:30 EDT
        (utc(2024, 11, 3, 6, 30), utc(2024, 11, 3, 13, 0)),  # 01:30 EST
        (utc(2024, 11, 3, 13, 0), None),
    ],
)
def test_quiet_until_in_new_york(moment: datetime, expected: datetime | None) -> None:
    assert quiet_until(moment, NIGHT, NEW_YORK) == expected


def test_window_ending_in_a_dst_gap_ends_at_the_jump() -> None:
    # Given a window ending at 02:30, which does not exist in Warsaw on 2024-03-31
    window = QuietWindow(time(21), time(2, 30))

    # When a send falls in it, then it waits until the clock jumps (01:00Z = 03:00 CEST)
    assert quiet_until(utc(2024, 3, 30, 22, 0), window, WARSAW) == utc(2024, 3, 31, 1, 0)
    assert quiet_until(utc(2024, 3, 31, 0, 59, 59), window, WARSAW) == utc(2024, 3, 31, 1, 0)
    # And right after the jump the wall clock (03:00) is past the end
    assert quiet_until(utc(2024, 3, 31, 1, 0), window, WARSAW) is None
    # In New York (the jump at 07:00Z on 2024-03-10)
    assert quiet_until(utc(2024, 3, 10, 3, 0), window, NEW_YORK) == utc(2024, 3, 10, 7, 0)


def test_window_ending_in_a_dst_fold_ends_at_its_next_occurrence() -> None:
    # Given a window ending at 01:30, which New York sees twice on 2024-11-03
    window = QuietWindow(time(21), time(1, 30))

    # During the first 01:xx (EDT) it ends at 01:30 EDT; during the second, at 01:30 EST
    assert quiet_until(utc(2024, 11, 3, 5, 10), window, NEW_YORK) == utc(2024, 11, 3, 5, 30)
    assert quiet_until(utc(2024, 11, 3, 6, 10), window, NEW_YORK) == utc(2024, 11, 3, 6, 30)
    # Between the two, the wall clock (01:30-01:59 EDT) is past the end
    assert quiet_until(utc(2024, 11, 3, 5, 45), window, NEW_YORK) is None


def test_window_starting_in_a_dst_gap() -> None:
    # Given 02:30-05:00 on the night 02:00-03:00 does not exist in New York
    window = QuietWindow(time(2, 30), time(5))

    # Then 01:59 EST is outside, and 03:00 EDT inside until 05:00 EDT
    assert quiet_until(utc(2024, 3, 10, 6, 59), window, NEW_YORK) is None
    assert quiet_until(utc(2024, 3, 10, 7, 0), window, NEW_YORK) == utc(2024, 3, 10, 9, 0)


def test_daytime_window_does_not_wrap() -> None:
    window = QuietWindow(time(12), time(14))
    assert quiet_until(utc(2024, 1, 15, 11, 0), window, WARSAW) == utc(2024, 1, 15, 13, 0)
    assert quiet_until(utc(2024, 1, 15, 13, 0), window, WARSAW) is None
    assert quiet_until(utc(2024, 1, 15, 10, 59), window, WARSAW) is None


def test_naive_moment_is_utc() -> None:
    assert quiet_until(datetime(2024, 1, 15, 21, 30), NIGHT, WARSAW) == utc(2024, 1, 16, 7, 0)


def test_every_minute_of_a_dst_week_ends_at_the_local_end() -> None:
    # Given every 7th minute of four days around both DST changes, in both zones
    for zone, start in (
        (WARSAW, utc(2024, 3, 29)),
        (WARSAW, utc(2024, 10, 25)),
        (NEW_YORK, utc(2024, 3, 8)),
        (NEW_YORK, utc(2024, 11, 1)),
    ):
        for step in range(0, 4 * 24 * 60, 7):
            moment = start + timedelta(minutes=step)
            until = quiet_until(moment, NIGHT, zone)
            local = moment.astimezone(zone)
            # Then inside the window the end is 08:00 local, later and within 12 hours
            if NIGHT.contains(local.time()):
                assert until is not None
                assert until > moment
                assert until.astimezone(zone).time() == time(8)
                assert (until - moment).total_seconds() <= 12 * 3600
            else:
                assert until is None


# -- the guard --------------------------------------------------------------------------------


@pytest.fixture
def session() -> Iterator[Session]:
    """A session the guard is handed (it reads nothing from the database)."""
    engine = sa.create_engine("sqlite://")
    with Session(engine) as session:
        yield session
    engine.dispose()


def attempt(
    moment: datetime,
    *,
    purpose: str = "marketing",
    quiet_hours: bool | QuietWindow | None = None,
    with_rule: bool = True,
    timezone: str | None = "Europe/Warsaw",
    traits: dict[str, Any] | None = None,
) -> SendAttempt:
    rule = Rule(
        name="promo",
        trigger=EventTrigger("X"),
        template="t",
        purpose=purpose,
        quiet_hours=quiet_hours,
    )
    contact = Contact(id=1, timezone=timezone, traits=traits or {})
    return SendAttempt(
        rule_name="promo",
        purpose=purpose,
        contact=contact,
        moment=moment,
        rule=rule if with_rule else None,
    )


GUARD = QuietHoursGuard(window=NIGHT, default_timezone="UTC")
LATE = utc(2024, 1, 15, 21, 30)  # 22:30 in Warsaw, 21:30 UTC, 16:30 in New York


def test_guard_defers_marketing_to_the_morning(session: Session) -> None:
    # Given a marketing send at 22:30 Warsaw time; when checked
    verdict = GUARD.check(session, attempt(LATE))

    # Then it is deferred to 08:00 Warsaw time, saying so
    assert verdict is not None
    assert verdict.outcome == DecisionOutcome.DEFER
    assert verdict.until == utc(2024, 1, 16, 7, 0)
    assert verdict.reason == "quiet hours until 08:00 Europe/Warsaw"
    assert verdict.details == {
        "timezone": "Europe/Warsaw",
        "window": "21:00-08:00",
        "until": "2024-01-16T07:00:00+00:00",
    }


def test_guard_uses_now_from_the_clock(session: Session) -> None:
    # Given the clock frozen at 23:00 Warsaw time, summer
    with freeze_time("2024-07-01 21:00:00"):
        verdict = GUARD.check(session, attempt(now()))
    # Then the send waits for 08:00 CEST
    assert verdict is not None and verdict.until == utc(2024, 7, 2, 6, 0)


def test_guard_lets_daytime_sends_through(session: Session) -> None:
    assert GUARD.check(session, attempt(utc(2024, 1, 15, 12, 0))) is None


def test_transactional_is_exempt_unless_the_rule_asks(session: Session) -> None:
    assert GUARD.check(session, attempt(LATE, purpose="transactional")) is None
    assert GUARD.check(session, attempt(LATE, purpose="transactional", with_rule=False)) is None
    verdict = GUARD.check(session, attempt(LATE, purpose="transactional", quiet_hours=True))
    assert verdict is not None and verdict.until == utc(2024, 1, 16, 7, 0)


def test_custom_purpose_and_removed_rule_get_the_default(session: Session) -> None:
    assert GUARD.check(session, attempt(LATE, purpose="newsletter")) is not None
    assert GUARD.check(session, attempt(LATE, with_rule=False)) is not None


def test_rule_can_turn_quiet_hours_off_or_bring_its_own_window(session: Session) -> None:
    assert GUARD.check(session, attempt(LATE, quiet_hours=False)) is None
    own = QuietWindow(time(22, 45), time(6))
    assert GUARD.check(session, attempt(LATE, quiet_hours=own)) is None  # 22:30 is before it
    verdict = GUARD.check(session, attempt(utc(2024, 1, 15, 22, 0), quiet_hours=own))
    assert verdict is not None and verdict.until == utc(2024, 1, 16, 5, 0)
    assert verdict.details["window"] == "22:45-06:00"


def test_no_configured_window_turns_the_default_off(session: Session) -> None:
    guard = QuietHoursGuard(window=parse_quiet_hours(""), default_timezone="UTC")
    assert guard.check(session, attempt(LATE)) is None
    assert guard.check(session, attempt(LATE, quiet_hours=True)) is None
    own = QuietWindow(time(21), time(8))
    assert guard.check(session, attempt(LATE, quiet_hours=own)) is not None


def test_time_zone_from_traits_then_default(session: Session) -> None:
    # Given no zone column but a time_zone trait for New York: 16:30 there, not quiet
    assert (
        GUARD.check(session, attempt(LATE, timezone=None, traits={"time_zone": "America/New_York"}))
        is None
    )
    # Given a timezone trait for Warsaw: quiet
    warsaw = attempt(LATE, timezone=None, traits={"timezone": "Europe/Warsaw"})
    assert GUARD.check(session, warsaw) is not None
    # Given nothing: the default (UTC, 21:30: quiet, until 08:00 UTC)
    verdict = GUARD.check(session, attempt(LATE, timezone=None))
    assert verdict is not None
    assert verdict.reason == "quiet hours until 08:00 UTC"
    assert verdict.until == utc(2024, 1, 16, 8, 0)


@pytest.mark.parametrize("bad", ["Mars/Olympus", "../../etc/passwd", "", "x" * 300, "UTC\x00"])
def test_invalid_zone_falls_back(bad: str) -> None:
    contact = Contact(id=1, timezone=bad, traits={"timezone": 5})
    assert contact_zone(contact, NEW_YORK) is NEW_YORK
    contact = Contact(id=1, timezone=bad, traits={"time_zone": "Europe/Warsaw"})
    assert contact_zone(contact, NEW_YORK).key == "Europe/Warsaw"


def test_unknown_default_zone_is_refused() -> None:
    with pytest.raises(Exception, match="Nowhere"):
        QuietHoursGuard(window=NIGHT, default_timezone="Nowhere/Land")
