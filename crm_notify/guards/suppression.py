"""The suppression list: addresses that must not be mailed, and the guard that enforces it.

Entries are keyed by :func:`address_hash` (SHA-256 of the normalised, lower-cased address) and
a purpose: :data:`~crm_notify.guards.models.ALL_PURPOSES` (``"*"``, a hard suppression that
transactional mail respects too) or one purpose. Adding an entry twice updates the first one;
the unique constraint ``uq_suppression_address`` keeps concurrent adds from duplicating it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.errors import EventValidationError
from crm_notify.events.emails import normalise_email
from crm_notify.guards._memo import forget, memo
from crm_notify.guards.base import Guard, SendAttempt, Verdict
from crm_notify.guards.models import ALL_PURPOSES, Suppression, SuppressionReason
from crm_notify.outbox.models import DecisionOutcome, Notification

#: Entries :func:`list_suppressions` returns when no limit is given.
DEFAULT_LIMIT = 100
#: A reason an admin may give (``erased`` is set by erasure only).
AdminReason = Literal["manual", "hard_bounce", "complaint", "invalid"]
#: The :data:`AdminReason` values.
ADMIN_REASONS: tuple[str, ...] = get_args(AdminReason)


def _canonical(email: str, *, strict: bool) -> str:
    """The address as suppression compares it: normalised (strict), or when it is not a
    valid address and not ``strict``, stripped as given."""
    try:
        return normalise_email(email.strip())
    except EventValidationError:
        if strict or not email.strip():
            raise
        return email.strip()[:320]


def address_hash(email: str, *, strict: bool = True) -> str:
    """The hex SHA-256 of ``email`` normalised and lower-cased: what suppression is keyed by.

    Parameters:
        strict: refuse an invalid address; otherwise hash it as given (stripped, lower-cased),
            so addresses that failed validation at delivery can be suppressed too.

    Raises:
        EventValidationError: ``email`` is not a valid address (and ``strict``).
    """
    canonical = _canonical(email, strict=strict).lower()
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def address_hash_or_none(email: str | None) -> str | None:
    """:func:`address_hash` of ``email`` (invalid ones as given), ``None`` when empty."""
    if not email or not email.strip():
        return None
    return address_hash(email, strict=False)


def suppress(
    *,
    session: Session,
    email: str,
    reason: SuppressionReason | str,
    created_by: str,
    purpose: str = ALL_PURPOSES,
    detail: str | None = None,
    keep_address: bool = True,
) -> Suppression:
    """Suppress ``email`` for ``purpose`` (default: every purpose), or update its entry.

    Parameters:
        reason: a :class:`SuppressionReason`.
        created_by: who did it (an API key's name, an OS user, ``esp-webhook``...).
        detail: free text (a bounce diagnostic, a support ticket).
        keep_address: store the address in clear for admins to read; ``False`` keeps only
            its hash (erasure).

    Raises:
        EventValidationError: ``email`` is not a valid address (accepted as given for
            reason ``invalid``: an address that failed validation at delivery).
        ValueError: ``reason`` is not a :class:`SuppressionReason`.

    Returns:
        The entry, new or updated, in ``session``.
    """
    strict = reason != SuppressionReason.INVALID
    digest = address_hash(email, strict=strict)
    values: dict[str, Any] = {
        "address_hash": digest,
        "email": _canonical(email, strict=strict) if keep_address else None,
        "purpose": purpose,
        "reason": str(SuppressionReason(reason)),
        "detail": detail,
        "created_by": created_by[:255],
        "created_at": now(),
    }
    previous = session.exec(
        select(Suppression.reason).where(
            Suppression.address_hash == digest, Suppression.purpose == purpose
        )
    ).first()
    table = Suppression.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    # One statement that cannot fail on a concurrent add: the loser's row is not written,
    # and the existing row is updated below instead.
    session.execute(
        insert.values(values).on_conflict_do_nothing(index_elements=["address_hash", "purpose"])
    )
    entry = session.exec(
        select(Suppression)
        .where(Suppression.address_hash == digest, Suppression.purpose == purpose)
        .execution_options(populate_existing=True)
    ).one()
    entry.reason = values["reason"]
    entry.detail = detail
    entry.created_by = values["created_by"]
    if keep_address:
        entry.email = values["email"]
    session.add(entry)
    if values["reason"] in CLEANING_REASONS and previous != values["reason"] and values["email"]:
        _emit_cleaned(session, values["email"], values["reason"])
    session.flush()  # an UPDATE only when something changed
    forget(session, "suppression")
    return entry


#: Suppression reasons that clean an address (the lifecycle event ``contact.cleaned``).
CLEANING_REASONS = (SuppressionReason.HARD_BOUNCE.value, SuppressionReason.COMPLAINT.value)


def _emit_cleaned(session: Session, email: str, reason: str) -> None:
    """``contact.cleaned`` for the contact whose address ``email`` is (bounce or complaint)."""
    from crm_notify.contacts.models import Contact
    from crm_notify.lifecycle.emit import emit
    from crm_notify.lifecycle.models import LifecycleName, LifecycleSource

    contact_id = session.exec(select(Contact.id).where(Contact.email == email)).first()
    if contact_id is not None:
        emit(
            session,
            LifecycleName.CLEANED,
            contact_id=contact_id,
            source=LifecycleSource.SYSTEM,
            reason=reason,
        )


def unsuppress(*, session: Session, email: str, purpose: str = ALL_PURPOSES) -> int:
    """Remove ``email``'s entry for ``purpose``; return the number of entries removed (0 or 1).

    Raises:
        EventValidationError: ``email`` is not a valid address.
    """
    result = session.execute(
        sa.delete(Suppression).where(
            col(Suppression.address_hash) == address_hash(email),
            col(Suppression.purpose) == purpose,
        )
    )
    forget(session, "suppression")
    return int(getattr(result, "rowcount", 0) or 0)


def list_suppressions(
    *,
    session: Session,
    reason: str | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> list[Suppression]:
    """Entries, newest first, optionally only those with ``reason``."""
    query = select(Suppression)
    if reason is not None:
        query = query.where(Suppression.reason == reason)
    query = query.order_by(col(Suppression.created_at).desc(), col(Suppression.id).desc())
    return list(session.exec(query.offset(offset).limit(limit)))


def suppressed_for(*, session: Session, email: str, purpose: str) -> Suppression | None:
    """The entry that keeps ``email`` from getting ``purpose`` mail: the hard entry (``"*"``)
    first, else the purpose's own; ``None`` when it may be mailed (or is not an address)."""
    digest = address_hash_or_none(email)
    if digest is None:
        return None
    return _entry_for(session, [digest], purpose)


def _entry_for(session: Session, digests: Sequence[str], purpose: str) -> Suppression | None:
    rows = [
        row
        for digest in digests
        for row in _entries(session, [digest])[digest]
        if row.purpose in (ALL_PURPOSES, purpose)
    ]
    hard = [row for row in rows if row.purpose == ALL_PURPOSES]
    found = hard or rows
    return min(found, key=lambda row: row.id or 0) if found else None


def _entries(session: Session, digests: Sequence[str]) -> dict[str, list[Suppression]]:
    """Every entry of each address hash (all purposes), remembered for the transaction: one
    query for the hashes not looked up yet."""
    remembered: dict[str, list[Suppression]] = memo(session, "suppression")
    missing = sorted({digest for digest in digests if digest not in remembered})
    if missing:
        with session.no_autoflush:  # entries are flushed when written
            rows = session.exec(
                select(Suppression).where(col(Suppression.address_hash).in_(missing))
            ).all()
        for digest in missing:
            remembered[digest] = []
        for row in rows:
            remembered[row.address_hash].append(row)
    return remembered


def preload_suppressions(session: Session, emails: Sequence[str]) -> None:
    """Look up the entries of ``emails`` with one query, for the guard checks that follow in
    this transaction (intake calls it for a batch's contacts)."""
    _entries(session, [d for d in map(_hash_remembered(session), emails) if d is not None])


def _hash_remembered(session: Session) -> Callable[[str | None], str | None]:
    hashes: dict[str | None, str | None] = memo(session, "address_hash")

    def digest(address: str | None) -> str | None:
        if address not in hashes:
            hashes[address] = address_hash_or_none(address)
        return hashes[address]

    return digest


def describe(entry: Suppression) -> str:
    """``address suppressed (hard_bounce, 2026-11-20)``, naming the purpose when it is one."""
    scope = "" if entry.purpose == ALL_PURPOSES else f" for {entry.purpose}"
    day: datetime = entry.created_at
    return f"address suppressed{scope} ({entry.reason}, {day:%Y-%m-%d})"


class SuppressionGuard(Guard):
    """Skips a send to an address on the suppression list (for every purpose, or for the
    send's purpose). At delivery, the notification's own recipient is checked too, in case
    the contact's address changed since it was queued."""

    name: ClassVar[str] = "suppression"
    at_delivery: ClassVar[bool] = True

    def check(self, session: Session, attempt: SendAttempt) -> Verdict | None:
        """Return a skip when the contact's address is suppressed for the attempt's purpose."""
        addresses = [attempt.contact.email]
        if attempt.to_address is not None:
            addresses.append(attempt.to_address)
        elif attempt.notification_id is not None:
            addresses.append(
                session.exec(
                    select(Notification.to_address).where(
                        Notification.id == attempt.notification_id
                    )
                ).first()
            )
        digest = _hash_remembered(session)
        digests = sorted({d for d in map(digest, addresses) if d is not None})
        if not digests:
            return None
        entry = _entry_for(session, digests, attempt.purpose)
        if entry is None:
            return None
        details = {"suppression_id": entry.id, "reason": entry.reason, "purpose": entry.purpose}
        return Verdict(DecisionOutcome.SKIP, describe(entry), details)
