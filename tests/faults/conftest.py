"""Fixtures of the fault-injection tests: a holding SMTP sink and a list of the test's processes
(each stopped at the end, also when the test fails)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeVar

import pytest

from tests.conftest import POSTGRES_URL
from tests.faults._harness import HoldingSmtpSink
from tests.support.servers import start_smtp_sink

#: For tests whose fault does not depend on the database: run them once, on PostgreSQL when
#: the suite has one (the production set-up), else on SQLite.
one_database = pytest.mark.parametrize(
    "database_url", ["postgres" if POSTGRES_URL else "sqlite"], indirect=True
)


class _Stoppable(Protocol):
    def stop(self) -> None: ...


P = TypeVar("P", bound=_Stoppable)


class Processes:
    """The processes and servers a test started; :meth:`stop_all` stops them, newest first:
    with SIGKILL where they have a ``kill`` method (a graceful stop is not under test here,
    and takes seconds)."""

    def __init__(self) -> None:
        self._started: list[_Stoppable] = []

    def add(self, process: P) -> P:
        self._started.append(process)
        return process

    def stop_all(self) -> None:
        errors = []
        for process in reversed(self._started):
            try:
                getattr(process, "kill", process.stop)()
            except Exception as exc:  # stop the others anyway
                errors.append(exc)
        self._started.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.stop_all()


@pytest.fixture
def holding_sink() -> Iterator[HoldingSmtpSink]:
    """An SMTP sink on loopback that can hold sends (see :class:`HoldingSmtpSink`)."""
    sink, controller = start_smtp_sink(HoldingSmtpSink())
    assert isinstance(sink, HoldingSmtpSink)
    yield sink
    sink.hold_rcpt = False
    sink.release_data = True
    controller.stop()
