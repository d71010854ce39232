"""Delivery re-checks consent, adds unsubscribe links and headers, suppresses hard bounces."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.contacts.models import Contact
from crm_notify.esp import adapter_from_url
from crm_notify.guards.consent import ConsentGuard, record_consent
from crm_notify.guards.models import Suppression
from crm_notify.guards.policy import SendPolicy
from crm_notify.outbox import repository
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.models import Decision, Notification
from crm_notify.render.templates import TemplateStore
from crm_notify.unsubscribe.links import UnsubscribeLinks
from crm_notify.unsubscribe.tokens import UnsubscribeToken, read_token
from tests.support.servers import SmtpSink, write_tree

SECRET = b"0123456789abcdef0123456789abcdef"
TEMPLATES = {
    "promo/subject.txt": "Our sale",
    "promo/body.txt": (
        "Sale!\nUnsubscribe: {{ unsubscribe_url }}\nPreferences: {{ preferences_url }}"
    ),
    "receipt/subject.txt": "Your receipt",
    "receipt/body.txt": "Thanks.",
}


def _setup(engine: Engine, purpose: str = "marketing", granted: bool | None = True) -> int:
    """A contact (with consent as given) and a queued notification to them; its id."""
    with Session(engine) as session:
        contact = Contact(email="alice@example.com", user_id="u1")
        session.add(contact)
        session.flush()
        assert contact.id is not None
        if granted is not None:
            record_consent(
                session=session,
                contact_id=contact.id,
                purpose="marketing",
                granted=granted,
                source="api",
            )
        notification = Notification(
            idempotency_key="k1",
            rule="sale",
            template="promo" if purpose == "marketing" else "receipt",
            purpose=purpose,
            contact_id=contact.id,
            to_address="alice@example.com",
            context={"contact": {"first_name": "Alice"}},
        )
        assert repository.create_notification(
            session=session, notification=notification, reason="test"
        )
        session.commit()
        assert notification.id is not None
        return notification.id


def _service(
    engine: Engine, tmp_path: Path, url: str, base_url: str = "https://n.example"
) -> DeliveryService:
    write_tree(tmp_path / "templates", TEMPLATES)
    return DeliveryService(
        engine=engine,
        templates=TemplateStore(tmp_path / "templates"),
        adapter=adapter_from_url(url),
        mail_from="Shop <shop@example.com>",
        max_attempts=3,
        policy=SendPolicy(guards=[ConsentGuard()]),
        unsubscribe=UnsubscribeLinks(base_url=base_url, secret_key=SECRET),
    )


def _withdraw(engine: Engine) -> None:
    with Session(engine) as session:
        contact = session.exec(select(Contact)).one()
        assert contact.id is not None
        record_consent(
            session=session,
            contact_id=contact.id,
            purpose="marketing",
            granted=False,
            source="unsubscribe_link",
        )
        session.commit()


def test_consent_withdrawn_after_queueing_cancels_at_delivery(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Given a marketing notification queued while consent was granted
    nid = _setup(engine)
    service = _service(engine, tmp_path, smtp_sink.url)
    # When the contact unsubscribes before the worker gets to it
    _withdraw(engine)
    outcome = service.deliver(nid)
    # Then it is cancelled with the reason, and nothing reaches the SMTP server
    assert outcome.status == "cancelled"
    assert smtp_sink.messages == []
    with Session(engine) as session:
        row = session.get(Notification, nid)
        assert row is not None and row.status == "cancelled" and row.message is None
        decision = session.exec(select(Decision).order_by(col(Decision.id).desc())).first()
    assert decision is not None and decision.notification_id == nid
    assert decision.reason.startswith("cancelled at delivery: marketing consent withdrawn ")
    assert decision.details is not None and decision.details["purpose"] == "marketing"
    # And a second delivery attempt does nothing
    assert service.deliver(nid).status == "skipped"


def test_rendered_on_an_earlier_attempt_is_still_rechecked(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Given a first attempt that rendered and then failed transiently
    nid = _setup(engine)
    service = _service(engine, tmp_path, smtp_sink.url)
    smtp_sink.reject_with = "451 try later"
    assert service.deliver(nid).status == "retrying"
    smtp_sink.reject_with = None
    with Session(engine) as session:
        row = session.get(Notification, nid)
        assert row is not None and row.message is not None
        row.next_attempt_at = None
        session.add(row)
        session.commit()
    # When consent is withdrawn before the retry
    _withdraw(engine)
    # Then the retry is cancelled, the stored message is not sent
    assert service.deliver(nid).status == "cancelled"
    assert smtp_sink.messages == []


def test_marketing_mail_carries_signed_links_and_one_click_headers(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    nid = _setup(engine)
    assert _service(engine, tmp_path, smtp_sink.url).deliver(nid).status == "sent"
    (message,) = smtp_sink.wait_for(1)
    raw = dict(message.raw_items())
    header = " ".join(str(raw["List-Unsubscribe"]).split())
    # A plain <https://...> value: an RFC 2047-encoded one is ignored by Gmail
    assert header.startswith("<https://n.example/unsubscribe/") and header.endswith(">")
    assert "=?" not in header
    assert raw["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = header[1:-1]
    token = url.rpartition("/")[2]
    with Session(engine) as session:
        contact = session.exec(select(Contact)).one()
    assert read_token(SECRET, token) == UnsubscribeToken(contact.id or 0, "marketing", nid)
    body = message.get_content()
    assert f"Unsubscribe: {url}" in body
    assert f"Preferences: https://n.example/preferences/{token}" in body


def test_transactional_mail_needs_no_consent_and_gets_no_unsubscribe_header(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    nid = _setup(engine, purpose="transactional", granted=None)
    assert _service(engine, tmp_path, smtp_sink.url).deliver(nid).status == "sent"
    (message,) = smtp_sink.wait_for(1)
    assert "List-Unsubscribe" not in message
    assert "List-Unsubscribe-Post" not in message


def test_long_public_url_gives_one_plain_header_line(engine: Engine, tmp_path: Path) -> None:
    # Given a public URL too long for one folded line
    base = "https://notifications.a-rather-long-shop-domain.example/crm-notify"
    nid = _setup(engine)
    service = _service(engine, tmp_path, f"file://{tmp_path / 'outbox'}", base_url=base)
    assert service.deliver(nid).status == "sent"
    with Session(engine) as session:
        row = session.get(Notification, nid)
        assert row is not None and row.message is not None
        head = row.message.partition("\r\n\r\n")[0]
    # Then the stored message has the header on one plain line, never RFC 2047-encoded
    (line,) = [x for x in head.split("\r\n") if x.startswith("List-Unsubscribe:")]
    assert line.startswith(f"List-Unsubscribe: <{base}/unsubscribe/")
    assert (
        "=?" not in head.partition("List-Unsubscribe:")[2].partition("\r\nList-Unsubscribe-Post")[0]
    )


@pytest.mark.parametrize(
    ("reply", "suppressed"),
    [
        ("550 5.1.1 <alice@example.com>: Recipient address rejected: User unknown", True),
        ("553 5.1.3 mailbox name not allowed", True),
        ("550 5.7.1 Relaying denied", False),
        ("554 5.7.1 rejected by policy", False),
    ],
)
def test_hard_bounce_suppresses_the_address(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink, reply: str, suppressed: bool
) -> None:
    nid = _setup(engine)
    smtp_sink.reject_with = reply
    assert _service(engine, tmp_path, smtp_sink.url).deliver(nid).status == "failed"
    with Session(engine) as session:
        entries = session.exec(select(Suppression)).all()
    if not suppressed:
        assert entries == []
        return
    (entry,) = entries
    assert (entry.reason, entry.created_by, entry.purpose) == ("hard_bounce", "system", "*")
    assert entry.detail is not None and entry.detail.startswith("smtp 55")
    assert "alice@example.com" not in entry.detail
