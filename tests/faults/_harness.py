"""What the fault-injection tests share: their rules and templates, a shop population with and
without consent, a client that retries as the Segment SDKs do, an SMTP sink that can hold a
send at a chosen step, and the check that every notification was delivered exactly once.

The check counts from both ends: the database (every expected notification exists once, by its
idempotency key, and is ``sent``; no other exists) and the ESP, an SMTP sink or an HTTP API
stand-in (every notification's ``X-CRM-Notify-Id`` arrived exactly once, with the Message-ID
stored for it; nothing reached a suppressed address, and no marketing mail reached a contact
without marketing consent).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.engine import Engine

from crm_notify.auth import create_api_key
from crm_notify.db import session_scope
from crm_notify.guards.suppression import suppress
from tests.support.servers import SmtpSink, write_tree
from tests.support.service import service_env

#: The rules of the fault tests: a receipt for everyone (transactional), an offer only for
#: contacts with marketing consent, a "shipped" email per order, a delayed reminder (a timer),
#: and a delayed offer capped at one per contact and day (timers racing on a cap).
RULES = """
rules:
  - name: shipped
    trigger: {order_status: {to: shipped}}
    template: fault_receipt
    purpose: transactional
  - name: receipt
    trigger: {event: Fault Receipt}
    template: fault_receipt
    purpose: transactional
  - name: promo
    trigger: {event: Fault Receipt}
    template: fault_promo
    purpose: marketing
  - name: reminder
    trigger: {event: Fault Reminder}
    delay: 2s
    template: fault_receipt
    purpose: transactional
  - name: capped-offer
    trigger: {event: Fault Offer}
    delay: 2s
    template: fault_promo
    purpose: marketing
    limit: 1/1d
"""

TEMPLATES = {
    "fault_receipt/subject.txt": "Receipt {{ event.properties.n }} for {{ contact.email }}",
    "fault_receipt/body.txt": "Thanks. Reference {{ event.message_id }}.\n",
    "fault_promo/subject.txt": "An offer ({{ event.properties.n }})",
    "fault_promo/body.txt": "Ref {{ event.message_id }}. Unsubscribe: {{ unsubscribe_url }}\n",
}

#: Seconds after which a ``sending`` or ``queued`` row counts as lost (the relay requeues it).
#: Short, so a killed worker's sends come back within the test; far above one send here.
LEASE_S = 3.0


def fault_env(tmp_path: Path, *, database_url: str, esp_url: str, **extra: str) -> dict[str, str]:
    """The environment of every crm-notify process of a test: the fault rules, short relay
    and scheduler intervals and lease, no quiet hours (the tests run at any hour)."""
    write_tree(tmp_path / "rules", {"faults.yaml": RULES})
    write_tree(tmp_path / "templates", TEMPLATES)
    return service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_ESP_URL": esp_url,
            "CRM_NOTIFY_RULES_DIR": str(tmp_path / "rules"),
            "CRM_NOTIFY_TEMPLATES_DIR": str(tmp_path / "templates"),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
            "CRM_NOTIFY_MAIL_FROM": "Shop <orders@shop.example>",
            "CRM_NOTIFY_QUIET_HOURS": "",
            "CRM_NOTIFY_RELAY_INTERVAL_S": "0.5",
            "CRM_NOTIFY_SCHEDULER_INTERVAL": "0.5",
            "CRM_NOTIFY_SENDING_LEASE_S": str(LEASE_S),
            "CRM_NOTIFY_SECRET_KEY": "fault-tests-secret-key-0123456789abcdef",
            **extra,
        }
    )


def wait_until(what: str, condition: Callable[[], bool], *, timeout_s: float) -> float:
    """Poll ``condition`` until it holds; return the seconds it took (AssertionError naming
    ``what`` after ``timeout_s``)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


# -- the shop ----------------------------------------------------------------------------------


