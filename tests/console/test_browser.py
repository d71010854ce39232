"""The console in a real browser: Playwright driving Debian's Chromium (``make test`` installs it
where it is missing and it can). Sign-in, search, timeline, the notification at desktop and
mobile widths, role restrictions and a forged form.

Set ``CRM_NOTIFY_SCREENSHOTS=docs/screenshots`` to refresh the README's screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.console.conftest import ADMIN, PASSWORD, SUPPORT, Console

pytestmark = [
    pytest.mark.usefixtures("users"),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

#: Chromium's flags for a closed network and a root user.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
MOBILE = {"width": 390, "height": 844}


def _chromium() -> str | None:
    return os.environ.get("CRM_NOTIFY_CHROMIUM") or shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = _chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: `make test` installs Debian's chromium as root")
        pytest.skip(
            "Chromium is not installed (apt-get install chromium, or set CRM_NOTIFY_CHROMIUM)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: ``CRM_NOTIFY_SCREENSHOTS`` when set, else the test's folder."""
    target = Path(os.environ.get("CRM_NOTIFY_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def _sign_in(browser: Browser, console: Console, email: str) -> Page:
    page = browser.new_page(viewport=DESKTOP)
    page.goto(f"{console.url}/console")
    expect(page).to_have_url(f"{console.url}/console/sign-in?next=/console")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Find a customer")).to_be_visible()
    return page


def test_support_finds_a_customer_and_reads_what_was_sent(
    browser: Browser, console_app: Console, shots: Path
) -> None:
    page = _sign_in(browser, console_app, SUPPORT)
    # When support searches for the customer and opens their timeline
    page.get_by_label("Email, user id or contact id").fill("ada@")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="1 contact for “ada@”")).to_be_visible()
    page.screenshot(path=shots / "console-search.png")
    page.get_by_role("link", name="ada@example.com").click()
    # Then the decision and its reason are there, and no admin action is offered
    expect(page.get_by_role("heading", name="ada@example.com")).to_be_visible()
    expect(page.get_by_text("rule matched")).to_be_visible()
    expect(page.get_by_role("button", name="Suppress this address")).to_have_count(0)
    page.screenshot(path=shots / "console-timeline.png", full_page=True)
    # When they open the notification
    page.get_by_role("link", name=f"notification {console_app.notification_id}").click()
    # Then the message is shown as sent, the HTML in a sandboxed frame, at both widths
    expect(page.get_by_role("heading", name="Status history")).to_be_visible()
    for width in ("desktop", "phone"):
        expect(page.frame_locator(f"iframe.mail.{width}").locator("body")).to_contain_text("Ada")
        assert page.locator(f"iframe.mail.{width}").get_attribute("sandbox") == ""
    page.screenshot(path=shots / "console-notification-desktop.png", full_page=True)
    page.set_viewport_size(MOBILE)
    expect(page.frame_locator("iframe.mail.phone").locator("body")).to_contain_text("Ada")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= MOBILE["width"] + 1, f"the page scrolls sideways on a phone ({width}px)"
    page.locator("figure.phone").screenshot(path=shots / "console-notification-mobile.png")
    # And signing out ends the session (at desktop width again: after an element screenshot
    # Playwright's clicks on the phone-width page no longer reach the header)
    page.set_viewport_size(DESKTOP)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto(f"{console_app.url}/console")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_a_forged_form_is_refused_and_the_admins_own_works(
    browser: Browser, console_app: Console
) -> None:
    page = _sign_in(browser, console_app, ADMIN)
    page.goto(f"{console_app.url}/console/contacts/{console_app.contact_id}")
    # When the form's CSRF token is not the session's (as a form on another site would be)
    page.locator("form:has(button.danger) input[name=csrf]").evaluate(
        "input => { input.value = 'forged' }"
    )
    page.get_by_role("button", name="Suppress this address").click()
    # Then it is refused, and nothing changed
    expect(page.get_by_role("alert")).to_contain_text("not sent from this console")
    page.goto(f"{console_app.url}/console/contacts/{console_app.contact_id}")
    expect(page.get_by_text("Suppression: none")).to_be_visible()
    # And the admin's own form works
    page.get_by_label("Ticket or note").fill("ticket 7")
    page.get_by_role("button", name="Suppress this address").click()
    expect(page.get_by_role("status")).to_have_text("Added to the suppression list.")
    expect(page.get_by_text("* — manual")).to_be_visible()


def test_support_previews_a_rule_and_sends_a_test_copy_to_themself(
    browser: Browser, console_app: Console, shots: Path
) -> None:
    page = _sign_in(browser, console_app, SUPPORT)
    page.goto(f"{console_app.url}/console/contacts/{console_app.contact_id}")
    page.get_by_role("link", name="Preview a rule's email for this contact").click()
    # When support previews the welcome rule
    page.get_by_label("Rule").select_option("welcome")
    page.get_by_role("button", name="Preview").click()
    # Then the dry-run verdict and the email at both widths are shown
    expect(page.get_by_text("would be sent")).to_be_visible()
    for width in ("desktop", "phone"):
        expect(page.frame_locator(f"iframe.mail.{width}").locator("body")).to_contain_text("Hi Ada")
    page.screenshot(path=shots / "console-preview.png", full_page=True)
    # When they send a test copy to themself
    before = len(console_app.sink.messages)
    page.get_by_role("button", name=f"Send a test copy to {SUPPORT}").click()
    # Then the page says so, and it arrives at the SMTP server, to them only
    expect(page.get_by_role("status")).to_contain_text(f"A test copy went to {SUPPORT}")
    copy = console_app.sink.wait_for(before + 1)[-1]
    assert copy["To"] == SUPPORT and copy["Subject"].startswith("[TEST] ")


def test_an_admin_reads_the_rules_and_the_kpis(
    browser: Browser, console_app: Console, shots: Path
) -> None:
    page = _sign_in(browser, console_app, ADMIN)
    page.get_by_role("link", name="Rules").click()
    expect(page.get_by_text("Every rule file passes")).to_be_visible()
    page.screenshot(path=shots / "console-rules.png", full_page=True)
    page.get_by_role("link", name="KPIs").click()
    expect(page.get_by_role("img", name="welcome: sent per day")).to_be_visible()
    expect(page.get_by_role("img", name="welcome: rates per day")).to_be_visible()
    page.screenshot(path=shots / "console-kpis.png", full_page=True)
