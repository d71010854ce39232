"""The public unsubscribe and preference pages, reached from links in marketing mail.

- ``POST /unsubscribe/{token}``: one-click unsubscribe (RFC 8058). Mailbox providers post
  ``List-Unsubscribe=One-Click`` with no cookies or credentials: the signed token is the only
  authority, so any POST to a valid link withdraws consent to the token's purpose at once
  (source ``unsubscribe_link``, with the request's IP and user agent). A second POST writes
  nothing.
- ``GET /unsubscribe/{token}``: a page with a button that posts the above. A GET never
  unsubscribes: link scanners and previews fetch URLs in mail.
- ``GET /preferences/{token}`` and ``POST /preferences/{token}``: every purpose but
  transactional, with a checkbox each; saving records the changes (source ``preference_page``).

An invalid or forged token gets a 404 page and nothing is written. Pages show no personal data
beyond a masked address (``a***@example.com``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.guards.consent import TRANSACTIONAL, latest_consent, record_consent
from crm_notify.guards.models import ConsentSource
from crm_notify.outbox.models import Notification
from crm_notify.unsubscribe.forms import read_form
from crm_notify.unsubscribe.tokens import UnsubscribeToken, UnsubscribeTokenError, read_token

#: The folder of the pages' templates.
PAGES_DIR = Path(__file__).parent / "pages"
#: Form values that tick a purpose on the preference page.
CHECKED = frozenset({"on", "true", "1", "yes"})
#: Headers that keep pages out of caches and search engines.
_NO_STORE = {
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
    "Referrer-Policy": "no-referrer",
}


def mask_address(address: str | None) -> str | None:
    """``alice@example.com`` -> ``a***@example.com`` (``None`` stays ``None``)."""
    if not address or "@" not in address:
        return None
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def _label(purpose: str) -> str:
    return purpose.replace("_", " ")


#: The version of the preference page's wording, kept with the consent it records as proof
#: (GDPR Art. 7(1)); change it whenever ``pages/preferences.html`` changes its wording.
PREFERENCE_PAGE_VERSION = "preference-page-1"


def make_router(*, engine: Engine, secret_key: bytes, purposes: Sequence[str]) -> APIRouter:
    """Build the unsubscribe and preference routes (no authentication: the token is it).

    Parameters:
        engine: the database.
        secret_key: from :func:`crm_notify.unsubscribe.tokens.load_secret_key`.
        purposes: ``Settings.purpose_names``; the preference page lists all but transactional.
    """
    router = APIRouter(tags=["unsubscribe"], include_in_schema=False)
    pages = Environment(
        loader=FileSystemLoader(PAGES_DIR), autoescape=select_autoescape(default=True)
    )
    optional = [p for p in purposes if p != TRANSACTIONAL]

    def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = pages.get_template(name).render(**values)
        return HTMLResponse(html, status_code=status, headers=_NO_STORE)

    def token_of(raw: str) -> UnsubscribeToken | None:
        try:
            token = read_token(secret_key, raw)
        except UnsubscribeTokenError:
            return None
        return None if token.purpose == TRANSACTIONAL else token

    def proof(request: Request) -> tuple[str | None, str | None]:
        """The request's IP and user agent, kept with the record as proof."""
        return request.client.host if request.client else None, request.headers.get("user-agent")

    def unsubscribe(token: UnsubscribeToken, proof: tuple[str | None, str | None]) -> str | None:
        with session_scope(engine) as session:
            contact = _contact_of(session, token)
            if contact is None:  # erased since: there is no one left to mail
                return None
            record_consent(
                session=session,
                contact_id=token.contact_id,
                purpose=token.purpose,
                granted=False,
                source=ConsentSource.UNSUBSCRIBE_LINK,
                notification_id=_notification_id(session, token.notification_id),
                only_if_changed=True,
                ip=proof[0],
                user_agent=proof[1],
            )
            return mask_address(contact.email)

    def address_of(token: UnsubscribeToken) -> str | None:
        with Session(engine) as session:
            contact = _contact_of(session, token)
            return mask_address(contact.email) if contact else None

    def preferences(
        token: UnsubscribeToken,
        wanted: dict[str, bool] | None,
        proof: tuple[str | None, str | None],
    ) -> dict[str, Any]:
        with session_scope(engine) as session:
            contact = _contact_of(session, token)
            items = []
            for purpose in optional:
                latest = (
                    latest_consent(session=session, contact_id=token.contact_id, purpose=purpose)
                    if contact
                    else None
                )
                granted = latest is not None and latest.granted
                if contact is not None and wanted is not None and wanted[purpose] != granted:
                    record_consent(
                        session=session,
                        contact_id=token.contact_id,
                        purpose=purpose,
                        granted=wanted[purpose],
                        source=ConsentSource.PREFERENCE_PAGE,
                        text_version=PREFERENCE_PAGE_VERSION,
                        notification_id=_notification_id(session, token.notification_id),
                        ip=proof[0],
                        user_agent=proof[1],
                    )
                    granted = wanted[purpose]
                items.append({"name": purpose, "label": _label(purpose), "granted": granted})
            return {"purposes": items, "address": mask_address(contact.email if contact else None)}

    @router.get("/unsubscribe/{token}", response_class=HTMLResponse)
    async def confirm_page(token: str, request: Request) -> HTMLResponse:
        found = token_of(token)
        if found is None:
            return page("invalid.html", 404)
        address = await run_in_threadpool(address_of, found)
        return page(
            "confirm.html",
            purpose_label=_label(found.purpose),
            address=address,
            action=str(request.url_for("unsubscribe_one_click", token=token).path),
            preferences=str(request.url_for("preferences_page", token=token).path),
        )

    @router.post("/unsubscribe/{token}", name="unsubscribe_one_click")
    async def one_click(token: str, request: Request) -> HTMLResponse:
        found = token_of(token)
        if found is None:
            return page("invalid.html", 404)
        address = await run_in_threadpool(unsubscribe, found, proof(request))
        return page(
            "done.html",
            purpose_label=_label(found.purpose),
            address=address,
            preferences=str(request.url_for("preferences_page", token=token).path),
        )

    @router.get("/preferences/{token}", name="preferences_page")
    async def preferences_page(token: str, request: Request) -> HTMLResponse:
        found = token_of(token)
        if found is None:
            return page("invalid.html", 404)
        values = await run_in_threadpool(preferences, found, None, proof(request))
        return page("preferences.html", action=request.url.path, saved=False, **values)

    @router.post("/preferences/{token}")
    async def save_preferences(token: str, request: Request) -> HTMLResponse:
        found = token_of(token)
        if found is None:
            return page("invalid.html", 404)
        form = await read_form(request)
        if form.get("submitted") != "1":  # not our form: change nothing
            return page("invalid.html", 400)
        wanted = {p: form.get(p, "").strip().lower() in CHECKED for p in optional}
        values = await run_in_threadpool(preferences, found, wanted, proof(request))
        return page("preferences.html", action=request.url.path, saved=True, **values)

    return router


def _contact_of(session: Session, token: UnsubscribeToken) -> Contact | None:
    """The contact a token acts on, or ``None``: erased since, or the token's notification went
    to someone else (an id reused after an erasure must not act on another person)."""
    contact = session.get(Contact, token.contact_id)
    if contact is None or token.notification_id is None:
        return contact
    notification = session.get(Notification, token.notification_id)
    if notification is None or notification.contact_id != contact.id:
        return None
    return contact


def _notification_id(session: Session, notification_id: int | None) -> int | None:
    """The token's notification id when that notification still exists (retention purges)."""
    if notification_id is None or session.get(Notification, notification_id) is None:
        return None
    return notification_id
