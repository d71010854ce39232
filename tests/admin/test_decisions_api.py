"""``GET /v1/decisions``: a contact's explained timeline as JSON."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from crm_notify.admin.decisions import make_router
from crm_notify.auth import ApiKeyAuthenticator, create_api_key
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.events.models import Event
from crm_notify.outbox.models import Decision
from tests.support.servers import serve

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    key = create_api_key("support-desk", engine=engine)
    with session_scope(engine) as session:
        alice = Contact(email="alice@example.com", user_id="u1")
        session.add(alice)
        session.flush()
        event = Event(
            message_id="msg-1",
            type="track",
            name="Order Updated",
            contact_id=alice.id,
            received_at=T0,
        )
        session.add(event)
        session.flush()
        for rule, outcome, reason in (
            ("order-shipped", "send", "rule matched"),
            ("promo", "skip", "no marketing consent recorded"),
        ):
            session.add(
                Decision(
                    event_id=event.id,
                    contact_id=alice.id,
                    rule=rule,
                    outcome=outcome,
                    reason=reason,
                    details={"purpose": "marketing"} if rule == "promo" else None,
                    at=T0,
                )
            )
    app = FastAPI()
    app.include_router(make_router(engine=engine, authenticate=ApiKeyAuthenticator(engine=engine)))
    with serve(app) as url, httpx.Client(base_url=url, auth=httpx.BasicAuth(key, "")) as http:
        yield http


@pytest.mark.parametrize("ref", ["alice@example.com", "ALICE@example.com", "user:u1", "id:1"])
def test_timeline_by_any_contact_reference(client: httpx.Client, ref: str) -> None:
    answer = client.get("/v1/decisions", params={"contact": ref})
    assert answer.status_code == 200
    data = answer.json()
    assert data["contact"]["email"] == "alice@example.com"
    (entry,) = data["entries"]
    assert entry["event"]["message_id"] == "msg-1"
    assert entry["at"] == "2026-11-20T10:00:00+00:00"
    assert [(d["rule"], d["outcome"], d["reason"]) for d in entry["decisions"]] == [
        ("order-shipped", "send", "rule matched"),
        ("promo", "skip", "no marketing consent recorded"),
    ]
    assert entry["decisions"][1]["details"] == {"purpose": "marketing"}


def test_filters(client: httpx.Client) -> None:
    only = client.get("/v1/decisions", params={"contact": "user:u1", "rule": "promo"}).json()
    assert [d["rule"] for e in only["entries"] for d in e["decisions"]] == ["promo"]
    later = client.get("/v1/decisions", params={"contact": "user:u1", "since": "2026-11-21"})
    assert later.json()["entries"] == []
    until = client.get("/v1/decisions", params={"contact": "user:u1", "until": "2026-11-20"})
    assert len(until.json()["entries"]) == 1  # a date includes its whole day


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({}, 422, "contact"),
        ({"contact": "alice"}, 422, "contact"),
        ({"contact": "id:x"}, 422, "contact"),
        ({"contact": "nobody@example.com"}, 404, "contact"),
        ({"contact": "user:u1", "since": "last week"}, 422, "since"),
        ({"contact": "user:u1", "limit": "0"}, 422, "limit"),
    ],
)
def test_errors(client: httpx.Client, params: dict[str, str], status: int, field: str) -> None:
    answer = client.get("/v1/decisions", params=params)
    assert answer.status_code == status
    assert answer.json()["field"] == field


def test_requires_an_api_key(client: httpx.Client) -> None:
    answer = client.get("/v1/decisions", params={"contact": "user:u1"}, auth=None)
    assert answer.status_code == 401
    bearer = client.get(
        "/v1/decisions",
        params={"contact": "user:u1"},
        auth=None,
        headers={"authorization": "Bearer cn_unknown"},
    )
    assert bearer.status_code == 401
