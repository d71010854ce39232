"""Finding and updating contacts from Segment calls.

Intake loads every contact a batch names with one query (:func:`preload_contacts`); lookups by
those ``userId``s, ``anonymousId``s and addresses are then answered from a per-transaction
:class:`ContactIndex` that follows every change made here. Other lookups query the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session, col, or_, select

from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.errors import EventValidationError
from crm_notify.events.emails import normalise_email

#: Trait names read into the contact's own columns (the rest stay in ``traits``).
LANGUAGE_TRAITS = ("language", "locale")
TIMEZONE_TRAITS = ("timezone", "time_zone", "timeZone")

#: ``Session.info`` key of the transaction's :class:`ContactIndex`.
_INDEX = "crm_notify.contacts"
#: The indexed columns.
_KEYS = ("user_id", "anonymous_id", "email")


class ContactIndex:
    """The contacts of one transaction by ``user_id``, ``anonymous_id`` and ``email``.

    It knows every contact whose value for a preloaded key is that key: the preload reads them
    all, and :meth:`update` re-files a contact after each change made in this module (changes
    only set keys of the batch, or clear them). ``anonymous_id`` is not unique: a key that
    several contacts share is left to the database, as are keys never preloaded.
    """

    def __init__(self, keys: dict[str, set[str]], contacts: Iterable[Contact]) -> None:
        self._keys = keys
        self._found: dict[str, dict[str, list[Contact]]] = {name: {} for name in _KEYS}
        # id(contact) -> (contact, its filed values); holding the contact keeps its id unique.
        self._filed: dict[int, tuple[Contact, tuple[Any, ...]]] = {}
        for contact in contacts:
            self.update(contact)

    def get(self, name: str, value: str) -> tuple[bool, Contact | None]:
        """Whether the index can tell, and the only contact with ``name == value`` (or
        ``None``). It cannot tell for a key never preloaded or shared by several contacts."""
        if value not in self._keys[name]:
            return False, None
        found = self._found[name].get(value, [])
        if len(found) > 1:
            return False, None
        return True, (found[0] if found else None)

    def update(self, contact: Contact) -> None:
        """File ``contact`` under its current values (after a change, or when loaded)."""
        now_filed = tuple(getattr(contact, name) for name in _KEYS)
        before = self._filed.get(id(contact), (contact, (None,) * len(_KEYS)))[1]
        for name, old, new in zip(_KEYS, before, now_filed, strict=True):
            if old == new:
                continue
            if old is not None and old in self._found[name]:
                self._found[name][old] = [c for c in self._found[name][old] if c is not contact]
            if new is not None and new in self._keys[name]:
                self._found[name].setdefault(new, []).append(contact)
        self._filed[id(contact)] = (contact, now_filed)


def preload_contacts(
    session: Session,
    *,
    user_ids: Iterable[str],
    anonymous_ids: Iterable[str],
    emails: Iterable[str],
) -> Sequence[Contact]:
    """Load every contact with one of these ids or addresses (one query) and index them for
    the rest of the transaction; :func:`forget_contacts` drops the index. Returns them."""
    keys = {"user_id": set(user_ids), "anonymous_id": set(anonymous_ids), "email": set(emails)}
    conditions = [
        col(getattr(Contact, name)).in_(sorted(values)) for name, values in keys.items() if values
    ]
    rows = session.exec(select(Contact).where(or_(*conditions))).all() if conditions else []
    session.info[_INDEX] = ContactIndex(keys, rows)
    return rows


def forget_contacts(session: Session) -> None:
    """Drop the index of :func:`preload_contacts`."""
    session.info.pop(_INDEX, None)


def _lookup(session: Session, name: str, value: str) -> Contact | None:
    """The (first) contact with ``name == value``, from the index when it can tell."""
    index: ContactIndex | None = session.info.get(_INDEX)
    if index is not None:
        known, found = index.get(name, value)
        if known:
            return found
    column = getattr(Contact, name)
    return session.exec(select(Contact).where(column == value)).first()


def _refile(session: Session, contact: Contact) -> None:
    index: ContactIndex | None = session.info.get(_INDEX)
    if index is not None:
        index.update(contact)


def find_contact(
    *, session: Session, user_id: str | None, anonymous_id: str | None
) -> Contact | None:
    """Return the contact known by ``user_id``, else by ``anonymous_id``.

    A contact found by ``anonymous_id`` that already belongs to another ``userId`` is not
    returned for a call that carries a ``userId``: two people sharing a device must not share
    a contact (and each other's mail).
    """
    if user_id:
        contact = _lookup(session, "user_id", user_id)
        if contact is not None:
            return contact
    if anonymous_id:
        contact = _lookup(session, "anonymous_id", anonymous_id)
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
        owner = _lookup(session, "email", email)
        if owner is not None and (contact is None or owner.id != contact.id):
            contact = _claim_email(session, owner=owner, contact=contact, user_id=user_id)
    created = contact is None
    if contact is None:
        contact = Contact()
    unique_before = (contact.user_id, contact.email)
    traits_before = dict(contact.traits or {})
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
    # A new contact needs its id now; a changed unique column is written at once, in call
    # order, so a later change in this batch cannot collide with the old value. Other updates
    # wait for the next flush.
    if created:
        _insert_now(session, contact)
    else:
        session.add(contact)
        if (contact.user_id, contact.email) != unique_before:
            session.flush()
    _refile(session, contact)
    if not created:
        _emit_changes(session, contact, traits_before, old_email=unique_before[1])
    return contact, created


def _emit_changes(
    session: Session, contact: Contact, traits_before: dict[str, Any], *, old_email: str | None
) -> None:
    """``contact.email_changed`` and ``contact.profile_updated`` (with the changed fields) for
    an identify call that changed an existing contact."""
    from crm_notify.lifecycle.emit import emit
    from crm_notify.lifecycle.models import LifecycleName, LifecycleSource

    assert contact.id is not None
    if old_email and contact.email and contact.email != old_email:
        emit(
            session,
            LifecycleName.EMAIL_CHANGED,
            contact_id=contact.id,
            source=LifecycleSource.API,
            old_email=old_email,
            new_email=contact.email,
        )
    after = contact.traits or {}
    changed = sorted(
        k for k in after.keys() | traits_before.keys() if after.get(k) != traits_before.get(k)
    )
    if changed:
        emit(
            session,
            LifecycleName.PROFILE_UPDATED,
            contact_id=contact.id,
            source=LifecycleSource.API,
            changed=changed,
        )


def _insert_now(session: Session, contact: Contact) -> None:
    """Insert a new contact at once and add it to the session as a loaded row.

    Only the contact is written: a flush would also write everything else the batch has
    pending, a few rows at a time, instead of in multi-row statements at the end.
    """
    table = cast(sa.Table, sa.inspect(Contact).local_table)
    values = {c.name: getattr(contact, c.name) for c in table.columns if c.name != "id"}
    insert = sa.insert(table).values(values).returning(table.c.id)
    with session.no_autoflush:  # pending changes never touch the unique columns (see above)
        contact.id = session.execute(insert).scalar_one()
    make_transient_to_detached(contact)
    session.add(contact)


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
        _refile(session, owner)
        return contact
    raise EventValidationError(
        "traits.email", "this address already belongs to another contact (another userId)"
    )


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


def find_contact_by_ref(session: Session, ref: str) -> Contact | None:
    """The contact named by ``ref``, as the admin API and CLI name contacts.

    Parameters:
        ref: an email address (matched normalised, in any case), ``user:<userId>`` or
            ``id:<n>``.

    Raises:
        ValueError: ``ref`` is none of these forms.

    Returns:
        The contact, or ``None`` when no contact matches.
    """
    ref = ref.strip()
    if ref.startswith("user:"):
        user_id = ref[len("user:") :].strip()
        if not user_id:
            raise ValueError("contact reference user: needs a userId, e.g. user:42")
        return session.exec(select(Contact).where(Contact.user_id == user_id)).first()
    if ref.startswith("id:"):
        number = ref[len("id:") :].strip()
        if not number.isdigit():
            raise ValueError(f"contact reference {ref!r}: id: needs a number, e.g. id:17")
        return session.get(Contact, int(number))
    if "@" not in ref:
        raise ValueError(f"contact reference {ref!r} is not an email, user:<userId> or id:<n>")
    try:
        email = normalise_email(ref)
    except EventValidationError as exc:
        raise ValueError(f"contact reference is not a valid email address: {exc}") from exc
    found = session.exec(select(Contact).where(Contact.email == email)).first()
    if found is not None:
        return found
    lowered = email.lower()
    return session.exec(select(Contact).where(sa.func.lower(Contact.email) == lowered)).first()
