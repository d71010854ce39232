"""The consent ledger (append-only, per contact and purpose) and the guard that reads it.

A contact's consent to a purpose is its latest :class:`ConsentRecord` for that purpose: no
record means no consent. Records are only ever added, never changed, so the ledger shows who
granted or withdrew what, when, from where and on which text (GDPR Art. 7(1)).

Segment calls carry consent two ways, both read by :func:`consent_from_call`:

- ``context.consent.categoryPreferences`` (identify or track), a map of consent category to
  ``true``/``false`` as Segment's consent management sends it; categories map to purposes by
  configuration, matched in any case. ``context.consent.version`` (a string, our extension:
  Segment defines no such field) is kept as the text version the person agreed to.
- ``identify`` traits named in configuration (``marketing_consent: true``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlmodel import Session, col, select

from crm_notify.events.schemas import SegmentCall
from crm_notify.guards._memo import lock_contact, memo
from crm_notify.guards.base import Guard, SendAttempt, Verdict
from crm_notify.guards.models import ConsentRecord, ConsentSource, LawfulBasis
from crm_notify.lifecycle.emit import emit
from crm_notify.lifecycle.models import LifecycleName, LifecycleSource

#: The purpose that needs no consent.
TRANSACTIONAL = "transactional"

#: Default Segment consent category -> purpose map.
DEFAULT_CATEGORIES: Mapping[str, str] = {"marketing": "marketing"}
#: Default identify trait -> purpose map.
DEFAULT_TRAITS: Mapping[str, str] = {"marketing_consent": "marketing"}


def record_consent(
    *,
    session: Session,
    contact_id: int,
    purpose: str,
    granted: bool,
    source: str,
    lawful_basis: str = LawfulBasis.CONSENT,
    text_version: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    actor: str | None = None,
    event_id: int | None = None,
    notification_id: int | None = None,
    only_if_changed: bool = False,
) -> ConsentRecord | None:
    """Append a grant or withdrawal to the ledger (in the caller's transaction).

    Parameters:
        source: a :class:`ConsentSource` value.
        lawful_basis: a :class:`LawfulBasis` value.
        text_version, ip, user_agent: the proof, where known (cut to their column sizes).
        actor: who recorded it (API key name, admin), where known.
        only_if_changed: write nothing when the latest record for the purpose already says
            ``granted`` (the contact's row is locked first, so two such calls cannot both
            write on PostgreSQL). ``contact.subscribed`` / ``contact.unsubscribed`` is emitted
            when the consent changes (no record counts as not granted).

    Returns:
        The new record, or ``None`` when ``only_if_changed`` found nothing to change.
    """
    lock_contact(session, contact_id)  # two writers of one contact's consent take turns
    latest = current_record(session, contact_id=contact_id, purpose=purpose)
    if only_if_changed and latest is not None and latest.granted == granted:
        return None
    # No record counts as no consent: a first withdrawal changes nothing to announce.
    changed = (latest.granted if latest is not None else False) != granted
    record = ConsentRecord(
        contact_id=contact_id,
        purpose=purpose,
        granted=granted,
        source=str(source),
        lawful_basis=str(lawful_basis),
        text_version=_cut(text_version, 255),
        ip=_cut(ip, 64),
        user_agent=_cut(user_agent, 1024),
        actor=_cut(actor, 255),
        event_id=event_id,
        notification_id=notification_id,
    )
    session.add(record)
    if changed:
        emit(
            session,
            LifecycleName.SUBSCRIBED if granted else LifecycleName.UNSUBSCRIBED,
            contact_id=contact_id,
            source=LIFECYCLE_SOURCES.get(str(source), LifecycleSource.API),
            purpose=purpose,
        )
    session.flush()
    memo(session, "consent")[contact_id, purpose] = record
    return record


#: The lifecycle source of each consent source.
LIFECYCLE_SOURCES = {
    ConsentSource.API.value: LifecycleSource.API,
    ConsentSource.IDENTIFY_TRAIT.value: LifecycleSource.API,
    ConsentSource.SEGMENT.value: LifecycleSource.API,
    ConsentSource.UNSUBSCRIBE_LINK.value: LifecycleSource.CONTACT,
    ConsentSource.PREFERENCE_PAGE.value: LifecycleSource.CONTACT,
    ConsentSource.ESP_WEBHOOK.value: LifecycleSource.CONTACT,
    ConsentSource.ADMIN.value: LifecycleSource.ADMIN,
}


def _cut(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None


def current_record(session: Session, *, contact_id: int, purpose: str) -> ConsentRecord | None:
    """:func:`latest_consent`, remembered for the rest of the transaction (see
    :mod:`crm_notify.guards._memo`)."""
    remembered = memo(session, "consent")
    key = (contact_id, purpose)
    if key not in remembered and contact_id in memo(session, "consent_loaded"):
        return None  # preloaded: the contact has no record for this purpose
    if key not in remembered:
        with session.no_autoflush:
            remembered[key] = latest_consent(
                session=session, contact_id=contact_id, purpose=purpose
            )
    record: ConsentRecord | None = remembered[key]
    return record


def preload_consent(session: Session, contact_ids: Sequence[int]) -> None:
    """Look up the current consent of ``contact_ids`` (every purpose) with one query, for the
    guard checks that follow in this transaction (intake calls it for a batch's contacts)."""
    remembered = memo(session, "consent")
    loaded = memo(session, "consent_loaded")
    wanted = sorted({c for c in contact_ids if c not in loaded})
    if not wanted:
        return
    with session.no_autoflush:
        rows = session.exec(
            select(ConsentRecord)
            .where(col(ConsentRecord.contact_id).in_(wanted))
            .order_by(col(ConsentRecord.id))
        ).all()
    for row in rows:  # oldest first: the latest per purpose wins
        remembered[row.contact_id, row.purpose] = row
    for contact_id in wanted:
        loaded[contact_id] = True


def latest_consent(*, session: Session, contact_id: int, purpose: str) -> ConsentRecord | None:
    """The contact's latest record for ``purpose`` (its current state), or ``None``."""
    query = (
        select(ConsentRecord)
        .where(ConsentRecord.contact_id == contact_id, ConsentRecord.purpose == purpose)
        .order_by(col(ConsentRecord.id).desc())
        .limit(1)
    )
    return session.exec(query).first()


def consent_history(*, session: Session, contact_id: int) -> list[ConsentRecord]:
    """Every record of the contact, oldest first."""
    query = (
        select(ConsentRecord)
        .where(ConsentRecord.contact_id == contact_id)
        .order_by(col(ConsentRecord.id))
    )
    return list(session.exec(query).all())


def current_consent(*, session: Session, contact_id: int) -> dict[str, ConsentRecord]:
    """The latest record per purpose the contact has any record for."""
    current: dict[str, ConsentRecord] = {}
    for record in consent_history(session=session, contact_id=contact_id):
        current[record.purpose] = record
    return current


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """A grant or withdrawal read from a Segment call (see :func:`consent_from_call`)."""

    purpose: str
    granted: bool
    source: str
    ip: str | None = None
    user_agent: str | None = None
    text_version: str | None = None


def consent_from_call(
    call: SegmentCall,
    *,
    categories: Mapping[str, str] = DEFAULT_CATEGORIES,
    traits: Mapping[str, str] = DEFAULT_TRAITS,
) -> list[ConsentChange]:
    """The consent changes a call states (see the module docstring).

    Only ``true`` and ``false`` count; other values and unmapped categories are ignored. When
    both a category and a trait name one purpose, both are returned in that order (the trait,
    recorded last, wins).

    Parameters:
        categories: Segment consent category -> purpose (matched in any case).
        traits: identify trait -> purpose.
    """
    context = call.context
    ip = _text(context.get("ip"))
    user_agent = _text(context.get("userAgent"))
    consent = context.get("consent")
    consent = consent if isinstance(consent, dict) else {}
    version = _text(consent.get("version"))
    changes: list[ConsentChange] = []
    preferences = consent.get("categoryPreferences")
    if call.type in ("identify", "track") and isinstance(preferences, dict):
        by_category = {name.lower(): purpose for name, purpose in categories.items()}
        for category, value in preferences.items():
            purpose = by_category.get(str(category).lower())
            if purpose is not None and isinstance(value, bool):
                changes.append(
                    ConsentChange(purpose, value, ConsentSource.SEGMENT, ip, user_agent, version)
                )
    if call.type == "identify":
        for trait, purpose in traits.items():
            value = call.traits.get(trait)
            if isinstance(value, bool):
                changes.append(
                    ConsentChange(
                        purpose, value, ConsentSource.IDENTIFY_TRAIT, ip, user_agent, version
                    )
                )
    return changes


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def record_changes(
    *,
    session: Session,
    contact_id: int,
    changes: Sequence[ConsentChange],
    event_id: int | None = None,
) -> list[ConsentRecord]:
    """Record the changes of :func:`consent_from_call` that change something (Segment sends
    the same preferences with every call); returns the records written."""
    written = []
    for change in changes:
        record = record_consent(
            session=session,
            contact_id=contact_id,
            purpose=change.purpose,
            granted=change.granted,
            source=change.source,
            text_version=change.text_version,
            ip=change.ip,
            user_agent=change.user_agent,
            event_id=event_id,
            only_if_changed=True,
        )
        if record is not None:
            written.append(record)
    return written


class ConsentGuard(Guard):
    """Skips a send whose purpose needs consent the contact has not granted.

    ``transactional`` passes; any other purpose needs the contact's latest record for it to be
    a grant. Runs again at delivery, so a withdrawal stops messages already queued.
    """

    name: ClassVar[str] = "consent"
    at_delivery: ClassVar[bool] = True

    def check(self, session: Session, attempt: SendAttempt) -> Verdict | None:
        """``None`` when consent allows the send, else a skip naming the record."""
        purpose = attempt.purpose
        if purpose == TRANSACTIONAL:
            return None
        contact_id = attempt.contact.id
        assert contact_id is not None
        record = current_record(session, contact_id=contact_id, purpose=purpose)
        if record is None:
            return Verdict.skip(
                f"no {purpose} consent recorded",
                guard=self.name,
                purpose=purpose,
                consent_record_id=None,
            )
        if record.granted:
            return None
        return Verdict.skip(
            f"{purpose} consent withdrawn {record.recorded_at:%Y-%m-%d %H:%M} UTC "
            f"({record.source})",
            guard=self.name,
            purpose=purpose,
            consent_record_id=record.id,
            source=record.source,
        )
