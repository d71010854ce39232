"""A real Tracking API server (uvicorn in a thread on 127.0.0.1) with a recording ingest."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from fastapi import FastAPI

from crm_notify.events import SegmentCall, make_router, normalise_email

#: The fixed key table: write key -> key name.
WRITE_KEYS = {"wk_shop_a": "shop-a", "wk_shop_b": "shop-b"}


@dataclass
class RecordingIngest:
    """Records every ``ingest`` call; checks identify emails as the real ingest stage does."""

    batches: list[tuple[list[SegmentCall], str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, calls: list[SegmentCall], key_name: str) -> None:
        for call in calls:
            if call.type == "identify" and "email" in call.traits:
                normalise_email(call.traits["email"])
        with self.lock:
            self.batches.append((calls, key_name))

    def calls(self) -> list[SegmentCall]:
        with self.lock:
            return [call for calls, _ in self.batches for call in calls]

    def key_names(self) -> set[str]:
        with self.lock:
            return {key_name for _, key_name in self.batches}

    def clear(self) -> None:
        with self.lock:
            self.batches.clear()


@dataclass
class LiveService:
    url: str
    ingest: RecordingIngest


@pytest.fixture(scope="module")
def _server() -> Iterator[LiveService]:
    recorder = RecordingIngest()
    app = FastAPI()
    app.include_router(make_router(ingest=recorder, authenticate=WRITE_KEYS.get))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield LiveService(url=f"http://127.0.0.1:{port}", ingest=recorder)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def live(_server: LiveService) -> Iterator[LiveService]:
    """The running service, its recorder emptied before and after the test."""
    _server.ingest.clear()
    yield _server
    _server.ingest.clear()
