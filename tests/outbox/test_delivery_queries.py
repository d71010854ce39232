"""The SQL statements one delivery runs: a fixed few, none of them reading again what the claim
has just read.

A delivery is two transactions. The claim: claim the row (``UPDATE ... RETURNING``), its
``sending`` status entry, the contact and the suppression entries of its addresses (the
guards' re-check; marketing mail also its consent), the rendered message. After the ESP took
it: ``sent`` (``UPDATE ... RETURNING`` what the lifecycle event reports), its status entry and
the ``notification.sent`` lifecycle event. Each statement is a round trip and CPU in every
worker: a statement that comes back (the notification selected again, the lifecycle event's
facts read separately) fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.esp import adapter_from_url
from crm_notify.guards.consent import record_consent
from crm_notify.guards.policy import SendPolicy
from crm_notify.guards.suppression import suppress
from crm_notify.outbox import repository
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.models import Notification
from crm_notify.render.templates import TemplateStore
from crm_notify.unsubscribe.links import UnsubscribeLinks
from tests.support.servers import SmtpSink, write_tree

TEMPLATES = {
    "receipt/subject.txt": "Your receipt {{ order.order_id }}",
    "receipt/body.txt": "Thanks, {{ contact.first_name }}.",
    "receipt/body.html": "<p>Thanks, {{ contact.first_name }}.</p>",
    "promo/subject.txt": "Our sale",
    "promo/body.txt": "Sale! Unsubscribe: {{ unsubscribe_url }}",
}

#: The statements of one transactional delivery, in order (their first words).
TRANSACTIONAL = [
    "UPDATE notification",  # the claim, returning the row
    "INSERT INTO notification_status_change",  # sending
    "SELECT contact",  # the guards' re-check: the contact ...
    "SELECT suppression",  # ... and the suppression entries of its addresses
    "UPDATE notification",  # the rendered message, kept for retries
    "UPDATE notification",  # sent, returning what the lifecycle event reports
    "INSERT INTO notification_status_change",  # sent
    "INSERT INTO lifecycle_event",  # notification.sent
]
#: A marketing delivery also reads the contact's consent.
MARKETING = [*TRANSACTIONAL[:4], "SELECT consent_record", *TRANSACTIONAL[4:]]


def _contact(session: Session, email: str) -> int:
    contact = Contact(email=email, user_id=email)
    session.add(contact)
    session.flush()
    assert contact.id is not None
    record_consent(
        session=session, contact_id=contact.id, purpose="marketing", granted=True, source="api"
    )
    return contact.id


def _notifications(engine: Engine, purpose: str, count: int) -> list[int]:
    """``count`` notifications of ``purpose``, each to its own contact; their ids."""
    ids = []
    with Session(engine) as session:
        for number in range(count):
            email = f"{purpose}{number}@example.com"
            notification = Notification(
                idempotency_key=f"{purpose}-{number}",
                rule="sale" if purpose == "marketing" else "order-shipped",
                template="promo" if purpose == "marketing" else "receipt",
                purpose=purpose,
                contact_id=_contact(session, email),
                to_address=email,
                context={"contact": {"first_name": "Alice"}, "order": {"order_id": "A1"}},
            )
            assert repository.create_notification(
                session=session, notification=notification, reason="test"
            )
            session.flush()
            assert notification.id is not None
            ids.append(notification.id)
        session.commit()
    return ids


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements run on ``engine`` meanwhile (transaction control left out)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _service(engine: Engine, tmp_path: Path, smtp_sink: SmtpSink) -> DeliveryService:
    write_tree(tmp_path / "templates", TEMPLATES)
    return DeliveryService(
        engine=engine,
        templates=TemplateStore(tmp_path / "templates"),
        adapter=adapter_from_url(smtp_sink.url),
        mail_from="Shop <shop@example.com>",
        max_attempts=3,
        policy=SendPolicy.standard(),
        unsubscribe=UnsubscribeLinks(base_url="https://n.example", secret_key=b"k" * 32),
    )


def _kinds(statements: list[str]) -> list[str]:
    """Each statement as its verb and table (``SELECT contact``, ``UPDATE notification``)."""
    kinds = []
    for statement in statements:
        verb = statement.split()[0].upper()
        if verb == "SELECT":
            table = statement.split(" FROM ", 1)[1].split()[0]
            kinds.append(f"SELECT {table}")
        elif verb == "INSERT":
            kinds.append(" ".join(statement.split()[:3]))
        else:
            kinds.append(" ".join(statement.split()[:2]))
    return kinds


def test_a_delivery_runs_a_fixed_few_statements(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Given transactional and marketing notifications, and a first delivery done (warm-up)
    service = _service(engine, tmp_path, smtp_sink)
    for purpose, expected in (("transactional", TRANSACTIONAL), ("marketing", MARKETING)):
        first, second = _notifications(engine, purpose, 2)
        assert service.deliver(first).status == "sent"
        # When the next one is delivered
        with _statements(engine) as statements:
            assert service.deliver(second).status == "sent"
        # Then it runs exactly the expected statements: nothing read twice
        assert _kinds(statements) == expected, "\n".join(statements)
    assert len(smtp_sink.wait_for(4)) == 4


def test_the_recipient_the_claim_read_is_the_one_checked_for_suppression(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Given a notification queued to an address that is then suppressed, while its contact
    # has moved to a new address
    (nid,) = _notifications(engine, "transactional", 1)
    with session_scope(engine) as session:
        notification = session.get(Notification, nid)
        assert notification is not None and notification.to_address is not None
        contact = session.get(Contact, notification.contact_id)
        assert contact is not None
        contact.email = "moved@example.com"
        suppress(
            session=session, email=notification.to_address, reason="hard_bounce", created_by="esp"
        )
    # When it is delivered
    with _statements(engine) as statements:
        outcome = _service(engine, tmp_path, smtp_sink).deliver(nid)
    # Then it is cancelled and nothing is sent, with the address from the claim (the
    # notification is not read again)
    assert outcome.status == "cancelled"
    assert smtp_sink.messages == []
    assert not [s for s in statements if re.match(r"SELECT .* FROM notification\b", s)]
