"""Durable timers: every delayed or idle-triggered step of a rule is a row here until it fires."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import json_column, utc_column


class TimerStatus(enum.StrEnum):
    """Where a timer is in its life.

    ``pending`` until due; then ``fired`` (a send was decided), ``skipped`` (a condition or
    guard said no, recorded in the decision log), ``dropped`` (its send window closed), or
    ``cancelled`` (a ``cancel_on`` event, an exit condition, or newer activity superseded it).
    """

    PENDING = "pending"
    FIRED = "fired"
    SKIPPED = "skipped"
    DROPPED = "dropped"
    CANCELLED = "cancelled"


class TimerKind(enum.StrEnum):
    """What a timer does when due.

    ``step``: the rule step it names is due. ``deferred``: a send the guards deferred (quiet
    hours, a rate limit) is retried; ``payload`` holds its idempotency key. ``digest``: sends
    over a rate limit, collected in ``payload``, go out as one message. ``gate_retry``: a send
    that a send gate rejected or timed out is tried again (guards and gate again); ``payload``
    holds the new idempotency key and the notification it follows.
    """

    STEP = "step"
    DEFERRED = "deferred"
    DIGEST = "digest"
    GATE_RETRY = "gate_retry"


class Timer(SQLModel, table=True):
    """One scheduled step of one rule for one contact (and entity, such as a cart).

    ``key`` is unique: scheduling the same step for the same trigger twice is a no-op.
    ``trigger_at`` is the rule's trigger time (an event's own timestamp, or the end of an idle
    period); ``due_at`` is when the step is due. The index on (status, due_at) lets a scheduler
    pass find due timers without reading the others.
    """

    __table_args__ = (
        sa.Index("ix_timer_status_due_at", "status", "due_at"),
        sa.Index("ix_timer_rule_entity", "rule", "entity_type", "entity_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=767, unique=True)
    rule: str = Field(max_length=255)
    step: int = 0
    contact_id: int | None = Field(default=None, foreign_key="contact.id", index=True)
    entity_type: str | None = Field(default=None, max_length=16)
    entity_id: str | None = Field(default=None, max_length=255)
    event_id: int | None = Field(default=None, foreign_key="event.id")
    dedupe_key: str | None = Field(default=None, max_length=512)
    status: TimerStatus = Field(
        default=TimerStatus.PENDING, sa_column=sa.Column(sa.String(16), nullable=False)
    )
    trigger_at: datetime = Field(sa_column=utc_column())
    due_at: datetime = Field(sa_column=utc_column())
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    kind: TimerKind = Field(
        default=TimerKind.STEP,
        sa_column=sa.Column(sa.String(16), nullable=False, server_default=TimerKind.STEP.value),
    )
    payload: dict[str, Any] | None = Field(default=None, sa_column=json_column(nullable=True))
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
    updated_at: datetime = Field(default_factory=now, sa_column=utc_column())
