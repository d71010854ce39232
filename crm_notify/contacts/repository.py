"""Finding and updating contacts from Segment calls."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.errors import EventValidationError

#: Trait names read into the contact's own columns (the rest stay in ``traits``).
LANGUAGE_TRAITS = ("language", "locale")
TIMEZONE_TRAITS = ("timezone", "time_zone", "timeZone")


def find_contact(
    *, session: Session, user_id: str | None, anonymous_id: str | None
) -> Contact | None:
    """Return the contact known by ``user_id``, else by ``anonymous_id``.

    A contact found by ``anonymous_id`` that already belongs to another ``userId`` is not
    returned for a call that carries a ``userId``: two people sharing a device must not share
    a contact (and each other's mail).
    """
    if user_id:
        contact = session.exec(select(Contact).where(Contact.user_id == user_id)).first()
        if contact is not None:
            return contact
    if anonymous_id:
        contact = session.exec(select(Contact).where(Contact.anonymous_id == anonymous_id)).first()
        if contact is not None and (not user_id or contact.user_id in (None, user_id)):
            return contact
    return None


def _first(mapping: dict[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = mapping.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _country(traits: dict[str, Any]) -> str | None:
    address = traits.get("address")
    if isinstance(address, dict) and isinstance(address.get("country"), str):
        return str(address["country"]).strip() or None
    country = traits.get("country")
    return country.strip() or None if isinstance(country, str) else None


def upsert_contact(
    *,
    session: Session,
    user_id: str | None,
    anonymous_id: str | None,
    traits: dict[str, Any],
    email: str | None,
    context: dict[str, Any],
) -> tuple[Contact, bool]:
    """Create or update the contact of an ``identify`` call.

    Parameters:
        email: the already-normalised ``traits.email`` (or ``None`` to keep the current one).
        context: the call's ``context``; ``context.locale`` and ``context.timezone`` are used
            when the traits give no language or time zone.

    Returns:
        The contact and whether it was created by this call.

    Raises:
        EventValidationError: the email already belongs to a contact with another ``userId``.
    """
    contact = find_contact(session=session, user_id=user_id, anonymous_id=anonymous_id)
    if email is not None:
        owner = session.exec(select(Contact).where(Contact.email == email)).first()
        if owner is not None and (contact is None or owner.id != contact.id):
            contact = _claim_email(session, owner=owner, contact=contact, user_id=user_id)
    created = contact is None
    if contact is None:
        contact = Contact()
    if user_id and not contact.user_id:
        contact.user_id = user_id
    if anonymous_id and not contact.anonymous_id:
        contact.anonymous_id = anonymous_id
    if email is not None:
        contact.email = email
    merged = dict(contact.traits or {})
    merged.update(traits)
    contact.traits = merged
    language = _first(traits, LANGUAGE_TRAITS) or _first(context, ("locale",))
    if language:
        contact.language = language[:35]
    timezone = _first(traits, TIMEZONE_TRAITS) or _first(context, ("timezone",))
    if timezone:
        contact.timezone = timezone[:64]
    country = _country(traits)
    if country:
        contact.country = country[:64]
    contact.updated_at = now()
    session.add(contact)
    session.flush()
    return contact, created


def _claim_email(
    session: Session, *, owner: Contact, contact: Contact | None, user_id: str | None
) -> Contact:
    """Decide who gets an address that ``owner`` already has.

    - no contact matched the call: the owner is that contact, unless it has another userId;
    - the owner is anonymous (no userId): the address moves to the matched contact;
    - otherwise two known people claim one address: refused.
    """
    if contact is None and (owner.user_id is None or user_id is None or owner.user_id == user_id):
        return owner
    if contact is not None and owner.user_id is None:
        owner.email = None
        session.add(owner)
        session.flush()
        return contact
    raise EventValidationError(
        "traits.email", "this address already belongs to another contact (another userId)"
    )


def ensure_contact(*, session: Session, user_id: str | None, anonymous_id: str | None) -> Contact:
    """Return the contact of a non-identify call, creating a bare one for a new id."""
    contact = find_contact(session=session, user_id=user_id, anonymous_id=anonymous_id)
    if contact is None:
        contact = Contact(user_id=user_id or None, anonymous_id=anonymous_id)
        session.add(contact)
        session.flush()
    return contact


def contact_data(contact: Contact) -> dict[str, Any]:
    """The contact as plain data for conditions and templates."""
    traits = dict(contact.traits or {})
    return {
        "id": contact.id,
        "user_id": contact.user_id,
        "email": contact.email,
        "language": contact.language,
        "timezone": contact.timezone,
        "country": contact.country,
        "first_name": traits.get("first_name") or traits.get("firstName"),
        "last_name": traits.get("last_name") or traits.get("lastName"),
        "name": traits.get("name"),
        "traits": traits,
    }
