"""What an admin may change from a contact's console page: suppression and consent.

::

    POST /console/contacts/{id}/suppress   csrf, detail: add the address to the suppression list
    POST /console/contacts/{id}/consent    csrf, purpose, action (grant|withdraw), note: record
                                           consent in the ledger (source ``admin``; a grant
                                           needs the note saying how the customer gave it)

Support users are refused (403); every form needs the session's CSRF token.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from crm_notify.console._view import PREFIX, ConsoleView, Current, is_id
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.errors import EventValidationError
from crm_notify.guards.consent import TRANSACTIONAL, record_consent
from crm_notify.guards.models import ConsentSource, SuppressionReason
from crm_notify.guards.suppression import suppress

#: Longest note kept.
MAX_NOTE_CHARS = 500


def add_contact_actions(router: APIRouter, view: ConsoleView, *, purposes: Sequence[str]) -> None:
    """Add the admin's contact forms to the console's ``router``.

    Parameters:
        purposes: the purposes consent may be recorded for (transactional needs none).
    """
    consentable = [p for p in purposes or ("marketing",) if p != TRANSACTIONAL]

    async def admin_form(
        request: Request, contact_id: str, what: str
    ) -> tuple[Current, dict[str, str]] | Response:
        current = await view.signed_in(request)
        if isinstance(current, Response):
            return current
        form = await view.form(request, current)
        if isinstance(form, Response):
            return form
        if not current[0].is_admin:
            return view.refused(403, f"Only an admin may change {what}.", current[0])
        if not is_id(contact_id):
            return view.refused(404, "No such contact.", current[0])
        return current, form

    def done(contact_id: str, what: str) -> Response:
        return RedirectResponse(f"{PREFIX}/contacts/{int(contact_id)}?done={what}", status_code=303)

    @router.post("/contacts/{contact_id}/suppress")
    async def suppress_contact(request: Request, contact_id: str) -> Response:
        checked = await admin_form(request, contact_id, "the suppression list")
        if isinstance(checked, Response):
            return checked
        (user, _csrf), form = checked

        def add() -> bool:
            with session_scope(view.engine) as session:
                contact = session.get(Contact, int(contact_id))
                if contact is None or not contact.email:
                    return False
                suppress(
                    session=session,
                    email=contact.email,
                    reason=SuppressionReason.MANUAL,
                    created_by=f"console:{user.email}",
                    detail=(form.get("detail") or "").strip()[:MAX_NOTE_CHARS] or None,
                )
                return True

        try:
            added = await run_in_threadpool(add)
        except EventValidationError:
            added = False
        if not added:
            return view.refused(404, "This contact has no address to suppress.", user)
        return done(contact_id, "suppressed")

    @router.post("/contacts/{contact_id}/consent")
    async def change_consent(request: Request, contact_id: str) -> Response:
        checked = await admin_form(request, contact_id, "consent")
        if isinstance(checked, Response):
            return checked
        (user, _csrf), form = checked
        purpose, action = form.get("purpose", ""), form.get("action", "")
        note = (form.get("note") or "").strip()[:MAX_NOTE_CHARS]
        if purpose not in consentable or action not in ("grant", "withdraw"):
            return view.refused(422, "Choose a purpose, and grant or withdraw.", user)
        if action == "grant" and not note:
            return view.refused(
                422, "A grant needs a note saying how the customer gave their consent.", user
            )

        def record() -> bool:
            with session_scope(view.engine) as session:
                if session.get(Contact, int(contact_id)) is None:
                    return False
                record_consent(
                    session=session,
                    contact_id=int(contact_id),
                    purpose=purpose,
                    granted=action == "grant",
                    source=ConsentSource.ADMIN,
                    text_version=note or None,
                    actor=f"console:{user.email}",
                    user_agent=request.headers.get("user-agent"),
                    ip=request.client.host if request.client else None,
                )
                return True

        if not await run_in_threadpool(record):
            return view.refused(404, "No such contact.", user)
        return done(contact_id, "granted" if action == "grant" else "withdrawn")
