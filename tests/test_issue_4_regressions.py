"""Regressions found in review of the guards (issue 4): erasure while mail is queued, links of
an erased person whose id is reused, a guest checkout left after erasure, digest copies kept
past retention, and a preference POST that is not the page's form."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from crm_notify.commerce.models import Cart, Order
from crm_notify.contacts.models import Contact
from crm_notify.db import import_models, session_scope
from crm_notify.esp import adapter_from_url
from crm_notify.events.schemas import parse_call
from crm_notify.gdpr.erase import erase_contact
from crm_notify.gdpr.export import export_contact
from crm_notify.gdpr.retention import purge
from crm_notify.guards import SendPolicy
from crm_notify.guards.consent import ConsentGuard, latest_consent
from crm_notify.guards.suppression import SuppressionGuard
from crm_notify.intake import Intake
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.models import Notification
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.loader import load_rules
from crm_notify.timers.models import Timer, TimerKind, TimerStatus
from crm_notify.unsubscribe.api import make_router
from crm_notify.unsubscribe.tokens import make_token
from tests.conftest import ROOT

SECRET = b"0123456789abcdef0123456789abcdef"


def _call(obj: dict[str, Any]) -> Any:
    return parse_call(obj, type_hint=None, received_at=datetime.now(UTC))


def _rows(engine: Engine, model: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model).order_by(col(model.id))))


def test_mail_queued_for_a_person_erased_meanwhile_is_never_sent(
    engine: Engine, tmp_path: Path
) -> None:
    intake = Intake(
        engine=engine,
        rules=load_rules(ROOT / "rules"),
        policy=SendPolicy(guards=(SuppressionGuard(), ConsentGuard())),
    )
    intake.ingest(
        [_call({"type": "identify", "userId": "u1", "traits": {"email": "al@example.com"}})]
    )
    (queued,) = _rows(engine, Notification)  # the welcome mail, not delivered yet
    with session_scope(engine) as session:
        contact = session.exec(select(Contact)).one()
        erase_contact(session=session, contact=contact, actor="dpo")
    delivery = DeliveryService(
        engine=engine,
        templates=TemplateStore(ROOT / "templates"),
        adapter=adapter_from_url(f"file://{tmp_path / 'outbox'}"),
        mail_from="shop <shop@example.com>",
        max_attempts=3,
        policy=SendPolicy(guards=(SuppressionGuard(), ConsentGuard())),
    )
    assert delivery.deliver(queued.id).status == "skipped"  # cancelled by the erasure
    (row,) = _rows(engine, Notification)
    assert row.status == "cancelled"
    assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").iterdir())


def test_a_notification_whose_contact_is_gone_is_cancelled_at_delivery(
    engine: Engine, tmp_path: Path
) -> None:
    with session_scope(engine) as session:
        session.add(
            Notification(
                idempotency_key="orphan",
                rule="welcome",
                template="welcome",
                purpose="transactional",
                to_address="someone@example.com",
                context={"contact": {}},
            )
        )
    delivery = DeliveryService(
        engine=engine,
        templates=TemplateStore(ROOT / "templates"),
        adapter=adapter_from_url(f"file://{tmp_path / 'outbox'}"),
        mail_from="shop@example.com",
        max_attempts=3,
        policy=SendPolicy(guards=(SuppressionGuard(),)),
    )
    (row,) = _rows(engine, Notification)
    assert delivery.deliver(row.id).status == "cancelled"
    assert _rows(engine, Notification)[0].status == "cancelled"


def _app(engine: Engine) -> FastAPI:
    app = FastAPI()
    app.include_router(
        make_router(engine=engine, secret_key=SECRET, purposes=("transactional", "marketing"))
    )
    return app


def _post(app: FastAPI, path: str, body: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post(
                path,
                content=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )

    return asyncio.run(go())


def test_a_link_of_an_erased_person_does_not_act_on_whoever_gets_their_id(
    engine: Engine,
) -> None:
    with session_scope(engine) as session:
        alice = Contact(email="alice@example.com")
        session.add(alice)
        session.flush()
        mail = Notification(
            idempotency_key="k1",
            rule="promo",
            template="promo",
            purpose="marketing",
            contact_id=alice.id,
            to_address="alice@example.com",
        )
        session.add(mail)
        session.flush()
        assert alice.id is not None and mail.id is not None
        token = make_token(
            SECRET, contact_id=alice.id, purpose="marketing", notification_id=mail.id
        )
        alice_id = alice.id
    with session_scope(engine) as session:
        erase_contact(session=session, contact=session.get(Contact, alice_id), actor="dpo")
    with session_scope(engine) as session:  # the same id again (SQLite reuses the highest)
        session.add(Contact(id=alice_id, email="bob@example.org"))
    app = _app(engine)
    response = _post(app, f"/preferences/{token}", b"submitted=1&marketing=on")
    assert response.status_code == 200
    assert "b***" not in response.text
    with Session(engine) as session:
        assert latest_consent(session=session, contact_id=alice_id, purpose="marketing") is None


def test_a_preference_post_that_is_not_the_pages_form_changes_nothing(engine: Engine) -> None:
    with session_scope(engine) as session:
        contact = Contact(email="carol@example.com")
        session.add(contact)
        session.flush()
        assert contact.id is not None
        contact_id = contact.id
    token = make_token(SECRET, contact_id=contact_id, purpose="marketing")
    app = _app(engine)
    assert _post(app, f"/preferences/{token}", b"").status_code == 400
    assert _post(app, f"/preferences/{token}", b"marketing=on").status_code == 400
    with Session(engine) as session:
        assert latest_consent(session=session, contact_id=contact_id, purpose="marketing") is None


def test_erase_and_export_cover_a_guest_checkout_made_before_sign_up(engine: Engine) -> None:
    intake = Intake(engine=engine, rules=load_rules(ROOT / "rules"), policy=SendPolicy())
    intake.ingest(
        [
            _call(
                {
                    "type": "track",
                    "anonymousId": "a1",
                    "event": "Product Added",
                    "properties": {"cart_id": "C9", "product_id": "P1", "name": "Mug"},
                }
            ),
            _call(
                {
                    "type": "track",
                    "anonymousId": "a1",
                    "event": "Order Completed",
                    "properties": {
                        "order_id": "G1",
                        "email": "guest@example.com",
                        "shipping": {"name": "Gina Guest"},
                    },
                }
            ),
            _call(
                {
                    "type": "identify",
                    "userId": "g1",
                    "anonymousId": "a1",
                    "traits": {"email": "guest@example.com"},
                }
            ),
        ]
    )
    with Session(engine) as session:
        guest = session.exec(select(Contact).where(Contact.user_id == "g1")).one()
        exported = export_contact(session=session, contact=guest)
    assert [o["order_id"] for o in exported["orders"]] == ["G1"]
    assert [c["cart_id"] for c in exported["carts"]] == ["C9"]
    with session_scope(engine) as session:
        guest = session.exec(select(Contact).where(Contact.user_id == "g1")).one()
        erase_contact(session=session, contact=guest, actor="dpo")
    assert _rows(engine, Order) == [] and _rows(engine, Cart) == []
    import_models()
    with engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            for row in connection.execute(sa.select(table)):
                text = json.dumps([str(value) for value in row]).lower()
                assert "guest@example.com" not in text and "gina" not in text, table.name


def test_purge_clears_the_copies_a_fired_digest_kept(engine: Engine) -> None:
    with freeze_time(datetime(2026, 1, 1, tzinfo=UTC)), session_scope(engine) as session:
        session.add(
            Timer(
                key="digest:x",
                kind=TimerKind.DIGEST,
                rule="promo",
                status=TimerStatus.FIRED,
                trigger_at=datetime.now(UTC),
                due_at=datetime.now(UTC),
                payload={"items": [{"event": {"properties": {"ip": "203.0.113.9"}}}]},
            )
        )
    with freeze_time(datetime(2026, 6, 1, tzinfo=UTC)), session_scope(engine) as session:
        purge(session=session, older_than=timedelta(days=30))
    (timer,) = _rows(engine, Timer)
    assert "203.0.113.9" not in json.dumps(timer.payload)
