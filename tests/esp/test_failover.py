"""Failover: the circuit breaker opens after a run of transient failures and sends go to the
next ESP, against real HTTP and SMTP servers on loopback; a message whose fate is unknown is
never handed to a second ESP."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.errors import ConfigurationError, EspTransientError
from crm_notify.esp import adapter_from_url
from crm_notify.esp.failover import CircuitBreaker, EspChain
from crm_notify.outbox import repository
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.models import Notification
from crm_notify.render.templates import TemplateStore
from crm_notify.runtime import build_esp_chain
from tests.esp._api_server import Answer, ApiServer
from tests.support.servers import SmtpSink, write_tree

TEMPLATES = {"hello/subject.txt": "Hello", "hello/body.txt": "Your order shipped."}
MESSAGE = (
    "From: shop@example.com\r\nTo: alice@example.com\r\nSubject: Hi\r\n"
    "Message-ID: <m1@example.com>\r\n\r\nHello\r\n"
)


class FakeClock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sendgrid(api: ApiServer) -> str:
    return f"sendgrid://KEY@{api.netloc}?insecure=1"


def _add_notification(engine: Engine, key: str) -> int:
    with Session(engine) as session:
        row = Notification(
            idempotency_key=key,
            rule="r",
            template="hello",
            purpose="transactional",
            to_address="alice@example.com",
            context={},
        )
        assert repository.create_notification(session=session, notification=row, reason="t")
        session.commit()
        assert row.id is not None
        return row.id


def _service(engine: Engine, tmp_path: Path, chain: EspChain) -> DeliveryService:
    write_tree(tmp_path / "templates", TEMPLATES)
    return DeliveryService(
        engine=engine,
        templates=TemplateStore(tmp_path / "templates"),
        esps=chain,
        mail_from="shop@example.com",
        max_attempts=10,
    )


def _row(engine: Engine, notification_id: int) -> Notification:
    with Session(engine) as session:
        row = session.get(Notification, notification_id)
        assert row is not None
        return row


def test_breaker_opens_after_the_threshold_and_half_opens_after_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, cooldown_s=60, clock=clock)
    assert [breaker.record_failure() for _ in range(3)] == [False, False, True]
    assert breaker.is_open and not breaker.allow()
    clock.now += 60
    assert breaker.allow()  # the one trial send
    assert not breaker.allow()  # no second trial while the first runs
    assert breaker.record_failure()  # the trial failed: open for another cooldown
    clock.now += 59
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()
    breaker.record_success()
    assert not breaker.is_open and breaker.allow()


def test_sends_go_to_the_backup_once_the_primary_breaker_opens(smtp_sink: SmtpSink) -> None:
    with ApiServer(default=Answer(503, json={"errors": [{"message": "down"}]})) as primary:
        chain = EspChain(
            [
                ("primary", adapter_from_url(_sendgrid(primary))),
                ("backup", adapter_from_url(smtp_sink.url)),
            ],
            threshold=2,
            cooldown_s=60,
        )
        # The first failure is retried later on the primary (one blip is not an outage)
        with pytest.raises(EspTransientError) as first:
            chain.send_text(MESSAGE)
        assert first.value.esp == "primary" and smtp_sink.messages == []
        # The second opens the breaker: the same call goes on to the backup
        result = chain.send_text(MESSAGE)
        assert (result.esp, len(primary.requests)) == ("backup", 2)
        # While open, the primary is not even asked
        assert chain.send_text(MESSAGE).esp == "backup"
        assert len(primary.requests) == 2
    assert len(smtp_sink.wait_for(2)) == 2


def test_a_permanent_refusal_does_not_fail_over(smtp_sink: SmtpSink) -> None:
    with ApiServer(default=Answer(400, json={"errors": [{"message": "bad from"}]})) as primary:
        chain = EspChain(
            [
                ("primary", adapter_from_url(_sendgrid(primary))),
                ("backup", adapter_from_url(smtp_sink.url)),
            ],
            threshold=1,
        )
        with pytest.raises(Exception, match="400"):
            chain.send_text(MESSAGE)
    assert smtp_sink.messages == []


def test_a_timed_out_send_stays_with_its_esp_even_when_the_breaker_opens(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Given a primary that takes the request but answers too late (it may have the message)
    with ApiServer() as primary:
        primary.respond(202, headers={"X-Message-Id": "late"}, delay_s=3)
        chain = EspChain(
            [
                ("primary", adapter_from_url(_sendgrid(primary) + "&timeout=0.5")),
                ("backup", adapter_from_url(smtp_sink.url)),
            ],
            threshold=1,
        )
        service = _service(engine, tmp_path, chain)
        nid = _add_notification(engine, "k-timeout")
        # When delivery times out
        outcome = service.deliver(nid)
        # Then it waits for a retry, pinned to the primary, and the backup got nothing
        assert outcome.status == "retrying"
        assert _row(engine, nid).esp == "primary"
        assert smtp_sink.messages == []
        # When the retry comes (the primary's breaker is open, the backup is healthy)
        assert chain.esps[0].breaker.is_open
        primary.respond(202, headers={"X-Message-Id": "sg-2"})
        with Session(engine) as session:
            session.get(Notification, nid).next_attempt_at = None  # type: ignore[union-attr]
            session.commit()
        assert service.deliver(nid).status == "sent"
        # Then it went to the primary again, never to the backup
        row = _row(engine, nid)
        assert (row.esp, row.esp_message_id) == ("primary", "sg-2")
        assert len(primary.requests) == 2
    assert smtp_sink.messages == []


def test_delivery_records_the_esp_that_took_the_message(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    with ApiServer(default=Answer(503, json={})) as primary:
        chain = EspChain(
            [
                ("primary", adapter_from_url(_sendgrid(primary))),
                ("backup", adapter_from_url(smtp_sink.url)),
            ],
            threshold=1,
        )
        service = _service(engine, tmp_path, chain)
        ids = [_add_notification(engine, f"k{i}") for i in range(3)]
        assert [service.deliver(nid).status for nid in ids] == ["sent"] * 3
        assert [_row(engine, nid).esp for nid in ids] == ["backup"] * 3
        assert len(primary.requests) == 1  # only the call that opened the breaker
    assert len(smtp_sink.wait_for(3)) == 3


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_gateway_error_pins_its_message_but_opens_the_breaker_for_the_others(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink, status: int
) -> None:
    # Given a primary whose edge answers an error that may come after the message was taken
    with ApiServer(default=Answer(status, json={})) as primary:
        chain = EspChain(
            [
                ("primary", adapter_from_url(_sendgrid(primary))),
                ("backup", adapter_from_url(smtp_sink.url)),
            ],
            threshold=1,
        )
        service = _service(engine, tmp_path, chain)
        ids = [_add_notification(engine, f"g{i}") for i in range(3)]
        outcomes = [service.deliver(nid).status for nid in ids]
    # Then the first stays with the primary (retried there), the next ones go to the backup
    assert outcomes == ["retrying", "sent", "sent"]
    assert [_row(engine, nid).esp for nid in ids] == ["primary", "backup", "backup"]
    assert len(smtp_sink.wait_for(2)) == 2


def test_a_message_pinned_to_an_esp_no_longer_configured_is_not_sent_elsewhere(
    smtp_sink: SmtpSink,
) -> None:
    chain = EspChain([("primary", adapter_from_url(smtp_sink.url))])
    with pytest.raises(EspTransientError, match="'sendgrid', which is no longer configured"):
        chain.send_text(MESSAGE, pinned="sendgrid")
    assert smtp_sink.messages == []


def test_a_permanent_refusal_during_the_trial_closes_the_breaker() -> None:
    clock = FakeClock()
    with ApiServer(default=Answer(503, json={})) as one, ApiServer() as two:
        two.default = Answer(202, headers={"X-Message-Id": "b"})
        chain = EspChain(
            [("one", adapter_from_url(_sendgrid(one))), ("two", adapter_from_url(_sendgrid(two)))],
            threshold=1,
            clock=clock,
        )
        assert chain.send_text(MESSAGE).esp == "two"  # one fails, its breaker opens
        clock.now += 60
        one.default = Answer(400, json={"errors": [{"message": "bad recipient"}]})
        with pytest.raises(Exception, match="400"):
            chain.send_text(MESSAGE)  # the trial: one is up, this message is bad
        one.default = Answer(202, headers={"X-Message-Id": "a"})
        assert chain.send_text(MESSAGE).esp == "one"


def test_esps_setting_builds_the_chain_in_order_with_environment_references(
    make_settings, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SENDGRID_KEY", "SG.secret")
    with ApiServer() as primary:
        primary.respond(202, headers={"X-Message-Id": "sg-1"})
        settings = make_settings(
            esps={
                "primary": "sendgrid://${TEST_SENDGRID_KEY}@" + primary.netloc + "?insecure=1",
                "backup": smtp_sink.url,
            },
            esp_failover_threshold=2,
            esp_failover_cooldown_s=30,
        )
        chain = build_esp_chain(settings)
        assert chain.names == ["primary", "backup"]
        assert chain.esps[0].breaker.threshold == 2
        assert chain.send_text(MESSAGE).esp == "primary"
        assert primary.last.headers["authorization"] == "Bearer SG.secret"


def test_esps_setting_errors_name_the_esp(make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="TEST_UNSET_KEY is not set"):
        build_esp_chain(make_settings(esps={"main": "sendgrid://${TEST_UNSET_KEY}@"}))
    with pytest.raises(ConfigurationError, match=r"CRM_NOTIFY_ESPS.*scheme must be one of"):
        make_settings(esps={"main": "pigeon://x@"})
    with pytest.raises(ConfigurationError, match=r"CRM_NOTIFY_ESPS.*ESP name 'Main!'"):
        make_settings(esps={"Main!": "console:"})
    with pytest.raises(ConfigurationError, match=r"CRM_NOTIFY_ESPS\[mg\]"):
        build_esp_chain(make_settings(esps={"mg": "mailgun://api:KEY@"}))  # no domain


def test_every_esp_resting_is_a_transient_failure() -> None:
    clock = FakeClock()
    with (
        ApiServer(default=Answer(503, json={})) as one,
        ApiServer(default=Answer(503, json={})) as two,
    ):
        chain = EspChain(
            [("one", adapter_from_url(_sendgrid(one))), ("two", adapter_from_url(_sendgrid(two)))],
            threshold=1,
            clock=clock,
        )
        with pytest.raises(EspTransientError):
            chain.send_text(MESSAGE)  # one fails (breaker opens), two fails (breaker opens)
        with pytest.raises(EspTransientError, match="every ESP is resting"):
            chain.send_text(MESSAGE)
        assert (len(one.requests), len(two.requests)) == (1, 1)
        clock.now += timedelta(minutes=1).total_seconds()
        one.default = Answer(202, headers={"X-Message-Id": "ok"})
        assert chain.send_text(MESSAGE).esp == "one"


def test_a_lone_esp_is_never_rested() -> None:
    with ApiServer(default=Answer(503, json={})) as api:
        chain = EspChain([("only", adapter_from_url(_sendgrid(api)))], threshold=1)
        for _ in range(3):
            with pytest.raises(EspTransientError, match="503"):
                chain.send_text(MESSAGE)
        assert len(api.requests) == 3
