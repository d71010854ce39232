"""A real HTTP server on 127.0.0.1 standing in for a provider's API in the ESP adapter tests.

A plain ASGI app served by uvicorn in a thread: it records every request and answers with
the answers the test queued (first in, first out), else with the default answer::

    with ApiServer() as api:
        api.respond(202, headers={"X-Message-Id": "abc"})
        adapter = SendgridAdapter(api_key="k", base_url=api.url)
        adapter.send(message)
        seen = api.requests[0]
        assert (seen.method, seen.path) == ("POST", "/v3/mail/send")
        assert seen.headers["authorization"] == "Bearer k"
        assert seen.json["subject"] == "Hi"

``check`` (optional) is called with each request before any queued answer is used; it returns
an :class:`Answer` to answer with (e.g. a 400 for a request that breaks the documented
contract, as the provider would) or ``None`` to go on. ``delay_s`` holds an answer back (for
timeout tests); the wait ends early when the server closes, so a test does not hang.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received. ``headers`` has lower-case names."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return jsonlib.loads(self.body)

    @property
    def form(self) -> dict[str, list[str]]:
        """The body parsed as ``application/x-www-form-urlencoded`` fields (all values)."""
        return parse_qs(self.text, keep_blank_values=True)


@dataclass(frozen=True)
class Answer:
    """What the server answers: ``json`` (serialised) or raw ``body``, with ``headers``."""

    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str | None = None
    delay_s: float = 0.0

    def encoded(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        headers = {name.lower(): value for name, value in self.headers.items()}
        if self.body is not None:
            body = self.body.encode() if isinstance(self.body, str) else self.body
            headers.setdefault("content-type", "text/plain; charset=utf-8")
        elif self.json is not None:
            body = jsonlib.dumps(self.json).encode()
            headers.setdefault("content-type", "application/json")
        else:
            body = b""
        headers["content-length"] = str(len(body))
        return body, [(name.encode(), value.encode()) for name, value in headers.items()]


Check = Callable[[RecordedRequest], Answer | None]


class ApiServer:
    """A recording, programmable HTTP API server on ``127.0.0.1`` (a context manager).

    Parameters:
        default: the answer when no queued answer is left (200 with ``{}`` by default).
        check: called with each request; an :class:`Answer` it returns is sent instead.
    """

    def __init__(self, *, default: Answer | None = None, check: Check | None = None) -> None:
        self.default = default or Answer(200, json={})
        self.check = check
        self._answers: deque[Answer] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- the test's side -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def netloc(self) -> str:
        """``127.0.0.1:PORT``, for ESP URLs such as ``sendgrid://KEY@127.0.0.1:PORT?insecure=1``."""
        return f"127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def last(self) -> RecordedRequest:
        """The latest request (``AssertionError`` when none came)."""
        requests = self.requests
        assert requests, "the API server received no request"
        return requests[-1]

    def respond(
        self,
        status: int = 200,
        json: Any = None,
        headers: dict[str, str] | None = None,
        *,
        body: bytes | str | None = None,
        delay_s: float = 0.0,
    ) -> ApiServer:
        """Queue the answer to the next request not yet answered (returns ``self``)."""
        with self._lock:
            self._answers.append(
                Answer(status, json=json, headers=dict(headers or {}), body=body, delay_s=delay_s)
            )
        return self

    def respond_with(self, answer: Answer) -> ApiServer:
        """Queue a prepared :class:`Answer` (returns ``self``)."""
        with self._lock:
            self._answers.append(answer)
        return self

    def clear(self) -> None:
        """Forget the recorded requests and the queued answers."""
        with self._lock:
            self._requests.clear()
            self._answers.clear()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ApiServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            interface="asgi3",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test API server did not start")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the server's side -----------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body", False):
                break
        header_list = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in scope["headers"]
        ]
        request = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True),
            headers=dict(header_list),
            body=b"".join(chunks),
            header_list=header_list,
        )
        with self._lock:
            self._requests.append(request)
        answer = self.check(request) if self.check is not None else None
        if answer is None:
            with self._lock:
                answer = self._answers.popleft() if self._answers else self.default
        waited = 0.0
        while waited < answer.delay_s and not self._closing.is_set():
            step = min(0.05, answer.delay_s - waited)
            await asyncio.sleep(step)
            waited += step
        body, headers = answer.encoded()
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
