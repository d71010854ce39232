"""``/v1/suppressions``: add, list and remove with an API key; errors name the field."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.admin.suppressions import make_router
from crm_notify.auth import ApiKeyAuthenticator, create_api_key
from crm_notify.guards.models import Suppression
from tests.support.servers import serve


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    key = create_api_key("support-desk", engine=engine)
    app = FastAPI()
    app.include_router(
        make_router(
            engine=engine,
            authenticate=ApiKeyAuthenticator(engine=engine),
            purposes=("transactional", "marketing"),
        )
    )
    with serve(app) as url, httpx.Client(base_url=url, auth=httpx.BasicAuth(key, "")) as http:
        yield http


def test_add_list_and_remove(client: httpx.Client, engine: Engine) -> None:
    # When support suppresses an address for marketing, and another for everything
    answer = client.post(
        "/v1/suppressions",
        json={"email": "Alice@Example.com", "purpose": "marketing", "detail": "ticket 7"},
    )
    assert answer.status_code == 201
    body = answer.json()
    assert (body["email"], body["purpose"], body["reason"], body["created_by"]) == (
        "Alice@example.com",
        "marketing",
        "manual",
        "support-desk",
    )
    assert (
        client.post(
            "/v1/suppressions", json={"email": "bob@example.com", "reason": "hard_bounce"}
        ).json()["purpose"]
        == "*"
    )
    # Adding again updates the entry instead of adding one
    again = client.post(
        "/v1/suppressions",
        json={"email": "alice@example.com", "purpose": "marketing", "reason": "complaint"},
    )
    assert again.status_code == 201 and again.json()["id"] == body["id"]
    # Then both are listed, and the reason filter works
    listed = client.get("/v1/suppressions").json()
    assert {(s["email"], s["reason"]) for s in listed["suppressions"]} == {
        ("alice@example.com", "complaint"),
        ("bob@example.com", "hard_bounce"),
    }
    only = client.get("/v1/suppressions", params={"reason": "hard_bounce"}).json()
    assert [s["email"] for s in only["suppressions"]] == ["bob@example.com"]
    assert len(client.get("/v1/suppressions", params={"limit": 1}).json()["suppressions"]) == 1
    # When removed (the purpose names the entry)
    assert client.delete("/v1/suppressions/alice@example.com").status_code == 404
    gone = client.delete("/v1/suppressions/ALICE@example.com", params={"purpose": "marketing"})
    assert gone.status_code == 204
    with Session(engine) as session:
        assert [s.email for s in session.exec(select(Suppression))] == ["bob@example.com"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not an address"}, "email"),
        ({"email": "a@example.com", "reason": "erased"}, "reason"),
        ({"email": "a@example.com", "purpose": "Sales!"}, "purpose"),
        ({"email": "a@example.com", "purpose": "newsletter"}, "purpose"),
        ({"email": "a@example.com", "colour": "red"}, "colour"),
        ({}, "email"),
    ],
)
def test_invalid_input_is_422_naming_the_field(
    client: httpx.Client, body: dict[str, str], field: str
) -> None:
    answer = client.post("/v1/suppressions", json=body)
    assert answer.status_code == 422
    assert answer.json()["field"] == field
    assert answer.json()["code"] == "invalid_request"
    assert answer.json()["error"] == answer.json()["message"]


def test_bad_query_and_path_values(client: httpx.Client) -> None:
    assert client.get("/v1/suppressions", params={"reason": "nope"}).json()["field"] == "reason"
    assert client.get("/v1/suppressions", params={"limit": "0"}).json()["field"] == "limit"
    assert client.delete("/v1/suppressions/nobody").json()["field"] == "email"
    not_json = client.post("/v1/suppressions", content=b"{", headers={"content-type": "text/plain"})
    assert not_json.status_code == 400
    assert not_json.json()["message"].startswith("body is not valid JSON")
    not_object = client.post("/v1/suppressions", json=["a@example.com"])
    assert not_object.status_code == 400


def test_requires_a_valid_api_key(client: httpx.Client, engine: Engine) -> None:
    for auth in (None, httpx.BasicAuth("cn_wrong", "")):
        answer = client.get("/v1/suppressions", auth=auth)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Basic")
        assert (
            client.post("/v1/suppressions", auth=auth, json={"email": "a@b.co"}).status_code == 401
        )
        assert client.delete("/v1/suppressions/a@b.co", auth=auth).status_code == 401
    with Session(engine) as session:
        assert session.exec(select(Suppression)).all() == []
