"""Running one rule test case: the real intake and scheduler on a simulated clock.

Each case gets a fresh in-memory SQLite database. The clock (the caller's running freezegun
freezer) jumps from one moment that matters to the next: the next call's arrival, the next
pending timer's due time, or the next moment a send gate is answered or times out, whichever
comes first, until ``until``. At each moment the calls arriving then are ingested, one request
each, a scheduler pass runs, and the case's integration answers the gates due (its ``gate:``:
release, reject, or none, ``after`` each gate opened); a held send counts as sent when it is
released, a rejected or withdrawn one not at all.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, col, create_engine, select

from crm_notify.clock import as_utc
from crm_notify.db import import_models, session_scope
from crm_notify.errors import EventValidationError, RuleFileError
from crm_notify.gates.hold import GateHold
from crm_notify.gates.model import Gate, GateDelivery, GateStatus
from crm_notify.gates.payload import held_items
from crm_notify.gates.release import cancel_item, release, time_out
from crm_notify.guards import SendAttempt, SendPolicy, Verdict
from crm_notify.guards.consent import ConsentGuard
from crm_notify.intake import Intake
from crm_notify.lifecycle.relay import LifecycleRelay
from crm_notify.outbox.models import (
    Decision,
    DecisionOutcome,
    Notification,
    NotificationStatus,
)
from crm_notify.rules._testing_load import Expectation, RuleTestCase
from crm_notify.rules.durations import format_duration
from crm_notify.rules.engine import RuleSet
from crm_notify.timers import repository as timer_repository
from crm_notify.timers.firing import TimerFiring
from crm_notify.timers.scheduler import Scheduler

#: How far an expected ``at`` may be from when the notification was decided.
AT_TOLERANCE = timedelta(minutes=1)
#: Clock moves one case may take before it is stopped as runaway.
MAX_STEPS = 10_000


class SimulatedClock(Protocol):
    """The part of a running freezegun freezer (``with freeze_time(...) as clock``) used here."""

    def move_to(self, target: datetime, /) -> None:
        """Set the frozen time to ``target``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """A notification the case produced, decided ``at`` after the start."""

    rule: str
    template: str
    step: str
    at: timedelta

    def describe(self) -> str:
        """Return it as reports show it: ``abandoned-cart abandoned_cart at +2d``."""
        return f"{self.rule} {self.template} at +{format_duration(self.at)}"

    def matches(self, expected: Expectation) -> bool:
        """Whether this is the notification ``expected`` describes (``at`` within a minute)."""
        return (
            self.rule == expected.rule
            and self.template == expected.template
            and (expected.at is None or abs(self.at - expected.at) <= AT_TOLERANCE)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionNote:
    """A skip or defer decision taken ``at`` after the start (why something was not sent)."""

    rule: str
    outcome: str
    reason: str
    at: timedelta

    def describe(self) -> str:
        """Return it as reports show it: ``+2d abandoned-cart skip: <reason>``."""
        return f"+{format_duration(self.at)} {self.rule} {self.outcome}: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    """The outcome of one case.

    ``sent`` holds the notifications (of the case's ``rule`` only, when it names one);
    ``decisions`` the skip and defer decisions of the rules concerned, to explain a failure;
    ``error`` is set when the case could not run (a call the intake refused).
    """

    case: RuleTestCase
    sent: tuple[Sent, ...] = ()
    decisions: tuple[DecisionNote, ...] = ()
    error: RuleFileError | None = None

    @property
    def passed(self) -> bool:
        """Whether it ran and produced exactly the expected notifications, in order."""
        expect = self.case.expect
        return (
            self.error is None
            and len(self.sent) == len(expect)
            and all(sent.matches(wanted) for sent, wanted in zip(self.sent, expect, strict=True))
        )


class CaseConsentGuard(ConsentGuard):
    """The consent guard, except that the case's contact consented to the purposes it lists
    (``contact.consent``), as if the ledger held a grant for each.

    Every other contact, and every other purpose, gets the ledger's answer: a case can also
    record consent with calls (Segment ``context.consent`` or consent traits).

    Parameters:
        user_id: the case contact's ``userId``.
        purposes: what the contact consented to.
    """

    def __init__(self, *, user_id: str, purposes: frozenset[str]) -> None:
        self._user_id = user_id
        self._purposes = purposes

    def check(self, session: Session, attempt: SendAttempt) -> Verdict | None:
        """Let a consented purpose of the case's contact through, else as the base."""
        if attempt.contact.user_id == self._user_id and attempt.purpose in self._purposes:
            return None
        return super().check(session, attempt)


def case_policy(case: RuleTestCase, base: SendPolicy) -> SendPolicy:
    """``base`` with its consent guard replaced by a :class:`CaseConsentGuard`."""
    guards = [
        CaseConsentGuard(user_id=case.user_id, purposes=frozenset(map(str, case.consent)))
        if isinstance(guard, ConsentGuard)
        else guard
        for guard in base.guards
    ]
    return SendPolicy(guards=guards)


def memory_engine() -> Engine:
    """A fresh in-memory SQLite database with every table, on one shared connection.

    SAVEPOINTs (a scheduler pass fires each timer in one) need SQLAlchemy to issue ``BEGIN``
    itself instead of the ``sqlite3`` module, as :func:`crm_notify.db.make_engine` does too.
    """
    engine = create_engine(
        "sqlite://",
        poolclass=StaticPool,
        connect_args={"check_same_thread": False},
        hide_parameters=True,
    )

    @sa.event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    import_models()
    SQLModel.metadata.create_all(engine)
    return engine


def run_case(
    case: RuleTestCase,
    rules: RuleSet,
    clock: SimulatedClock,
    *,
    policy: SendPolicy | None = None,
) -> CaseResult:
    """Run one case on a fresh database, moving ``clock`` (a running freezegun freezer).

    Parameters:
        case: the case.
        rules: the rules under test.
        clock: the frozen clock; left at the last moment the case reached.
        policy: the send policy as configured (default: the standard one); its consent guard
            also counts the case's ``contact.consent``.

    Returns:
        What the case produced, or the error that stopped it.
    """
    engine = memory_engine()
    try:
        return _Run(case, rules, engine, clock, policy).run()
    finally:
        engine.dispose()


@dataclass
class _Run:
    case: RuleTestCase
    rules: RuleSet
    engine: Engine
    clock: SimulatedClock
    policy: SendPolicy | None = None
    sent: list[Sent] = field(default_factory=list)
    decisions: list[DecisionNote] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)
    _last_decision: int = 0

    def run(self) -> CaseResult:
        case = self.case
        policy = case_policy(case, self.policy or SendPolicy.standard())
        hold = GateHold(self.rules)
        intake = Intake(engine=self.engine, rules=self.rules, policy=policy, hold=hold)
        firing = TimerFiring(rules=self.rules, policy=policy)
        scheduler = Scheduler(
            engine=self.engine, fire=firing, enqueue=None, interval_s=1, hold=hold
        )
        lifecycle = LifecycleRelay(engine=self.engine, ingest=intake.ingest, interval_s=1)
        pending = deque(case.calls)
        end = case.start + case.until
        moment = case.start
        for _ in range(MAX_STEPS):
            arrival = case.start + pending[0].at if pending else None
            due = self._next_due()
            gate_due = self._next_gate_moment()
            candidates = [when for when in (arrival, due, gate_due) if when is not None]
            if not candidates or min(candidates) > end:
                return self._result()
            moment = max(moment, min(candidates))
            self.clock.move_to(moment)
            while pending and case.start + pending[0].at <= moment:
                item = pending.popleft()
                try:
                    intake.ingest([item.call], source="rules-test")
                except EventValidationError as exc:
                    error = RuleFileError(case.path, item.line, f"the intake refused a call: {exc}")
                    return self._result(error)
            scheduler.run_once()
            self._answer_gates(moment)
            lifecycle.run_once()  # lifecycle events (a consent change...) reach the rules
            self._collect(moment)
        error = RuleFileError(
            case.path, case.line, f"stopped after {MAX_STEPS} steps: timers keep coming due"
        )
        return self._result(error)

    def _result(self, error: RuleFileError | None = None) -> CaseResult:
        return CaseResult(
            case=self.case, sent=tuple(self.sent), decisions=tuple(self.decisions), error=error
        )

    def _next_due(self) -> datetime | None:
        with Session(self.engine) as session:
            return timer_repository.next_due_at(session=session)

    def _next_gate_moment(self) -> datetime | None:
        """When an open gate is next answered by the case's integration, or times out."""
        answer = self.case.gate
        with Session(self.engine) as session:
            gates = session.exec(select(Gate).where(col(Gate.status) == GateStatus.OPEN)).all()
        moments = [as_utc(gate.deadline) for gate in gates]
        if answer.answer != "none":
            moments += [as_utc(gate.created_at) + answer.after for gate in gates]
        return min(moments, default=None)

    def _answer_gates(self, moment: datetime) -> None:
        """Play the case's integration: every gate has heard (it is notified); those due are
        released or rejected, as the case says, and those past their deadline time out."""
        answer = self.case.gate
        with session_scope(self.engine) as session:
            gates = session.exec(select(Gate).where(col(Gate.status) == GateStatus.OPEN)).all()
            for gate in gates:
                gate.delivery = GateDelivery.NOTIFIED
                session.add(gate)
                if as_utc(gate.deadline) <= moment:
                    time_out(session, gate)
                elif answer.answer != "none" and as_utc(gate.created_at) + answer.after <= moment:
                    if answer.answer == "reject":
                        for item in held_items(session, gate):
                            assert item.id is not None
                            cancel_item(session, gate, item.id, reason=answer.reason or "")
                    release(session, gate)

    def _concerned(self, rule: str) -> bool:
        if self.case.rule is not None:
            return rule == self.case.rule
        return True

    def _collect(self, moment: datetime) -> None:
        """Record the notifications and decisions written since the last step."""
        offset = moment - self.case.start
        with Session(self.engine) as session:
            notifications = session.exec(
                select(Notification)
                .where(col(Notification.status) != NotificationStatus.GATED.value)
                .where(col(Notification.id).not_in(self._seen))
                .order_by(col(Notification.id))
            ).all()
            decisions = session.exec(
                select(Decision)
                .where(col(Decision.id) > self._last_decision)
                .order_by(col(Decision.id))
            ).all()
        for notification in notifications:
            assert notification.id is not None
            self._seen.add(notification.id)
            cancelled = notification.status == NotificationStatus.CANCELLED
            if self._concerned(notification.rule) and not cancelled:
                rule = self.rules.by_name(notification.rule)
                step = rule.steps[notification.step].name if rule is not None else "?"
                self.sent.append(
                    Sent(
                        rule=notification.rule,
                        template=notification.template,
                        step=step,
                        at=offset,
                    )
                )
        for decision in decisions:
            assert decision.id is not None
            self._last_decision = decision.id
            if decision.outcome != DecisionOutcome.SEND and self._concerned(decision.rule):
                self.decisions.append(
                    DecisionNote(
                        rule=decision.rule,
                        outcome=str(decision.outcome),
                        reason=decision.reason,
                        at=offset,
                    )
                )
