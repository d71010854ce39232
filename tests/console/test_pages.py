"""The console pages over real HTTP (the app under uvicorn on loopback): off without users,
sign-in, search, timeline, notification detail, CSRF on every form, roles."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlmodel import Session, select

from crm_notify.guards.models import ConsentRecord, Suppression
from tests.console.conftest import ADMIN, PASSWORD, SUPPORT, Console

pytestmark = pytest.mark.usefixtures("users")


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _signed_in(console: Console, email: str) -> tuple[httpx.Client, str]:
    """A client signed in as ``email``, and its session's CSRF token."""
    client = httpx.Client(base_url=console.url)
    form = client.get("/console/sign-in")
    answer = client.post(
        "/console/sign-in",
        data={"email": email, "password": PASSWORD, "csrf": _csrf(form.text)},
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console"
    page = client.get("/console")
    assert page.status_code == 200
    return client, _csrf(page.text)


def _suppressions(console: Console) -> list[Suppression]:
    with Session(console.runtime.engine) as session:
        return list(session.exec(select(Suppression)).all())


def test_sign_in_sets_a_strict_http_only_session_cookie(console_app: Console) -> None:
    client = httpx.Client(base_url=console_app.url)
    # Given the console asked for without a session: it sends the user to sign in
    first = client.get("/console/contacts/1")
    assert first.status_code == 303
    assert first.headers["location"] == "/console/sign-in?next=/console/contacts/1"
    form = client.get(first.headers["location"])
    token = _csrf(form.text)
    # When a wrong password is given, Then it is refused without saying which part was wrong
    wrong = client.post(
        "/console/sign-in", data={"email": ADMIN, "password": "nope" * 4, "csrf": token}
    )
    assert wrong.status_code == 401 and "Wrong email or password." in wrong.text
    # When the right one is given, Then the session cookie is HttpOnly, SameSite=Strict, on
    # /console, and the user lands where they wanted to go
    right = client.post(
        "/console/sign-in",
        data={
            "email": ADMIN,
            "password": PASSWORD,
            "csrf": _csrf(wrong.text),
            "next": "/console/contacts/1",
        },
    )
    assert right.status_code == 303 and right.headers["location"] == "/console/contacts/1"
    cookie = right.headers["set-cookie"]
    assert "crm_console=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Path=/console" in cookie
    # And no page allows any script
    page = client.get("/console")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "script-src" not in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_search_timeline_and_notification_detail(console_app: Console) -> None:
    client, _csrf_token = _signed_in(console_app, SUPPORT)
    # When support searches for part of the address
    found = client.get("/console", params={"q": "ADA@exa"})
    # Then the contact is listed with a link to their timeline
    assert f'href="/console/contacts/{console_app.contact_id}"' in found.text
    assert client.get("/console", params={"q": "u-ada"}).text.count("ada@example.com") >= 1
    assert "Nobody matches" in client.get("/console", params={"q": "%"}).text
    # And the timeline shows the decision, its reason and the notification's status
    timeline = client.get(f"/console/contacts/{console_app.contact_id}")
    assert timeline.status_code == 200
    assert "<strong>welcome</strong>: rule matched" in timeline.text
    assert f'href="/console/notifications/{console_app.notification_id}"' in timeline.text
    assert '<span class="badge">sent</span>' in timeline.text
    # And the notification shows the message as sent: headers, text, and the HTML in a
    # sandboxed iframe (no allow-scripts)
    detail = client.get(f"/console/notifications/{console_app.notification_id}")
    assert detail.status_code == 200
    assert "<th>Subject</th>" in detail.text and "<th>Message-ID</th>" in detail.text
    assert re.search(r'<iframe class="mail desktop" [^>]*sandbox srcdoc="', detail.text)
    assert "allow-scripts" not in detail.text
    assert "Welcome" in detail.text
    # And unknown or malformed ids are 404s
    assert client.get("/console/contacts/999999").status_code == 404
    assert client.get("/console/notifications/1e3").status_code == 404


def test_every_form_needs_its_csrf_token(console_app: Console) -> None:
    client, token = _signed_in(console_app, ADMIN)
    target = f"/console/contacts/{console_app.contact_id}/suppress"
    # A post without the session's token (a forged cross-site form) changes nothing
    for data in ({}, {"csrf": "forged"}):
        refused = client.post(target, data=data)
        assert refused.status_code == 403 and "not sent from this console" in refused.text
    assert _suppressions(console_app) == []
    assert client.post("/console/sign-out", data={"csrf": "forged"}).status_code == 403
    # A sign-in form without its double-submit token is refused too
    fresh = httpx.Client(base_url=console_app.url)
    answer = fresh.post("/console/sign-in", data={"email": ADMIN, "password": PASSWORD})
    assert answer.status_code == 403 and "crm_console" not in answer.headers.get("set-cookie", "")
    # With the token, the admin's form works; sign-out ends the session
    assert client.post(target, data={"csrf": token, "detail": "ticket 42"}).status_code == 303
    [entry] = _suppressions(console_app)
    assert (entry.created_by, entry.detail) == (f"console:{ADMIN}", "ticket 42")
    assert client.post("/console/sign-out", data={"csrf": token}).status_code == 303
    assert client.get("/console").status_code == 303


def test_support_may_read_but_not_change_suppression(console_app: Console) -> None:
    client, token = _signed_in(console_app, SUPPORT)
    timeline = client.get(f"/console/contacts/{console_app.contact_id}")
    assert "Suppress this address" not in timeline.text
    # Even a hand-made post with a valid token is refused
    answer = client.post(
        f"/console/contacts/{console_app.contact_id}/suppress", data={"csrf": token}
    )
    assert answer.status_code == 403 and "Only an admin" in answer.text
    assert _suppressions(console_app) == []


def test_next_never_leaves_the_console(console_app: Console) -> None:
    client = httpx.Client(base_url=console_app.url)
    form = client.get("/console/sign-in", params={"next": "https://evil.example/"})
    assert 'name="next"' not in form.text
    answer = client.post(
        "/console/sign-in",
        data={
            "email": ADMIN,
            "password": PASSWORD,
            "csrf": _csrf(form.text),
            "next": "//evil.example/console",
        },
    )
    assert answer.headers["location"] == "/console"


def test_an_admin_records_consent_changes_and_support_cannot(console_app: Console) -> None:
    target = f"/console/contacts/{console_app.contact_id}/consent"
    support, support_token = _signed_in(console_app, SUPPORT)
    page = support.get(f"/console/contacts/{console_app.contact_id}")
    assert "Withdraw consent" not in page.text
    refused = support.post(
        target, data={"csrf": support_token, "purpose": "marketing", "action": "withdraw"}
    )
    assert refused.status_code == 403 and "Only an admin may change consent." in refused.text
    admin, token = _signed_in(console_app, ADMIN)
    # A grant without a note saying how the customer consented is refused
    bare = admin.post(target, data={"csrf": token, "purpose": "marketing", "action": "grant"})
    assert bare.status_code == 422 and "needs a note" in bare.text
    assert (
        admin.post(target, data={"csrf": token, "purpose": "nope", "action": "grant"}).status_code
        == 422
    )
    with Session(console_app.runtime.engine) as session:
        assert session.exec(select(ConsentRecord)).all() == []
    # With the note it is recorded, with who recorded it and the note as proof
    granted = admin.post(
        target,
        data={"csrf": token, "purpose": "marketing", "action": "grant", "note": "phone, ticket 9"},
    )
    assert granted.status_code == 303 and granted.headers["location"].endswith("?done=granted")
    withdrawn = admin.post(
        target, data={"csrf": token, "purpose": "marketing", "action": "withdraw"}
    )
    assert withdrawn.status_code == 303
    with Session(console_app.runtime.engine) as session:
        records = session.exec(select(ConsentRecord).order_by(ConsentRecord.id)).all()
    assert [(r.granted, r.source, r.actor, r.text_version) for r in records] == [
        (True, "admin", f"console:{ADMIN}", "phone, ticket 9"),
        (False, "admin", f"console:{ADMIN}", None),
    ]
    page = admin.get(withdrawn.headers["location"])
    assert "Consent withdrawn." in page.text and "marketing:\n      withdrawn" in page.text
