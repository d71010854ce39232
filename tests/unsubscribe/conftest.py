"""Fixtures of the unsubscribe tests: a contact, its tokens, the pages' app, a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.contacts.models import Contact
from crm_notify.unsubscribe.api import make_router
from tests.support.servers import free_port

#: The key the tests sign with.
SECRET = b"0123456789abcdef0123456789abcdef"
#: Purposes configured in these tests.
PURPOSES = ("transactional", "marketing", "surveys")


@dataclass
class Person:
    """A contact of the tests."""

    id: int
    email: str


@pytest.fixture
def person(engine: Engine) -> Person:
    with Session(engine) as session:
        contact = Contact(email="alice@example.com", user_id="u1")
        session.add(contact)
        session.commit()
        assert contact.id is not None
        return Person(contact.id, "alice@example.com")


@pytest.fixture
def app(engine: Engine) -> FastAPI:
    app = FastAPI()
    app.include_router(make_router(engine=engine, secret_key=SECRET, purposes=PURPOSES))
    return app


@pytest.fixture
def server_url(app: FastAPI) -> Iterator[str]:
    """The app under uvicorn on a loopback port, in a thread."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
