"""Console hardening (issue 7 review): previews and stored messages never hand out a
customer's working unsubscribe link, sign-in attempts and test copies are throttled, and a form
posted after the session expired sends to the sign-in page without a `next`."""

from __future__ import annotations

import httpx
import pytest

from crm_notify.console.preview import PlaceholderLinks, redact_links
from crm_notify.console.throttle import MAX_ATTEMPTS, MAX_TEST_COPIES, SlidingWindowLimit
from crm_notify.outbox.models import Notification
from crm_notify.unsubscribe.links import UnsubscribeLinks
from tests.console.conftest import SUPPORT, Console
from tests.console.test_pages import _csrf, _signed_in


def test_stored_messages_show_no_working_link() -> None:
    row = Notification(
        idempotency_key="k",
        rule="r",
        template="t",
        purpose="marketing",
        contact_id=7,
        id=3,
        to_address="ada@example.com",
    )
    real = UnsubscribeLinks(base_url="https://crm.example", secret_key=b"k" * 32)
    unsubscribe, preferences = real.for_notification(row) or ("", "")
    text = f"List-Unsubscribe: <{unsubscribe}>\\nchange: {preferences}"
    redacted = redact_links(text)
    assert "/unsubscribe/(redacted)>" in redacted and "/preferences/(redacted)" in redacted
    assert unsubscribe.rsplit("/", 1)[1] not in redacted
    # Previews get placeholders instead (and none for transactional mail)
    placeholders = PlaceholderLinks(base_url="https://crm.example/")
    assert placeholders.for_notification(row) == (
        "https://crm.example/unsubscribe/preview",
        "https://crm.example/preferences/preview",
    )
    row.purpose = "transactional"
    assert placeholders.for_notification(row) is None


def test_a_sliding_window_forgets_old_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("crm_notify.console.throttle.time.monotonic", lambda: clock[0])
    limit = SlidingWindowLimit(max_attempts=2, window_s=60)
    assert limit.allow("a") and limit.allow("a") and not limit.allow("a")
    assert limit.allow("b")
    clock[0] += 61
    assert limit.allow("a")


@pytest.mark.usefixtures("users")
def test_sign_in_attempts_are_throttled_per_address(console_app: Console) -> None:
    client = httpx.Client(base_url=console_app.url)
    page = client.get("/console/sign-in")
    answers = []
    for n in range(MAX_ATTEMPTS + 1):
        data = {"email": f"user{n}@shop.example", "password": "wrong!", "csrf": _csrf(page.text)}
        page = client.post("/console/sign-in", data=data)
        answers.append(page.status_code)
        if page.status_code == 429:
            break
    assert answers == [401] * MAX_ATTEMPTS + [429]
    assert "Too many sign-in attempts" in page.text and page.headers["retry-after"] == "900"


@pytest.mark.usefixtures("users")
def test_test_copies_are_limited_per_user(console_app: Console) -> None:
    client, token = _signed_in(console_app, SUPPORT)
    target = f"/console/contacts/{console_app.contact_id}/preview/test"
    data = {"csrf": token, "rule": "welcome"}
    codes = [client.post(target, data=data).status_code for _ in range(MAX_TEST_COPIES + 1)]
    assert codes == [200] * MAX_TEST_COPIES + [429]


@pytest.mark.usefixtures("users")
def test_a_form_posted_without_a_session_goes_to_sign_in(console_app: Console) -> None:
    answer = httpx.post(
        f"{console_app.url}/console/contacts/{console_app.contact_id}/suppress",
        data={"csrf": "x"},
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"


@pytest.mark.usefixtures("users")
def test_nul_characters_in_input_are_ignored_not_a_database_error(console_app: Console) -> None:
    # PostgreSQL refuses NUL in text: the console drops it instead of answering 503
    client, _token = _signed_in(console_app, SUPPORT)
    assert "Nobody matches" in client.get("/console", params={"q": "zz\x00zz"}).text
    dry_run = client.get("/console/rules/welcome", params={"contact": "no\x00body"})
    assert dry_run.status_code == 200 and "No contact with email or user id" in dry_run.text
    fresh = httpx.Client(base_url=console_app.url)
    form = fresh.get("/console/sign-in")
    answer = fresh.post(
        "/console/sign-in",
        data={"email": "a\x00@example.com", "password": "x" * 12, "csrf": _csrf(form.text)},
    )
    assert answer.status_code == 401
