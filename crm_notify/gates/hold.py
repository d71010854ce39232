"""Holding the sends of gated rules, in the transaction that created them.

At the end of the transaction that wrote a batch of notifications (the intake's, a scheduler
pass's), :meth:`GateHold.hold` puts those of rules with a ``gate:`` on hold: status ``gated``
under a :class:`~crm_notify.gates.model.Gate`, one per rule and event for the intake (a single
send) and one per rule and step for a scheduler pass (a batch). Nothing held is enqueued; the
gate runner tells the integration once the transaction has committed.

A scheduler pass fires its timers in several transactions (batches of 200): its gates collect
the sends of every batch (``pass_gates``), and are ready for the runner only when the pass has
ended (:meth:`GateHold.ready`), so the integration hears once, with the whole pass; their
deadline counts from then. Should the scheduler die mid-pass, what its gates hold is notified
after :data:`PASS_LEASE`, with the whole timeout still ahead.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.clock import as_utc, now
from crm_notify.db import insert_rows, new_row
from crm_notify.gates.model import (
    Gate,
    GateDelivery,
    GateStatus,
    gate_config_from_json,
    gate_config_json,
)
from crm_notify.outbox.models import Notification, NotificationStatus, NotificationStatusChange
from crm_notify.rules.engine import RuleSet

#: Prefix of a gate's public id (the rest is 32 random hex digits).
GATE_ID_PREFIX = "gt_"
#: How long a scheduler pass's gate waits for the pass to end before the runner notifies it
#: anyway (the scheduler died mid-pass).
PASS_LEASE = timedelta(minutes=5)
ZERO = timedelta(0)

#: A scheduler pass's gates so far, by rule and step: the gate row id.
PassGates = dict[tuple[str, int], int]


@dataclass
class HoldResult:
    """What :meth:`GateHold.hold` did: the ids still to enqueue, and the gates it opened."""

    released: list[int] = field(default_factory=list)
    gate_ids: list[int] = field(default_factory=list)


class GateHold:
    """Puts the new notifications of gated rules on hold.

    Parameters:
        rules: the loaded rules (their ``gate``).
        opened: called after the transaction commits when gates were opened (wakes the gate
            runner so the integration hears at once).
    """

    def __init__(self, rules: RuleSet, *, opened: Callable[[], None] | None = None) -> None:
        self._rules = rules
        self._opened = opened

    @property
    def active(self) -> bool:
        """Whether any rule has a gate (nothing to do otherwise)."""
        return any(rule.gate is not None for rule in self._rules.rules)

    def hold(
        self,
        session: Session,
        notification_ids: Sequence[int],
        *,
        batch: bool,
        pass_gates: PassGates | None = None,
    ) -> HoldResult:
        """Hold the gated ones of ``notification_ids`` (new, uncommitted rows).

        Parameters:
            batch: the rows come from one scheduled run (one gate per rule and step), not
                from events (one gate per rule and event).
            pass_gates: with ``batch``, the gates this scheduler pass opened so far (updated
                here): their rule's rows join them. Each waits for :meth:`ready` (without
                ``pass_gates``, a gate is ready at once).
        """
        if not notification_ids or not self.active:
            return HoldResult(released=list(notification_ids))
        gated_rules = {rule.name: rule for rule in self._rules.rules if rule.gate is not None}
        rows = session.exec(
            select(Notification).where(
                col(Notification.id).in_(notification_ids),
                col(Notification.rule).in_(list(gated_rules)),
                Notification.status == NotificationStatus.PENDING,
            )
        ).all()
        held = {row.id for row in rows}
        result = HoldResult(released=[i for i in notification_ids if i not in held])
        groups: dict[tuple[str, int | None], list[Notification]] = {}
        for row in sorted(rows, key=lambda r: r.id or 0):
            groups.setdefault((row.rule, row.step if batch else row.event_id), []).append(row)
        moment = now()
        waits_for_pass = batch and pass_gates is not None
        for (rule_name, _group), members in groups.items():
            rule = gated_rules[rule_name]
            assert rule.gate is not None
            step = members[0].step
            gate = self._pass_gate(session, pass_gates, (rule_name, step)) if batch else None
            if gate is None:
                gate = Gate(
                    public_id=GATE_ID_PREFIX + secrets.token_hex(16),
                    rule=rule_name,
                    send_name=rule.steps[step].name,
                    batch=batch,
                    config=gate_config_json(rule.gate),
                    created_at=moment,
                    # a pass's gate waits for the pass to end (see the module docstring); its
                    # deadline is set again, from then, by ready()
                    deadline=moment + rule.gate.timeout + (PASS_LEASE if waits_for_pass else ZERO),
                    next_delivery_at=moment + PASS_LEASE if waits_for_pass else moment,
                )
                session.add(gate)
                session.flush()
                assert gate.id is not None
                if waits_for_pass:
                    assert pass_gates is not None
                    pass_gates[(rule_name, step)] = gate.id
                result.gate_ids.append(gate.id)
            assert gate.id is not None
            ids = [row.id for row in members if row.id is not None]
            session.execute(
                sa.update(Notification)
                .where(col(Notification.id).in_(ids))
                .values(status=NotificationStatus.GATED.value, gate_id=gate.id, updated_at=moment)
                .execution_options(synchronize_session=False)
            )
            detail = f"held by gate {gate.public_id}"
            insert_rows(
                session,
                NotificationStatusChange,
                [
                    new_row(
                        NotificationStatusChange,
                        {"notification_id": i, "status": "gated", "detail": detail, "at": moment},
                    )
                    for i in ids
                ],
            )
            for row in members:
                session.expire(row)
        return result

    @staticmethod
    def _pass_gate(
        session: Session, pass_gates: PassGates | None, key: tuple[str, int]
    ) -> Gate | None:
        """The gate this pass opened for ``key``, while nobody has been told about it."""
        gate_id = (pass_gates or {}).get(key)
        if gate_id is None:
            return None
        # Locked, so that the runner cannot time it out (nor the integration finish it, had
        # the pass outlived its lease) while this batch adds to it.
        gate = session.exec(select(Gate).where(col(Gate.id) == gate_id).with_for_update()).first()
        if (
            gate is not None
            and gate.batch
            and gate.rule == key[0]
            and gate.status == GateStatus.OPEN
            and gate.delivery == GateDelivery.PENDING
            and gate.delivery_attempts == 0
            and as_utc(gate.deadline) > now()
        ):
            return gate
        return None

    def ready(self, session: Session, gate_ids: Sequence[int]) -> None:
        """The pass that opened ``gate_ids`` has ended: the runner may notify them now, and
        their deadlines count from now (the integration gets the whole timeout)."""
        if not gate_ids:
            return
        moment = now()
        gates = session.exec(
            select(Gate)
            .where(col(Gate.id).in_(list(gate_ids)))
            .where(col(Gate.status) == GateStatus.OPEN.value)
            .where(col(Gate.delivery) == GateDelivery.PENDING.value)
            .where(col(Gate.delivery_attempts) == 0)
            .with_for_update()
        ).all()
        for gate in gates:
            gate.next_delivery_at = moment
            gate.deadline = moment + gate_config_from_json(gate.config).timeout
            session.add(gate)

    def after_commit(self, result: HoldResult) -> None:
        """Wake the gate runner when ``result`` opened gates."""
        if result.gate_ids and self._opened is not None:
            self._opened()
