"""Previews in the console: a rule's email for a contact through the real rendering path, with
the guards' dry-run verdict, and a test copy that reaches the SMTP server and nobody else."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlmodel import Session, func, select

from crm_notify.outbox.models import Notification
from tests.console.conftest import SUPPORT, Console
from tests.console.test_pages import _signed_in

pytestmark = pytest.mark.usefixtures("users")


def _notifications(console: Console) -> int:
    with Session(console.runtime.engine) as session:
        return int(session.exec(select(func.count()).select_from(Notification)).one())


def test_a_rule_previews_for_the_contact_at_two_widths(console_app: Console) -> None:
    client, _token = _signed_in(console_app, SUPPORT)
    base = f"/console/contacts/{console_app.contact_id}/preview"
    # The page lists the rules that send email
    empty = client.get(base)
    assert empty.status_code == 200 and '<option value="welcome"' in empty.text
    # When support previews the welcome rule for Ada
    page = client.get(base, params={"rule": "welcome"})
    # Then the verdict a real send would get, the subject and both widths are shown
    assert "would be sent" in page.text
    assert "Subject: <strong>Welcome, Ada!" in page.text
    assert re.search(r'<iframe class="mail desktop" [^>]*sandbox srcdoc="[^"]*Hi Ada', page.text)
    assert re.search(r'<iframe class="mail phone" [^>]*sandbox srcdoc="', page.text)
    # And a rule the contact has no event for says so instead of failing
    order = client.get(base, params={"rule": "order-shipped"})
    assert order.status_code == 200 and "has no stored event for rule" in order.text
    # And a malformed language is ignored (the contact's own is used)
    assert "would be sent" in client.get(base, params={"rule": "welcome", "language": "<x>"}).text


def test_a_test_copy_goes_to_the_agent_only(console_app: Console) -> None:
    client, token = _signed_in(console_app, SUPPORT)
    before = len(console_app.sink.messages)
    rows = _notifications(console_app)
    target = f"/console/contacts/{console_app.contact_id}/preview/test"
    # A post without the session's CSRF token sends nothing
    assert client.post(target, data={"rule": "welcome"}).status_code == 403
    # When support sends a test copy of the welcome mail
    answer = client.post(target, data={"csrf": token, "rule": "welcome", "language": ""})
    assert answer.status_code == 200
    assert f"A test copy went to {SUPPORT}" in answer.text
    # Then it reaches the SMTP server, to the agent, marked as a test, without unsubscribe
    # headers; the customer gets nothing and no notification is recorded
    messages = console_app.sink.wait_for(before + 1)
    copy = messages[-1]
    assert copy["To"] == SUPPORT and copy["Subject"].startswith("[TEST] Welcome, Ada!")
    assert copy["X-CRM-Notify-Test"] == "yes" and copy["List-Unsubscribe"] is None
    assert console_app.sink.envelopes[-1][1] == [SUPPORT]
    assert _notifications(console_app) == rows
    # And a test copy of nothing is refused
    nothing = client.post(target, data={"csrf": token, "rule": "nope"})
    assert nothing.status_code == 422
    assert len(console_app.sink.messages) == before + 1


def test_previews_need_a_session(console_app: Console) -> None:
    answer = httpx.get(f"{console_app.url}/console/contacts/{console_app.contact_id}/preview")
    assert answer.status_code == 303