@dataclass
class Population:
    """``size`` contacts: every third has marketing consent, every third refused it, the rest
    never said; plus one address on the suppression list (which also granted consent)."""

    prefix: str
    size: int

    def email(self, index: int) -> str:
        return f"{self.prefix}-{index}@example.com"

    @property
    def blocked(self) -> str:
        return f"{self.prefix}-blocked@example.com"

    def consented(self, index: int) -> bool:
        return index % 3 == 0

    def identify(self, index: int) -> dict[str, Any]:
        traits: dict[str, Any] = {"email": self.email(index), "first_name": f"C{index}"}
        if index % 3 == 0:
            traits["marketing_consent"] = True
        elif index % 3 == 1:
            traits["marketing_consent"] = False
        return {
            "type": "identify",
            "userId": f"{self.prefix}-{index}",
            "traits": traits,
            "messageId": f"{self.prefix}-id-{index}",
        }

    def identify_blocked(self) -> dict[str, Any]:
        return {
            "type": "identify",
            "userId": f"{self.prefix}-blocked",
            "traits": {"email": self.blocked, "marketing_consent": True},
            "messageId": f"{self.prefix}-id-blocked",
        }

    def track(
        self,
        index: int | str,
        n: int,
        *,
        event: str = "Fault Receipt",
        timestamp: datetime | None = None,
        **properties: Any,
    ) -> dict[str, Any]:
        call: dict[str, Any] = {
            "type": "track",
            "userId": f"{self.prefix}-{index}",
            "event": event,
            "properties": {"n": n, **properties},
            "messageId": f"{self.prefix}-{event.split()[-1].lower()}-{index}-{n}",
        }
        if timestamp is not None:
            call["timestamp"] = timestamp.isoformat()
        return call

    def identify_then_order_once(self) -> list[dict[str, Any]]:
        """Every contact identified, then one order each, then the blocked contact's two."""
        calls = [self.identify(i) for i in range(self.size)]
        calls += [self.track(i, 0) for i in range(self.size)]
        return [*calls, self.identify_blocked(), self.track("blocked", 0)]

    def expected_keys(self, calls: Iterable[dict[str, Any]]) -> set[str]:
        """The idempotency keys of the notifications ``calls`` must produce (receipt and
        promo rules; the blocked contact gets nothing)."""
        keys = set()
        for call in calls:
            if call["type"] != "track" or call["event"] != "Fault Receipt":
                continue
            who = call["userId"].rsplit("-", 1)[-1]
            if who == "blocked":
                continue
            keys.add(f"receipt:{call['messageId']}")
            if self.consented(int(who)):
                keys.add(f"promo:{call['messageId']}")
        return keys

    def may_receive(self, rule: str, address: str) -> bool:
        """Whether ``address`` may get mail of ``rule`` at all."""
        address = address.lower()
        if address == self.blocked:
            return False
        if rule in ("promo", "capped-offer"):
            local = address.split("@")[0]
            who = local.rsplit("-", 1)[-1]
            return who.isdigit() and self.consented(int(who))
        return True


def set_up_database(engine: Engine, population: Population) -> str:
    """Put the blocked address on the suppression list; return a new API key."""
    with session_scope(engine) as session:
        suppress(
            session=session,
            email=population.blocked,
            reason="complaint",
            created_by="fault-test",
            detail=None,
        )
    return create_api_key(f"fault-{population.prefix}", engine=engine)


@dataclass
class Client:
    """Posts batches to ``/v1/batch`` and retries a batch until it is acknowledged (2xx), as
    the Segment SDKs do: after a connection error, a timeout or a 5xx answer (a 4xx fails the
    test). Records what it saw."""

    key: str
    retry_every_s: float = 0.2
    timeout_s: float = 5.0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0

    def send(self, url: str, calls: Sequence[dict[str, Any]], *, give_up_s: float = 90) -> int:
        """Post ``calls`` as one batch until acknowledged; return the attempts it took."""
        started = time.monotonic()
        attempts = 0
        with httpx.Client(timeout=self.timeout_s) as http:
            while True:
                attempts += 1
                sent_at = time.monotonic()
                try:
                    response = http.post(
                        f"{url}/v1/batch", json={"batch": list(calls)}, auth=(self.key, "")
                    )
                except httpx.HTTPError as exc:
                    self.errors[type(exc).__name__] += 1
                else:
                    self.statuses[response.status_code] += 1
                    self.slowest_s = max(self.slowest_s, time.monotonic() - sent_at)
                    if response.status_code < 300:
                        return attempts
                    assert response.status_code >= 500, response.text
                if time.monotonic() - started > give_up_s:
                    raise AssertionError(f"batch not acknowledged in {give_up_s}s")
                time.sleep(self.retry_every_s)


# -- the ESP -----------------------------------------------------------------------------------


@dataclass
class HoldingSmtpSink(SmtpSink):
    """An SMTP sink that can hold sends, for a test to kill a worker at a known step.

    - ``hold_rcpt``: while set, each RCPT waits (``held_at_rcpt`` counts the waiting ones):
      a send held there has not been accepted, so killing its worker must not duplicate it.
    - ``hold_next_data``: the next message is recorded (accepted, as far as the ESP is
      concerned), then its "250" reply waits until ``release_data`` is set (``held_id`` names
      it): a worker killed then never learns that the message was accepted, the one window
      for a repeat.
    - ``rcpt_delay_s``: every RCPT waits this long (a slower ESP, so kills land mid-send).
    """

    hold_rcpt: bool = False
    held_at_rcpt: int = 0
    hold_next_data: bool = False
    data_held: bool = False
    held_id: int | None = None
    release_data: bool = False
    rcpt_delay_s: float = 0.0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rcpt_delay_s:
            await asyncio.sleep(self.rcpt_delay_s)
        if self.hold_rcpt:
            self.held_at_rcpt += 1
            try:
                while self.hold_rcpt:
                    await asyncio.sleep(0.01)
            finally:
                self.held_at_rcpt -= 1
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        hold = self.hold_next_data
        self.hold_next_data = False
        reply = await super().handle_DATA(server, session, envelope)
        if hold:
            self.held_id = int(self.messages[-1]["X-CRM-Notify-Id"])
            self.data_held = True
            while not self.release_data:
                await asyncio.sleep(0.01)
        return reply


