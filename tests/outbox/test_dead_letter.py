"""Retries with exponential backoff and equal jitter, and the dead letter: a notification that
keeps failing transiently ends ``failed`` after CRM_NOTIFY_DELIVERY_MAX_AGE from its first
attempt, or after CRM_NOTIFY_MAX_DELIVERY_ATTEMPTS attempts.

Delivery goes through the real SendGrid adapter to an HTTP stand-in on loopback; time is frozen.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from crm_notify.config import Settings, load_settings
from crm_notify.errors import ConfigurationError
from crm_notify.outbox.delivery import RETRY_BASE, RETRY_CAP, retry_backoff
from crm_notify.runtime import Runtime
from tests.esp._api_server import Answer, ApiServer
from tests.outbox._outbox_support import (
    add_notification,
    deliver_until_done,
    history,
    message_ids,
    row,
    sendgrid_settings,
)

START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def api() -> Iterator[ApiServer]:
    """A SendGrid stand-in that is down: every request gets a 500."""
    with ApiServer(default=Answer(500, json={"errors": [{"message": "internal"}]})) as server:
        yield server


@pytest.fixture
def runtime_for(
    make_settings: Callable[..., Settings], api: ApiServer
) -> Iterator[Callable[..., Runtime]]:
    """Builds the runtime (embedded broker, no threads) for settings pointing at ``api``."""
    built: list[Runtime] = []

    def build(**overrides: object) -> Runtime:
        runtime = Runtime.from_settings(sendgrid_settings(make_settings, api, **overrides))
        built.append(runtime)
        return runtime

    yield build
    for runtime in built:
        runtime.close()


# --- the backoff ------------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_up_to_the_cap_with_equal_jitter() -> None:
    # Given the jitter at its two extremes
    low = [retry_backoff(n, uniform=lambda a, b: a) for n in range(1, 12)]
    high = [retry_backoff(n, uniform=lambda a, b: b) for n in range(1, 12)]
    # Then each step is twice the last, from 10 s, capped at 1 h, and the delay is in
    # [step / 2, step]
    steps = [min(RETRY_BASE * 2 ** (n - 1), RETRY_CAP) for n in range(1, 12)]
    assert high == steps
    assert low == [step / 2 for step in steps]
    assert steps[:4] == [timedelta(seconds=s) for s in (10, 20, 40, 80)]
    assert steps[-1] == RETRY_CAP


def test_random_jitter_stays_within_bounds_and_spreads_retries() -> None:
    # Given many notifications failing their 3rd attempt together (step 40 s)
    rng = random.Random(5)
    delays = [retry_backoff(3, uniform=rng.uniform) for _ in range(2000)]
    # Then every delay lies in [20 s, 40 s], and they are spread over that range
    assert all(timedelta(seconds=20) <= d <= timedelta(seconds=40) for d in delays)
    assert max(delays) - min(delays) > timedelta(seconds=18)
    assert len(set(delays)) > 1900
    # And with the default (system) randomness too, for any attempt count
    for attempt in (-3, 0, 1, 7, 60, 10_000):
        step = min(RETRY_BASE * 2 ** (min(max(attempt, 1), 40) - 1), RETRY_CAP)
        for _ in range(200):
            assert step / 2 <= retry_backoff(attempt) <= step


# --- the dead letter ------------------------------------------------------------------------


def test_failing_longer_than_the_max_age_is_dead_lettered(
    runtime_for: Callable[..., Runtime], api: ApiServer
) -> None:
    # Given the default settings (max age 24h, up to 60 attempts) and an ESP that answers 500
    runtime = runtime_for()
    assert runtime.settings.delivery_max_age == timedelta(hours=24)
    nid = add_notification(runtime.engine)
    with freeze_time(START) as clock:
        # When delivery retries as scheduled for as long as it keeps failing
        outcomes = deliver_until_done(runtime.delivery, nid, clock)
        end = datetime.now(UTC)
    # Then it was retried with backoff for exactly 24 hours, the last try at the deadline,
    # and dead-lettered after that (well within the attempt limit)
    attempts = len(outcomes)
    assert outcomes == ["retrying"] * (attempts - 1) + ["failed"]
    # (steps 10 s, 20 s, ... 2560 s, then 1 h; equal jitter waits half to all of a step: 24 h
    # takes 33 attempts at the longest waits, 57 at the shortest)
    assert 33 <= attempts <= 57
    assert end == START + timedelta(hours=24)
    assert len(api.requests) == attempts
    stored = row(runtime.engine, nid)
    assert stored.status == "failed" and stored.attempts == attempts
    assert stored.first_attempt_at == START
    assert stored.last_error == (
        f"dead-lettered after {attempts} attempts in 1d (the max age of 1d): sendgrid: "
        'provider answered 500: {"errors": [{"message": "internal"}]} (status 500)'
    )
    # And the status history ends with the dead letter
    assert history(runtime.engine, nid)[-1] == ("failed", stored.last_error)
    # And every attempt sent the same rendered message
    assert len(set(message_ids(api))) == 1


def test_the_max_age_is_configurable_and_counts_from_the_first_attempt(
    runtime_for: Callable[..., Runtime], api: ApiServer
) -> None:
    # Given CRM_NOTIFY_DELIVERY_MAX_AGE=90m and a notification first tried at 12:00
    runtime = runtime_for(delivery_max_age="90m")
    nid = add_notification(runtime.engine)
    with freeze_time(START) as clock:
        first = runtime.delivery.deliver(nid)
        # Then the first claim started the clock, and later claims leave it alone
        assert first.status == "retrying"
        assert row(runtime.engine, nid).first_attempt_at == START
        clock.tick(first.retry_in or timedelta(0))
        second = runtime.delivery.deliver(nid)
        assert second.status == "retrying"
        assert row(runtime.engine, nid).first_attempt_at == START
        clock.tick(second.retry_in or timedelta(0))
        # When it keeps failing
        outcomes = deliver_until_done(runtime.delivery, nid, clock)
        # Then no attempt starts after 13:30, and the one at 13:30 dead-letters it
        assert datetime.now(UTC) == START + timedelta(minutes=90)
    assert outcomes[-1] == "failed"
    stored = row(runtime.engine, nid)
    assert (stored.last_error or "").startswith(
        f"dead-lettered after {stored.attempts} attempts in 1h30m (the max age of 1h30m): "
    )


def test_the_attempt_limit_ends_retries_before_the_age(
    runtime_for: Callable[..., Runtime], api: ApiServer
) -> None:
    # Given CRM_NOTIFY_MAX_DELIVERY_ATTEMPTS=4 (the age would allow far more)
    runtime = runtime_for(max_delivery_attempts=4)
    nid = add_notification(runtime.engine)
    with freeze_time(START) as clock:
        outcomes = deliver_until_done(runtime.delivery, nid, clock)
    # Then the 4th failure dead-letters it, saying it hit the limit
    assert outcomes == ["retrying", "retrying", "retrying", "failed"]
    stored = row(runtime.engine, nid)
    assert (stored.last_error or "").startswith("dead-lettered after 4 attempts in ")
    assert "(the attempt limit): sendgrid" in (stored.last_error or "")


def test_retry_after_is_a_minimum_and_one_past_the_deadline_dead_letters_at_once(
    runtime_for: Callable[..., Runtime], api: ApiServer
) -> None:
    # Given a max age of 1h and SendGrid rate limiting with Retry-After
    runtime = runtime_for(delivery_max_age="1h")
    nid = add_notification(runtime.engine)
    with freeze_time(START) as clock:
        # When it asks for 300 s (far more than the first 5-10 s step)
        api.respond(
            429, json={"errors": [{"message": "slow down"}]}, headers={"Retry-After": "300"}
        )
        first = runtime.delivery.deliver(nid)
        # Then the retry waits at least that long
        assert first.status == "retrying" and first.retry_in == timedelta(seconds=300)
        assert row(runtime.engine, nid).next_attempt_at == START + timedelta(seconds=300)
        clock.tick(timedelta(seconds=300))
        # When it then asks for more time than the max age leaves (2h > 55 min)
        api.respond(
            429, json={"errors": [{"message": "slow down"}]}, headers={"Retry-After": "7200"}
        )
        second = runtime.delivery.deliver(nid)
    # Then the notification is dead-lettered right away instead of waiting past its age
    assert second.status == "failed"
    assert "(the max age of 1h)" in (row(runtime.engine, nid).last_error or "")
    assert len(api.requests) == 2


def test_a_recovering_esp_delivers_before_the_age_and_nothing_is_dead_lettered(
    runtime_for: Callable[..., Runtime], api: ApiServer
) -> None:
    # Given an ESP that fails three times, then accepts
    runtime = runtime_for(delivery_max_age="2h")
    for _ in range(3):
        api.respond(503, json={"errors": [{"message": "unavailable"}]})
    api.respond(202, headers={"X-Message-Id": "sg-ok"})
    nid = add_notification(runtime.engine)
    with freeze_time(START) as clock:
        outcomes = deliver_until_done(runtime.delivery, nid, clock)
    # Then it is sent on the 4th attempt, once, with the Message-ID of the first
    assert outcomes == ["retrying", "retrying", "retrying", "sent"]
    stored = row(runtime.engine, nid)
    assert (stored.status, stored.esp_message_id, stored.last_error) == ("sent", "sg-ok", None)
    assert len(set(message_ids(api))) == 1 and len(api.requests) == 4


# --- the setting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("24h", timedelta(hours=24)), ("90m", timedelta(minutes=90)), ("2d", timedelta(days=2))],
)
def test_max_age_setting_takes_durations(value: str, expected: timedelta) -> None:
    assert load_settings(None, delivery_max_age=value).delivery_max_age == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "must be a positive duration"),
        ("-1h", "must be a positive duration"),
        ("soon", "invalid duration 'soon'"),
        ("1y", "invalid duration '1y'"),
    ],
)
def test_a_bad_max_age_names_the_variable(value: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(None, delivery_max_age=value)
    assert f"CRM_NOTIFY_DELIVERY_MAX_AGE: {reason}" in str(caught.value)
