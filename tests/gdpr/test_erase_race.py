"""Erasure racing a transaction that stores an event for the same person (the lifecycle relay
or the intake, in another process): on PostgreSQL the erasure waits for it and removes its
rows too, instead of failing on the foreign key or leaving an event behind."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.events.models import Event
from crm_notify.gdpr.erase import erase_contact


def test_an_event_stored_during_the_erasure_is_erased_too(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite lets one writer in at a time: no such race")
    with session_scope(engine) as session:
        contact = Contact(user_id="u1", email="ada@example.com")
        session.add(contact)
        session.flush()
        contact_id = contact.id
    # Given a transaction that has stored an event for the contact and not committed yet
    writer = Session(engine)
    writer.add(Event(message_id="late-1", type="track", name="X", contact_id=contact_id))
    writer.flush()
    errors: list[BaseException] = []

    def erase() -> None:
        try:
            with session_scope(engine) as session:
                target = session.get(Contact, contact_id)
                assert target is not None
                erase_contact(session=session, contact=target, actor="test")
        except BaseException as exc:
            errors.append(exc)

    # When the contact is erased meanwhile, and the other transaction then commits
    thread = threading.Thread(target=erase)
    thread.start()
    time.sleep(0.5)
    writer.commit()
    writer.close()
    thread.join(timeout=30)
    # Then the erasure succeeded and nothing of the person is left
    assert errors == []
    with Session(engine) as session:
        assert session.exec(select(Event)).all() == []
        assert session.get(Contact, contact_id) is None
