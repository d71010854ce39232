"""One-click unsubscribe (RFC 8058), the confirm page, and the preference page."""

from __future__ import annotations

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from crm_notify.guards.consent import consent_history, current_consent, record_consent
from crm_notify.guards.models import ConsentRecord
from crm_notify.unsubscribe.tokens import make_token
from tests.unsubscribe.conftest import SECRET, Person

#: What Gmail posts to the List-Unsubscribe URL (RFC 8058 section 3.2).
ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"


def _records(engine: Engine) -> list[ConsentRecord]:
    with Session(engine) as session:
        return list(session.exec(select(ConsentRecord).order_by(ConsentRecord.id)))  # type: ignore[arg-type]


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(ConsentRecord)).one()


def _grant(engine: Engine, person: Person, purpose: str = "marketing") -> None:
    with Session(engine) as session:
        record_consent(
            session=session, contact_id=person.id, purpose=purpose, granted=True, source="api"
        )
        session.commit()


def test_one_click_post_as_gmail_sends_it_to_a_real_server(
    engine: Engine, person: Person, server_url: str
) -> None:
    # Given a contact who granted marketing consent, and the link of a marketing email
    _grant(engine, person)
    token = make_token(SECRET, contact_id=person.id, purpose="marketing")
    # When the mailbox provider posts the one-click body: form-encoded, no cookies, no auth
    with httpx.Client(cookies=None) as client:
        response = client.post(
            f"{server_url}/unsubscribe/{token}",
            content=ONE_CLICK_BODY,
            headers={"Content-Type": FORM, "User-Agent": "GoogleOneClickUnsubscribe"},
        )
    # Then the withdrawal is recorded at once, with the request's IP and user agent
    assert response.status_code == 200
    assert "unsubscribed" in response.text
    assert "a***@example.com" in response.text and "alice@" not in response.text
    last = _records(engine)[-1]
    assert (last.purpose, last.granted, last.source) == ("marketing", False, "unsubscribe_link")
    assert (last.ip, last.user_agent) == ("127.0.0.1", "GoogleOneClickUnsubscribe")


def test_one_click_is_idempotent_and_accepts_multipart(
    engine: Engine, person: Person, server_url: str
) -> None:
    _grant(engine, person)
    token = make_token(SECRET, contact_id=person.id, purpose="marketing", notification_id=None)
    client = httpx.Client(base_url=server_url)
    # When the one-click POST arrives as multipart/form-data, then again urlencoded
    first = client.post(f"/unsubscribe/{token}", files={"List-Unsubscribe": (None, "One-Click")})
    second = client.post(
        f"/unsubscribe/{token}", content=ONE_CLICK_BODY, headers={"Content-Type": FORM}
    )
    # Then both answer 200 and only one withdrawal is written
    assert first.status_code == second.status_code == 200
    assert [(r.granted, r.source) for r in _records(engine)] == [
        (True, "api"),
        (False, "unsubscribe_link"),
    ]


def test_get_shows_a_confirm_page_and_never_unsubscribes(
    engine: Engine, person: Person, server_url: str
) -> None:
    _grant(engine, person)
    token = make_token(SECRET, contact_id=person.id, purpose="marketing")
    # When a link scanner fetches the URL
    response = httpx.Client(base_url=server_url).get(f"/unsubscribe/{token}")
    # Then it gets a page whose button posts the one-click form, and nothing is written
    assert response.status_code == 200
    assert f'action="/unsubscribe/{token}"' in response.text
    assert 'name="List-Unsubscribe" value="One-Click"' in response.text
    assert response.headers["cache-control"] == "no-store"
    assert _count(engine) == 1


def test_forged_or_malformed_tokens_get_404_and_nothing_is_written(
    engine: Engine, person: Person, server_url: str
) -> None:
    _grant(engine, person)
    forged = make_token(
        b"not the server's key, 32 chars!!", contact_id=person.id, purpose="marketing"
    )
    transactional = make_token(SECRET, contact_id=person.id, purpose="transactional")
    client = httpx.Client(base_url=server_url)
    for token in (forged, "garbage", "1.marketing..AAAAAAAAAAAAAAAAAAAAAA", transactional):
        for method, path in (
            ("POST", "unsubscribe"),
            ("GET", "unsubscribe"),
            ("GET", "preferences"),
            ("POST", "preferences"),
        ):
            response = client.request(
                method, f"/{path}/{token}", content=ONE_CLICK_BODY, headers={"Content-Type": FORM}
            )
            assert response.status_code == 404, (method, path, token)
            assert "not valid" in response.text
    assert _count(engine) == 1


def test_preference_page_lists_purposes_and_records_changes(
    engine: Engine, person: Person, server_url: str
) -> None:
    # Given marketing granted and surveys never asked
    _grant(engine, person)
    token = make_token(SECRET, contact_id=person.id, purpose="marketing", notification_id=None)
    client = httpx.Client(base_url=server_url)
    page = client.get(f"/preferences/{token}")
    assert page.status_code == 200
    assert 'name="marketing" value="on" checked' in page.text
    assert 'name="surveys" value="on">' in page.text
    assert "transactional" not in page.text
    assert "a***@example.com" in page.text
    # When the person unticks marketing and ticks surveys
    saved = client.post(
        f"/preferences/{token}",
        content=b"submitted=1&surveys=on",
        headers={"Content-Type": FORM, "User-Agent": "Firefox"},
    )
    assert saved.status_code == 200 and "saved" in saved.text
    # Then each change is one record from the preference page; saving again writes nothing
    client.post(
        f"/preferences/{token}", content=b"submitted=1&surveys=on", headers={"Content-Type": FORM}
    )
    with Session(engine) as session:
        current = current_consent(session=session, contact_id=person.id)
        history = consent_history(session=session, contact_id=person.id)
    assert {p: r.granted for p, r in current.items()} == {"marketing": False, "surveys": True}
    assert [(r.purpose, r.granted, r.source) for r in history[1:]] == [
        ("marketing", False, "preference_page"),
        ("surveys", True, "preference_page"),
    ]
    assert history[-1].user_agent == "Firefox"


def test_link_of_an_erased_contact_answers_without_writing(engine: Engine, server_url: str) -> None:
    token = make_token(SECRET, contact_id=999, purpose="marketing", notification_id=5)
    response = httpx.Client(base_url=server_url).post(
        f"/unsubscribe/{token}", content=ONE_CLICK_BODY, headers={"Content-Type": FORM}
    )
    assert response.status_code == 200
    assert _count(engine) == 0
