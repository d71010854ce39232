"""What the guards remember within one transaction: lookups already made and contacts locked.

A batch of calls decides many sends for the same few contacts; each guard lookup would
otherwise query again (and flush the session first). Memos live in ``session.info`` and are
dropped when the transaction ends or anything (a savepoint too) rolls back, so nothing
outlives what it was read in.
Guard lookups run without autoflush: what they read (consent records, suppression entries,
notifications) is flushed when written, and the batch's planned sends are counted from memory.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import SessionTransaction

#: Prefix of the ``session.info`` keys holding memos.
_PREFIX = "crm_notify.guards."


def memo(session: OrmSession, name: str) -> dict[Any, Any]:
    """The memo called ``name`` of the session's current transaction."""
    found: dict[Any, Any] = session.info.setdefault(_PREFIX + name, {})
    return found


def forget(session: OrmSession, name: str) -> None:
    """Drop the memo called ``name`` (after a write it would contradict)."""
    session.info.pop(_PREFIX + name, None)


def lock_contact(session: OrmSession, contact_id: int) -> None:
    """Lock the contact's row until the transaction ends (PostgreSQL ``SELECT ... FOR UPDATE``;
    SQLite lets one writer in at a time already), once per transaction. What was remembered
    about the contact before the lock is forgotten: it is read again under the lock."""
    locked = memo(session, "locked")
    if contact_id in locked:
        return
    if session.get_bind().dialect.name == "postgresql":
        with session.no_autoflush:
            session.execute(
                sa.text("SELECT id FROM contact WHERE id = :id FOR UPDATE"), {"id": contact_id}
            )
    locked[contact_id] = True
    consent = memo(session, "consent")
    for key in [key for key in consent if key[0] == contact_id]:
        del consent[key]
    memo(session, "consent_loaded").pop(contact_id, None)


def _forget_all(session: OrmSession) -> None:
    for key in [key for key in session.info if key.startswith(_PREFIX)]:
        del session.info[key]


@event.listens_for(OrmSession, "after_transaction_end")
def _transaction_ended(session: OrmSession, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost one: a savepoint's end keeps the memos
        _forget_all(session)


@event.listens_for(OrmSession, "after_soft_rollback")
def _rolled_back(session: OrmSession, _previous: SessionTransaction) -> None:
    _forget_all(session)  # a savepoint rolled back may take written rows with it
