"""The console's preview pages: any rule's email for a contact, and a test copy of it.

::

    GET  /console/contacts/{id}/preview?rule=R&language=L   the rule's email for this contact,
                                                            rendered as a real send would be,
                                                            with the guards' dry-run verdict,
                                                            at desktop and phone widths
    POST /console/contacts/{id}/preview/test                csrf, rule, language: a test copy to
                                                            the signed-in user's own address
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlmodel import Session

from crm_notify.console._view import ConsoleView, is_id
from crm_notify.console.preview import ConsoleTools
from crm_notify.console.throttle import (
    MAX_TEST_COPIES,
    TEST_COPY_WINDOW_S,
    SlidingWindowLimit,
)
from crm_notify.contacts.models import Contact
from crm_notify.errors import EspError, RenderError
from crm_notify.preview import Preview, PreviewError

#: What a language code may look like (BCP 47-ish: ``de``, ``pt-BR``).
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def add_preview_routes(router: APIRouter, view: ConsoleView, previews: ConsoleTools) -> None:
    """Add the preview routes to the console's ``router``."""
    test_copies = SlidingWindowLimit(max_attempts=MAX_TEST_COPIES, window_s=TEST_COPY_WINDOW_S)

    def render(contact_id: int, rule_name: str | None, language: str | None) -> dict[str, Any]:
        """The page's values: the contact, the rules, the chosen one and its preview (or why
        there is none)."""
        with Session(view.engine) as session:
            contact = session.get(Contact, contact_id)
            if contact is None:
                return {}
            rules = previews.email_rules()
            chosen = next((r for r in rules if r.name == rule_name), None)
            values: dict[str, Any] = {
                "contact": contact,
                "rules": rules,
                "rule": chosen,
                "language": language or "",
                "languages": [],
                "preview": None,
                "problem": None,
            }
            if chosen is None:
                return values
            values["languages"] = previews.languages(chosen)
            try:
                values["preview"] = previews.preview(session, chosen, contact, language=language)
            except (PreviewError, RenderError) as exc:
                values["problem"] = str(exc)
            return values

    def language_of(raw: str | None) -> str | None:
        text = (raw or "").strip()
        return text if text and len(text) <= 35 and _LANGUAGE.match(text) else None

    @router.get("/contacts/{contact_id}/preview")
    async def preview_page(request: Request, contact_id: str) -> Response:
        current = await view.signed_in(request)
        if isinstance(current, Response):
            return current
        user, csrf = current
        if not is_id(contact_id):
            return view.refused(404, "No such contact.", user)
        values = await run_in_threadpool(
            render,
            int(contact_id),
            request.query_params.get("rule"),
            language_of(request.query_params.get("language")),
        )
        if not values:
            return view.refused(404, "No such contact.", user)
        return view.page("preview.html", user=user, csrf=csrf, **values)

    @router.post("/contacts/{contact_id}/preview/test")
    async def send_test(request: Request, contact_id: str) -> Response:
        current = await view.signed_in(request)
        if isinstance(current, Response):
            return current
        user, csrf = current
        form = await view.form(request, current)
        if isinstance(form, Response):
            return form
        if not is_id(contact_id):
            return view.refused(404, "No such contact.", user)
        values = await run_in_threadpool(
            render, int(contact_id), form.get("rule"), language_of(form.get("language"))
        )
        preview: Preview | None = values.get("preview")
        if not values or preview is None or preview.message is None:
            problem = values.get("problem") if values else None
            return view.refused(422, problem or "Choose a rule that sends email first.", user)
        if not test_copies.allow(str(user.id)):
            return view.refused(
                429, f"At most {MAX_TEST_COPIES} test copies in 10 minutes: wait a little.", user
            )
        try:
            esp = await run_in_threadpool(
                previews.send_test, preview, to_address=user.email, by_user=user.id
            )
        except EspError as exc:
            values["problem"] = f"The test copy could not be sent: {exc}"
            return view.page("preview.html", 502, user=user, csrf=csrf, **values)
        values["sent"] = f"A test copy went to {user.email} (through {esp})."
        return view.page("preview.html", user=user, csrf=csrf, **values)
