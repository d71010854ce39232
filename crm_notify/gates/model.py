"""The send gate: an outside system approves, rejects or enriches sends before they go out.

A rule with a ``gate:`` holds the notifications one firing produces (status ``gated``) under a
:class:`Gate`; the integration's endpoint is told, downloads the items, cancels the ones it
rejects (optionally attaching template data to the others), and calls the finish URI, which
releases the rest. Without an answer, ``on_timeout`` decides at the deadline.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import json_column, utc_column

#: How long a gate waits for the integration when the rule does not say.
DEFAULT_GATE_TIMEOUT = timedelta(hours=1)
#: How many times a rejected or timed-out send is tried again when the rule does not say.
DEFAULT_GATE_RETRIES = 1


class OnTimeout(enum.StrEnum):
    """What happens to the held items of a gate nobody finished in time."""

    RELEASE = "release"
    DROP = "drop"


class GateStatus(enum.StrEnum):
    """``open`` (items held) -> ``finished`` (the integration called finish) or ``timed_out``."""

    OPEN = "open"
    FINISHED = "finished"
    TIMED_OUT = "timed_out"


class GateDelivery(enum.StrEnum):
    """Whether the integration has been told about the gate: ``pending`` -> ``notified``, or
    ``failed`` (it refused or never answered; the timeout policy decides the items)."""

    PENDING = "pending"
    NOTIFIED = "notified"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class GateAuth:
    """How the gate notification authenticates to the integration's endpoint: HTTP Basic
    (``basic`` holds ``${USER}:${PASSWORD}``-style text) or a custom header (``header`` name
    and ``token``); values may hold ``${NAME}`` references, resolved when sending."""

    basic: str | None = None
    header: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GateRetry:
    """A follow-up that tries a rejected or timed-out send again later (gated again).

    Parameters:
        after: how long after the rejection or the deadline.
        times: how many retries one send gets (the original send not counted).
    """

    after: timedelta
    times: int = DEFAULT_GATE_RETRIES


@dataclass(frozen=True, slots=True, kw_only=True)
class GateConfig:
    """A rule's (or the project's) ``gate:``, checked and compiled.

    Parameters:
        url: the integration's single endpoint (``${NAME}`` only in the query string).
        auth: how to authenticate to it (``None``: no credentials).
        secret_variable: the variable holding the Standard Webhooks signing secret (``None``:
            ``CRM_NOTIFY_WEBHOOK_SECRET``).
        timeout: how long the items wait for the finish call.
        on_timeout: release or drop the items still held at the deadline.
        actions: what the integration is asked to do, each a mapping with an ``id``; the
            project's first, extended (never replaced) by the rule's.
        on_rejected, on_timed_out: a template to send instead to the rejected / timed-out
            items (``None``: nothing is sent to them).
        retry_rejected, retry_timed_out: or else try the rejected / timed-out sends again
            later, held by the gate again (``None``: no retry).
    """

    url: str
    auth: GateAuth | None = None
    secret_variable: str | None = None
    timeout: timedelta = DEFAULT_GATE_TIMEOUT
    on_timeout: OnTimeout = OnTimeout.RELEASE
    actions: tuple[dict[str, Any], ...] = ()
    on_rejected: str | None = None
    on_timed_out: str | None = None
    retry_rejected: GateRetry | None = None
    retry_timed_out: GateRetry | None = None
    source_path: Path = field(default_factory=Path)
    source_line: int = 0


class Gate(SQLModel, table=True):
    """One held firing (a single send, or a batch of a scheduled run) of one gated rule.

    ``public_id`` names the gate in its URIs (never the row id); ``config`` is the compiled
    :class:`GateConfig` as it was when the gate opened (plain JSON), so a rule edited since
    does not change a gate in flight.
    """

    id: int | None = Field(default=None, primary_key=True)
    public_id: str = Field(max_length=64, unique=True)
    rule: str = Field(max_length=255, index=True)
    send_name: str = Field(max_length=255)
    batch: bool = False
    status: str = Field(default=GateStatus.OPEN, max_length=16, index=True)
    delivery: str = Field(default=GateDelivery.PENDING, max_length=16, index=True)
    delivery_attempts: int = 0
    next_delivery_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    response_status: int | None = None
    config: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
    deadline: datetime = Field(sa_column=utc_column(index=True))
    finished_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))


def gate_config_json(config: GateConfig) -> dict[str, Any]:
    """Return ``config`` as plain JSON (for :attr:`Gate.config`); the timeout in seconds.

    Parameters:
        config: a compiled gate.

    Returns:
        A JSON-serialisable mapping that :func:`gate_config_from_json` reads back.
    """
    auth = config.auth
    seconds = config.timeout.total_seconds()
    return {
        "url": config.url,
        "auth": None
        if auth is None
        else {"basic": auth.basic, "header": auth.header, "token": auth.token},
        "secret_variable": config.secret_variable,
        "timeout_s": int(seconds) if seconds.is_integer() else seconds,
        "on_timeout": config.on_timeout.value,
        "actions": copy.deepcopy(list(config.actions)),
        "on_rejected": config.on_rejected,
        "on_timed_out": config.on_timed_out,
        "retry_rejected": _retry_json(config.retry_rejected),
        "retry_timed_out": _retry_json(config.retry_timed_out),
        "source_path": str(config.source_path),
        "source_line": config.source_line,
    }


def gate_config_from_json(data: dict[str, Any]) -> GateConfig:
    """Read back what :func:`gate_config_json` wrote.

    Parameters:
        data: a gate's stored ``config``; keys other than ``url`` may be missing (defaults).

    Raises:
        KeyError: no ``url``.
        ValueError: an unknown ``on_timeout``.

    Returns:
        The gate's configuration.
    """
    auth = data.get("auth")
    timeout_s = data.get("timeout_s")
    return GateConfig(
        url=data["url"],
        auth=None
        if auth is None
        else GateAuth(basic=auth.get("basic"), header=auth.get("header"), token=auth.get("token")),
        secret_variable=data.get("secret_variable"),
        timeout=DEFAULT_GATE_TIMEOUT if timeout_s is None else timedelta(seconds=timeout_s),
        on_timeout=OnTimeout(data.get("on_timeout", OnTimeout.RELEASE)),
        actions=tuple(copy.deepcopy(data.get("actions") or [])),
        on_rejected=data.get("on_rejected"),
        on_timed_out=data.get("on_timed_out"),
        retry_rejected=_retry_from_json(data.get("retry_rejected")),
        retry_timed_out=_retry_from_json(data.get("retry_timed_out")),
        source_path=Path(data.get("source_path") or ""),
        source_line=int(data.get("source_line") or 0),
    )


def _retry_json(retry: GateRetry | None) -> dict[str, Any] | None:
    if retry is None:
        return None
    seconds = retry.after.total_seconds()
    return {"after_s": int(seconds) if seconds.is_integer() else seconds, "times": retry.times}


def _retry_from_json(data: dict[str, Any] | None) -> GateRetry | None:
    if not data:
        return None
    return GateRetry(
        after=timedelta(seconds=data["after_s"]),
        times=int(data.get("times") or DEFAULT_GATE_RETRIES),
    )
