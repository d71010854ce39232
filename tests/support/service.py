"""Running the real ``crm-notify`` command as a subprocess, as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx

from tests.support.servers import free_port

#: The installed console script of this virtual environment.
CRM_NOTIFY = str(Path(sys.executable).parent / "crm-notify")


def run_cli(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``crm-notify ARGS`` and return the finished process."""
    result = subprocess.run(
        [CRM_NOTIFY, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"crm-notify {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def service_env(base: dict[str, str]) -> dict[str, str]:
    """The current environment without CRM_NOTIFY_* variables, plus requests to other tools
    allowed to reach loopback (the tests' stand-ins), plus ``base``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_NOTIFY_")}
    env["CRM_NOTIFY_OUTBOUND_ALLOW_NETWORKS"] = "loopback"
    env.update(base)
    return env


class _Child:
    """A ``crm-notify`` child process with its log file: stopped with SIGTERM (SIGKILL after
    ``stop_timeout_s``) or killed outright; ``group``: the signals go to its process group
    (the worker's Dramatiq processes with it)."""

    process: subprocess.Popen[bytes]
    _log: IO[str]
    stop_timeout_s: float = 30
    group: bool = False

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL: no request finishes, no open transaction commits, nothing is cleaned up."""
        self._signal(signal.SIGKILL)
        self.process.wait()
        self._log.close()


class ServiceProcess(_Child):
    """``crm-notify serve`` on a free port (or ``port``), stopped with SIGTERM.

    ``command`` replaces the ``crm-notify`` program (e.g. a wrapper that injects a fault and
    then runs the same command line).
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        port: int | None = None,
        command: Sequence[str] = (CRM_NOTIFY,),
    ) -> None:
        self.port = port or free_port()
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [*command, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited early:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"service did not start:\n{log_path.read_text()}")
            time.sleep(0.1)


class WorkerProcess(_Child):
    """``crm-notify worker`` (Dramatiq worker processes on Redis or RabbitMQ)."""

    group = True

    def __init__(
        self, env: dict[str, str], log_path: Path, *, processes: int = 1, threads: int = 2
    ) -> None:
        self._log = log_path.open("w")
        self.log_path = log_path
        self.process = subprocess.Popen(
            [CRM_NOTIFY, "worker", "--processes", str(processes), "--threads", str(threads)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class SchedulerProcess(_Child):
    """``crm-notify scheduler`` (a standalone scheduler); ``command`` as for
    :class:`ServiceProcess`."""

    stop_timeout_s = 60

    def __init__(
        self, env: dict[str, str], log_path: Path, *, command: Sequence[str] = (CRM_NOTIFY,)
    ) -> None:
        self._log = log_path.open("w")
        self.log_path = log_path
        self.process = subprocess.Popen(
            [*command, "scheduler"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Wait until the scheduler has started its passes."""
        deadline = time.monotonic() + timeout_s
        while "scheduler running" not in self.log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"scheduler did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)
