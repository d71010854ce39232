"""The support console: server-rendered pages under ``/console`` (Jinja, no build step).

::

    GET  /console/sign-in                     the sign-in form
    POST /console/sign-in                     email, password, csrf -> session cookie
    POST /console/sign-out                    csrf
    GET  /console?q=...                       contact search (email, user id or contact id)
    GET  /console/contacts/{id}               the contact's timeline: events, decisions and
                                              reasons, notifications with their status history
    GET  /console/notifications/{id}          one notification: headers, text, HTML (in a
                                              sandboxed iframe, scripts off), status history,
                                              provider events
and the admin's forms of :mod:`crm_notify.console.contact_actions` (suppression, consent), the
pages of :mod:`crm_notify.console.preview_pages` (previews, test copies) and
:mod:`crm_notify.console.rules_pages` (rules, lint, dry run, KPI charts).

The console is off (404) until a user exists (``crm-notify users create``). Every page but
sign-in needs a session; every form carries a CSRF token (the session's, or before sign-in a
double-submit cookie), and a POST without the right one is refused (403). Pages are sent with a
Content-Security-Policy that allows no script at all, and ``no-store``.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, or_, select

from crm_notify.console._view import PREFIX, ConsoleView, is_id, off, query_text
from crm_notify.console.contact_actions import add_contact_actions
from crm_notify.console.preview import ConsoleTools, redact_links
from crm_notify.console.preview_pages import add_preview_routes
from crm_notify.console.rules_pages import add_rule_routes
from crm_notify.console.sessions import (
    SESSION_COOKIE,
    SESSION_LIFETIME,
    SIGN_IN_CSRF_COOKIE,
    end_session,
    new_token,
    start_session,
    tokens_match,
)
from crm_notify.console.throttle import SignInThrottle
from crm_notify.console.users import authenticate, console_enabled
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.explain import explain_contact
from crm_notify.outbox.models import Notification, NotificationStatusChange
from crm_notify.unsubscribe.forms import read_form
from crm_notify.webhooks.models import TrackingEventRecord

#: Contacts a search lists at most.
MAX_RESULTS = 50
#: How long a sign-in form may wait before it is sent, in seconds.
SIGN_IN_FORM_LIFETIME_S = 3600


def make_router(
    *, engine: Engine, secure_cookies: bool, previews: ConsoleTools | None = None
) -> APIRouter:
    """Build the console routes.

    Parameters:
        engine: the database.
        secure_cookies: send the cookies with ``Secure`` (the service is reached over https).
        previews: what rule previews and test copies need (``None``: no preview pages).
    """
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    view = ConsoleView(engine=engine, secure_cookies=secure_cookies)
    throttle = SignInThrottle()
    page, refused, cookie, signed_in = view.page, view.refused, view.cookie, view.signed_in
    add_contact_actions(router, view, purposes=previews.purposes if previews else ())
    if previews is not None:
        add_preview_routes(router, view, previews)
        add_rule_routes(router, view, previews)

    def sign_in_page(status: int = 200, **values: Any) -> Response:
        """The sign-in form, with a fresh double-submit token in the page and its cookie."""
        token = new_token()
        response = page("sign_in.html", status, csrf=token, **values)
        cookie(response, SIGN_IN_CSRF_COOKIE, token, SIGN_IN_FORM_LIFETIME_S)
        return response

    @router.get("/sign-in")
    async def sign_in_form(request: Request) -> Response:
        enabled, _current = await run_in_threadpool(view.state, request)
        if not enabled:
            return off()
        return sign_in_page(next=_local(request.query_params.get("next")))

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        form = await read_form(request)
        if not tokens_match(form.get("csrf"), request.cookies.get(SIGN_IN_CSRF_COOKIE)):
            return refused(403, "The form expired or was not sent from this page: reload it.")
        if not throttle.allow(request.client.host if request.client else "?"):
            response = refused(429, "Too many sign-in attempts from here: wait a few minutes.")
            response.headers["Retry-After"] = str(int(throttle.window_s))
            return response

        def check() -> str | None:
            with throttle.hashing, session_scope(engine) as session:
                if not console_enabled(session):
                    return None
                user = authenticate(session, form.get("email", ""), form.get("password", ""))
                if user is None:
                    return ""
                end_session(session, request.cookies.get(SESSION_COOKIE))  # the previous one
                return start_session(session, user)

        token = await run_in_threadpool(check)
        if token is None:
            return off()
        if not token:
            return sign_in_page(
                401,
                next=_local(form.get("next")),
                error="Wrong email or password.",
                email=form.get("email", ""),
            )
        signed = RedirectResponse(_local(form.get("next")) or PREFIX, status_code=303)
        cookie(signed, SESSION_COOKIE, token, int(SESSION_LIFETIME.total_seconds()))
        signed.delete_cookie(SIGN_IN_CSRF_COOKIE, path=PREFIX)
        return signed

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        current = await signed_in(request)
        if isinstance(current, Response):
            return current
        form = await view.form(request, current)
        if isinstance(form, Response):
            return form

        def close() -> None:
            with session_scope(engine) as session:
                end_session(session, request.cookies.get(SESSION_COOKIE))

        await run_in_threadpool(close)
        response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    @router.get("")
    async def search(request: Request) -> Response:
        current = await signed_in(request)
        if isinstance(current, Response):
            return current
        user, csrf = current
        query = query_text(request, "q")

        def find() -> list[Contact]:
            with Session(engine) as session:
                return _search(session, query)

        found = await run_in_threadpool(find) if query else []
        return page("search.html", user=user, csrf=csrf, q=query, contacts=found)

    @router.get("/contacts/{contact_id}")
    async def contact_page(request: Request, contact_id: str) -> Response:
        current = await signed_in(request)
        if isinstance(current, Response):
            return current
        user, csrf = current
        if not is_id(contact_id):
            return refused(404, "No such contact.", user)

        def load() -> Any:
            with Session(engine) as session:
                contact = session.get(Contact, int(contact_id))
                if contact is None:
                    return None
                return explain_contact(session=session, contact=contact)

        timeline = await run_in_threadpool(load)
        if timeline is None:
            return refused(404, "No such contact.", user)
        done = request.query_params.get("done")
        return page("contact.html", user=user, csrf=csrf, timeline=timeline, done=done)

    @router.get("/notifications/{notification_id}")
    async def notification_page(request: Request, notification_id: str) -> Response:
        current = await signed_in(request)
        if isinstance(current, Response):
            return current
        user, csrf = current
        if not is_id(notification_id):
            return refused(404, "No such notification.", user)

        def load() -> dict[str, Any] | None:
            with Session(engine) as session:
                return _notification_view(session, int(notification_id))

        view = await run_in_threadpool(load)
        if view is None:
            return refused(404, "No such notification.", user)
        return page("notification.html", user=user, csrf=csrf, **view)

    return router


def _local(target: str | None) -> str | None:
    """``target`` when it is a path inside the console (no open redirect), else ``None``."""
    if not target or not target.startswith(PREFIX) or target.startswith("//"):
        return None
    if any(c in target for c in "\\\r\n") or len(target) > 500:
        return None
    return target


def _search(session: Session, query: str) -> list[Contact]:
    """Contacts whose email contains ``query`` (any case), whose user id is ``query``, or whose
    id is ``query``; by email."""
    conditions = [
        col(Contact.email).ilike(f"%{_escape_like(query.lower())}%", escape="\\"),
        col(Contact.user_id) == query,
    ]
    if is_id(query):
        conditions.append(col(Contact.id) == int(query))
    return list(
        session.exec(
            select(Contact).where(or_(*conditions)).order_by(col(Contact.email)).limit(MAX_RESULTS)
        )
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _notification_view(session: Session, notification_id: int) -> dict[str, Any] | None:
    """What the notification page shows: the row, its message's headers and parts, its status
    history and the provider's events."""
    row = session.get(Notification, notification_id)
    if row is None:
        return None
    headers: list[tuple[str, str]] = []
    text = html = None
    if row.message:
        message = email.message_from_string(row.message, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        headers = [(name, redact_links(str(value))) for name, value in message.items()]
        text_part = message.get_body(("plain",))
        html_part = message.get_body(("html",))
        if isinstance(text_part, EmailMessage):
            text = redact_links(text_part.get_content())
        if isinstance(html_part, EmailMessage):
            html = redact_links(html_part.get_content())
    history = session.exec(
        select(NotificationStatusChange)
        .where(NotificationStatusChange.notification_id == notification_id)
        .order_by(col(NotificationStatusChange.id))
    ).all()
    events = session.exec(
        select(TrackingEventRecord)
        .where(TrackingEventRecord.notification_id == notification_id)
        .order_by(col(TrackingEventRecord.received_at))
    ).all()
    return {
        "notification": row,
        "headers": headers,
        "text": text,
        "html": html,
        "history": history,
        "events": events,
    }
