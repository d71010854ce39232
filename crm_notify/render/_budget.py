"""The per-render resource budget: deadline, loop counter and work counter.

One :class:`RenderBudget` lives in a :class:`contextvars.ContextVar` for the duration of one
render or one expression evaluation, so concurrent renders in threads never share counters.
Code that needs a budget and finds none fails closed (see :func:`active`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crm_notify.errors import RenderError, SandboxLimitError

if TYPE_CHECKING:
    from crm_notify.render.sandbox import SandboxLimits


@dataclass(slots=True)
class RenderBudget:
    """Counters of one render/evaluation, checked against its :class:`SandboxLimits`."""

    limits: SandboxLimits
    deadline: float
    loop_iterations: int = 0
    work: int = 0

    def check_deadline(self) -> None:
        """Raise :class:`SandboxLimitError` once the wall-time allowance is spent."""
        if time.monotonic() > self.deadline:
            raise SandboxLimitError(
                f"rendering took longer than the limit of {self.limits.max_seconds:g} s"
            )

    def tick_loop(self) -> None:
        """Count one loop iteration (over all loops of the render) and check the deadline."""
        self.loop_iterations += 1
        if self.loop_iterations > self.limits.max_loop_iterations:
            raise SandboxLimitError(
                f"loops ran more than the limit of {self.limits.max_loop_iterations:,} "
                "iterations in total"
            )
        self.check_deadline()

    def charge(self, amount: int) -> None:
        """Count ``amount`` characters/items of created data and check the deadline."""
        self.work += amount
        if self.work > self.limits.max_work_chars:
            raise SandboxLimitError(
                f"the template created more than the limit of {self.limits.max_work_chars:,} "
                "characters of text and data"
            )
        self.check_deadline()


_ACTIVE: ContextVar[RenderBudget | None] = ContextVar("crm_notify_render_budget", default=None)


@contextmanager
def bounded(limits: SandboxLimits) -> Iterator[RenderBudget]:
    """Run the ``with`` body under a fresh budget for ``limits``.

    Parameters:
        limits: the bounds of this render or evaluation.

    Returns:
        A context manager yielding the active :class:`RenderBudget`.
    """
    budget = RenderBudget(limits=limits, deadline=time.monotonic() + limits.max_seconds)
    token = _ACTIVE.set(budget)
    try:
        yield budget
    finally:
        _ACTIVE.reset(token)


def active() -> RenderBudget:
    """Return the budget of the current render.

    Raises:
        RenderError: no bounded render is running; sandboxed templates must be rendered through
            ``BoundedSandboxEnvironment.render`` (or ``Template.render``), not ``generate()``.
            During compilation this also stops Jinja from constant-folding guarded calls.
    """
    budget = _ACTIVE.get()
    if budget is None:
        raise RenderError(
            "sandboxed template code ran outside a bounded render; "
            "use BoundedSandboxEnvironment.render() or Template.render()"
        )
    return budget