# -- the check ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: int
    key: str
    rule: str
    status: str
    to_address: str
    message_id: str | None
    attempts: int


def notifications(engine: Engine) -> list[Row]:
    with engine.connect() as connection:
        result = connection.execute(
            sa.text(
                "SELECT id, idempotency_key, rule, status, to_address, message_id, attempts "
                "FROM notification ORDER BY id"
            )
        )
        return [Row(*row) for row in result]


def history(engine: Engine, notification_id: int) -> list[str]:
    """The status changes of one notification, oldest first, as ``"at status: detail"``."""
    with engine.connect() as connection:
        result = connection.execute(
            sa.text(
                "SELECT at, status, detail FROM notification_status_change "
                "WHERE notification_id = :id ORDER BY id"
            ),
            {"id": notification_id},
        )
        return [f"{at} {status}: {detail}" for at, status, detail in result]


def count_by_status(engine: Engine) -> Counter[str]:
    return Counter(row.status for row in notifications(engine))


def all_sent(engine: Engine, expected: int) -> Callable[[], bool]:
    """A condition: ``expected`` notifications exist and every one is ``sent``."""

    def check() -> bool:
        statuses = count_by_status(engine)
        return sum(statuses.values()) >= expected and statuses["sent"] == sum(statuses.values())

    return check


@dataclass(frozen=True)
class Received:
    """One message as the ESP got it: our notification id, the recipients, the Message-ID."""

    notification_id: int
    recipients: list[str]
    message_id: str | None


def smtp_received(sink: SmtpSink) -> list[Received]:
    """What the SMTP sink received, in order."""
    return [
        Received(int(message["X-CRM-Notify-Id"]), recipients, message["Message-ID"])
        for message, (_sender, recipients) in zip(
            list(sink.messages), list(sink.envelopes), strict=True
        )
    ]


@dataclass(frozen=True)
class DeliveryReport:
    notifications: int
    messages: int
    repeated: dict[int, int]
    attempts: Counter[int]


def check_exactly_once(
    engine: Engine,
    received: SmtpSink | Callable[[], list[Received]],
    *,
    expected_keys: set[str],
    population: Population,
    may_repeat: Callable[[Row], bool] = lambda _row: False,
    settle_s: float = 0.5,
) -> DeliveryReport:
    """Assert no lost, no duplicated and no unconsented send (see the module docstring).

    ``received`` is the SMTP sink, or a function listing what another ESP stand-in accepted.
    ``may_repeat`` names notifications that may have reached the ESP twice: only those the
    test killed after the ESP accepted them and before ``sent`` was recorded (the design's
    one duplicate window); every copy must then be the stored message (same Message-ID).
    Waits ``settle_s`` first so that a late repeat would be seen.
    """
    time.sleep(settle_s)
    rows = notifications(engine)
    keys = Counter(row.key for row in rows)
    assert set(keys) == expected_keys, (
        f"lost: {sorted(expected_keys - set(keys))[:10]}, "
        f"unexpected: {sorted(set(keys) - expected_keys)[:10]}"
    )
    assert max(keys.values()) == 1
    not_sent = [row for row in rows if row.status != "sent"]
    assert not not_sent, f"not sent: {not_sent[:5]}"
    by_id = {row.id: row for row in rows}
    messages = smtp_received(received) if isinstance(received, SmtpSink) else received()
    copies: dict[int, list[Received]] = defaultdict(list)
    for message in messages:
        copies[message.notification_id].append(message)
        row = by_id.get(message.notification_id)
        assert row is not None, f"the ESP got notification {message.notification_id}, unknown"
        assert [r.lower() for r in message.recipients] == [row.to_address.lower()]
        for recipient in message.recipients:
            assert population.may_receive(row.rule, recipient), (row.rule, recipient)
    assert set(copies) == set(by_id), f"never received: {sorted(set(by_id) - set(copies))}"
    repeated = {nid: len(ms) for nid, ms in copies.items() if len(ms) > 1}
    for notification_id, got in copies.items():
        row = by_id[notification_id]
        assert {m.message_id for m in got} == {row.message_id}
        if len(got) > 1:
            assert may_repeat(row), (
                f"notification {notification_id} sent {len(got)} times; its history:\n"
                + "\n".join(history(engine, notification_id))
            )
    return DeliveryReport(
        notifications=len(rows),
        messages=len(messages),
        repeated=repeated,
        attempts=Counter(row.attempts for row in rows),
    )


def utc(seconds_ago: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds_ago)
