"""The consent admin API: record and read consent with an API key."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.admin.consent import make_router
from crm_notify.auth.api_keys import ApiKeyAuthenticator, create_api_key
from crm_notify.contacts.models import Contact
from tests.support.servers import free_port

PURPOSES = ("transactional", "marketing", "surveys")


@pytest.fixture
def api(engine: Engine) -> Iterator[httpx.Client]:
    """A client of the consent routes under uvicorn, authenticated with a fresh key."""
    key = create_api_key("crm-import", engine=engine)
    app = FastAPI()
    app.include_router(
        make_router(
            engine=engine, authenticate=ApiKeyAuthenticator(engine=engine), purposes=PURPOSES
        )
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(key, "")) as client:
        yield client
    server.should_exit = True
    thread.join(timeout=10)


def test_post_records_consent_with_proof_and_actor(engine: Engine, api: httpx.Client) -> None:
    with Session(engine) as session:
        session.add(Contact(email="alice@example.com", user_id="u1"))
        session.commit()
    response = api.post(
        "/v1/consent",
        json={
            "userId": "u1",
            "purpose": "marketing",
            "granted": True,
            "text_version": "signup-v2",
            "ip": "203.0.113.5",
            "user_agent": "Shop/1.0",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["purpose"], body["granted"], body["source"]) == ("marketing", True, "api")
    assert (body["lawful_basis"], body["actor"], body["text_version"]) == (
        "consent",
        "crm-import",
        "signup-v2",
    )
    shown = api.get("/v1/consent", params={"contact": "alice@example.com"}).json()
    assert shown["current"]["marketing"]["id"] == body["id"]
    assert shown["current"]["surveys"] is None
    assert [r["id"] for r in shown["history"]] == [body["id"]]


def test_unknown_email_creates_the_contact_unknown_user_is_404(
    engine: Engine, api: httpx.Client
) -> None:
    created = api.post(
        "/v1/consent", json={"email": "New@Example.com", "purpose": "marketing", "granted": True}
    )
    assert created.status_code == 201
    with Session(engine) as session:
        contact = session.exec(select(Contact)).one()
    assert contact.email == "New@example.com" and created.json()["contact_id"] == contact.id
    missing = api.post(
        "/v1/consent", json={"userId": "nobody", "purpose": "marketing", "granted": False}
    )
    assert missing.status_code == 404
    assert missing.json()["field"] == "userId"
    assert api.get("/v1/consent", params={"contact": "user:nobody"}).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com", "purpose": "newsletter", "granted": True}, "purpose"),
        ({"email": "a@example.com", "purpose": "marketing", "granted": "yes"}, "granted"),
        (
            {
                "email": "a@example.com",
                "purpose": "marketing",
                "granted": True,
                "lawful_basis": "whim",
            },
            "lawful_basis",
        ),
        (
            {"email": "a@example.com", "purpose": "marketing", "granted": True, "colour": 1},
            "colour",
        ),
        ({"purpose": "marketing", "granted": True}, "email"),
        ({"email": "not-an-address", "purpose": "marketing", "granted": True}, "email"),
    ],
)
def test_invalid_bodies_are_422_naming_the_field(
    engine: Engine, api: httpx.Client, body: dict[str, object], field: str
) -> None:
    response = api.post("/v1/consent", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["field"] == field and error["code"] == "invalid_request"
    assert error["error"] == error["message"]
    with Session(engine) as session:
        assert session.exec(select(Contact)).all() == []


def test_requests_without_a_valid_key_are_401(api: httpx.Client) -> None:
    body = {"email": "a@example.com", "purpose": "marketing", "granted": True}
    assert api.post("/v1/consent", json=body, auth=("cn_wrong", "")).status_code == 401
    response = httpx.get(f"{api.base_url}/v1/consent", params={"contact": "a@example.com"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_missing_or_malformed_contact_ref_is_422(api: httpx.Client) -> None:
    for params in ({"contact": "id:abc"}, {}):
        response = api.get("/v1/consent", params=params)
        assert response.status_code == 422
        assert response.json()["field"] == "contact"
