"""What a benchmark run starts and must clean up: databases, Redis keys, processes.

Every helper is a context manager, so an ``ExitStack`` in the caller undoes everything, in
reverse order, whatever happens (a failed check, Ctrl-C). Processes are started in their own
session and stopped by their id with SIGTERM (SIGKILL after a timeout); databases and Redis keys
carry the run's tag in their names.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import redis
import sqlalchemy as sa

#: The repository root: sample rules and templates, and the working directory of processes.
ROOT = Path(__file__).resolve().parent.parent
#: The ``crm-notify`` console script of this virtual environment.
CRM_NOTIFY = str(Path(sys.executable).parent / "crm-notify")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(env: dict[str, str], *args: str) -> str:
    """Run ``crm-notify ARGS`` and return its standard output.

    Raises:
        RuntimeError: the command failed (its output is in the message).
    """
    result = subprocess.run(
        [CRM_NOTIFY, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"crm-notify {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def service_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without ``CRM_NOTIFY_*`` variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_NOTIFY_")}
    env.update(settings)
    return env


@dataclass
class Process:
    """A child process in its own session, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM the child's process group (it and its own children); SIGKILL if it hangs."""
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def check_alive(self) -> None:
        """Raise with the end of the log when the process has exited."""
        if self.popen.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")


@contextmanager
def process(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Iterator[Process]:
    """Start ``argv``; stop it on exit."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    proc = Process(name, popen, log_path)
    try:
        yield proc
    finally:
        proc.stop()


@dataclass
class Sink:
    """The SMTP sink process and the file it records deliveries in."""

    url: str
    record: Path

    def deliveries(self) -> list[tuple[str, str, float]]:
        """(X-CRM-Notify-Id, Message-ID, arrival time) of every message received so far."""
        rows = []
        for line in self.record.read_text().splitlines():
            notify_id, message_id, at = line.split("\t")
            rows.append((notify_id, message_id, float(at)))
        return rows


@contextmanager
def smtp_sink(log_dir: Path) -> Iterator[Sink]:
    """Start ``python -m bench.smtp_sink`` on a free port; stop it on exit."""
    port = free_port()
    record = log_dir / "smtp-sink.tsv"
    argv = [sys.executable, "-m", "bench.smtp_sink", "--port", str(port), "--record", str(record)]
    with process("smtp-sink", argv, dict(os.environ), log_dir) as proc:
        deadline = time.monotonic() + 20
        while not record.exists() or not _port_open(port):
            proc.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the SMTP sink did not start")
            time.sleep(0.05)
        yield Sink(url=f"smtp://127.0.0.1:{port}", record=record)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


@contextmanager
def serve(env: dict[str, str], log_dir: Path, name: str = "serve") -> Iterator[tuple[str, Process]]:
    """Start ``crm-notify serve`` on a free port; yield its base URL and process once
    ``/healthz`` answers."""
    port = free_port()
    argv = [CRM_NOTIFY, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with process(name, argv, env, log_dir) as proc:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            proc.check_alive()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {proc.log_path}")
            time.sleep(0.05)
        yield url, proc


@contextmanager
def worker(
    env: dict[str, str], log_dir: Path, *, processes: int, threads: int
) -> Iterator[Process]:
    """Start ``crm-notify worker``; stop it (and its Dramatiq processes) on exit."""
    argv = [CRM_NOTIFY, "worker", "--processes", str(processes), "--threads", str(threads)]
    with process("worker", argv, env, log_dir) as proc:
        yield proc


@contextmanager
def postgres_database(admin_url: str, name: str) -> Iterator[str]:
    """Create database ``name`` on the server of ``admin_url``; drop it on exit."""
    base = sa.engine.make_url(admin_url)
    with psycopg.connect(_libpq(admin_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(admin_url), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _libpq(url: str) -> str:
    return (
        sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


@contextmanager
def redis_namespace(url: str, namespace: str) -> Iterator[str]:
    """Yield ``namespace`` with no keys under it; delete its keys again on exit."""
    client = redis.Redis.from_url(url)
    clear_redis_namespace(client, namespace)
    try:
        yield namespace
    finally:
        clear_redis_namespace(client, namespace)
        client.close()


def clear_redis_namespace(client: redis.Redis, namespace: str) -> int:
    """Delete every key under ``namespace:``; return how many there were."""
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    return len(keys)


def exit_on_signals() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit, so cleanup (processes, databases, keys) runs."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit)
