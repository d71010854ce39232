"""Run ``crm-notify ARGS`` with a stall or a trace at a chosen point.

``python tests/faults/_inject.py serve ...`` behaves as ``crm-notify serve ...``, except:

- with ``FAULT_STALL_POINT``: the ``FAULT_STALL_AT``-th time the process reaches that point it
  writes the file ``FAULT_STALL_MARKER`` and then waits forever. The test waits for the marker
  and kills the process with SIGKILL: a kill -9 at an exact point instead of a lucky one.
- with ``FAULT_TRACE``: each time a timer is fired, ``<pid> <timer id>`` is appended to that
  file (which scheduler fired what).

Nothing else changes. The stall points are:

- ``fire``: a scheduler about to fire a due timer, inside the pass's transaction (the timers
  fired before it in the batch are written but not committed);
- ``enqueue``: the API just committed a batch and is about to hand its notifications to the
  broker (the client has no answer yet).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _stall_on(count_to: int, marker: Path) -> Callable[[], None]:
    """A function that, on its ``count_to``-th call, writes ``marker`` and never returns."""
    lock = threading.Lock()
    calls = 0

    def tick() -> None:
        nonlocal calls
        with lock:
            calls += 1
            stall = calls == count_to
        if stall:
            marker.write_text(str(os.getpid()))
            threading.Event().wait()

    return tick


def _install(point: str, tick: Callable[[], None]) -> None:
    if point == "fire":
        from crm_notify.timers.firing import TimerFiring

        fire = TimerFiring.__call__

        def stalling_fire(self: TimerFiring, session: Any, timer: Any) -> list[int]:
            tick()
            return fire(self, session, timer)

        TimerFiring.__call__ = stalling_fire  # type: ignore[method-assign]
    elif point == "enqueue":
        from crm_notify.intake import Intake

        init = Intake.__init__

        def stalling_init(self: Intake, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            enqueue = self._enqueue
            if enqueue is None:
                return

            def stalling_enqueue(ids: Any) -> None:
                tick()
                enqueue(ids)

            self._enqueue = stalling_enqueue

        Intake.__init__ = stalling_init  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown FAULT_STALL_POINT {point!r}")


def _trace_fires(path: Path) -> None:
    from crm_notify.timers.firing import TimerFiring

    fire = TimerFiring.__call__

    def tracing_fire(self: TimerFiring, session: Any, timer: Any) -> list[int]:
        with path.open("a") as trace:
            trace.write(f"{os.getpid()} {timer.id}\n")
        return fire(self, session, timer)

    TimerFiring.__call__ = tracing_fire  # type: ignore[method-assign]


def main() -> None:
    if os.environ.get("FAULT_TRACE"):
        _trace_fires(Path(os.environ["FAULT_TRACE"]))
    if os.environ.get("FAULT_STALL_POINT"):
        _install(
            os.environ["FAULT_STALL_POINT"],
            _stall_on(int(os.environ["FAULT_STALL_AT"]), Path(os.environ["FAULT_STALL_MARKER"])),
        )
    from crm_notify.cli import main as crm_notify

    sys.argv = ["crm-notify", *sys.argv[1:]]
    crm_notify()


if __name__ == "__main__":
    main()
