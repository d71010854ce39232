"""What the console's rule pages and KPI dashboard show: each rule's lint status, and its KPIs
day by day (:func:`crm_notify.kpis.daily_rule_kpis`) with the skips by kind of reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import Session, col, func, select

from crm_notify.clock import now
from crm_notify.errors import RuleFileError
from crm_notify.kpis import daily_rule_kpis
from crm_notify.metrics import reason_kind
from crm_notify.outbox.models import Decision, DecisionOutcome
from crm_notify.rules.model import Rule
from crm_notify.rules.triggers import EventTrigger, IdentifyTrigger, IdleTrigger, OrderStatusTrigger

#: The dashboard's periods, in days, and the default.
PERIODS = (7, 14, 30)
DEFAULT_PERIOD = 14
#: The rates charted, in order.
RATES = ("delivery_rate", "open_rate", "click_rate", "bounce_rate", "complaint_rate")


def describe_trigger(rule: Rule) -> str:
    """The rule's trigger in a few words (``track "Order Completed"``, ``cart idle for 2d``)."""
    from crm_notify.rules.durations import format_duration

    trigger = rule.trigger
    if isinstance(trigger, EventTrigger):
        return f'track "{trigger.event}"'
    if isinstance(trigger, IdentifyTrigger):
        return "first identify" if trigger.first else "identify"
    if isinstance(trigger, IdleTrigger):
        return f"{trigger.entity} idle for {format_duration(trigger.after)}"
    if isinstance(trigger, OrderStatusTrigger):
        return "order status to " + ", ".join(sorted(trigger.to))
    return type(trigger).__name__


def lint_by_file(problems: list[RuleFileError], rules_dir: Path) -> dict[str, list[str]]:
    """The lint problems by rule file (relative to ``rules_dir``), as ``line: message``."""
    found: dict[str, list[str]] = {}
    for problem in problems:
        path = Path(problem.path)
        try:
            name = str(path.resolve().relative_to(rules_dir.resolve()))
        except ValueError:
            name = path.name
        found.setdefault(name, []).append(str(problem))
    return found


@dataclass
class RuleSeries:
    """One rule's KPIs per day of the period (email channel), and its skips by reason."""

    rule: str
    sent: list[int] = field(default_factory=list)
    rates: dict[str, list[float | None]] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def total_sent(self) -> int:
        """Sends over the whole period."""
        return sum(self.sent)


def daily_kpis(
    session: Session, *, days: int, rule: str | None = None
) -> tuple[list[str], list[RuleSeries]]:
    """KPIs per rule for each of the last ``days`` UTC days (today included).

    Returns:
        The days (``MM-DD``), and a series per rule that sent or skipped anything, by name.
    """
    today = period_start(1)
    starts = [today - timedelta(days=days - 1 - index) for index in range(days)]
    series: dict[str, RuleSeries] = {}

    def of(name: str) -> RuleSeries:
        if name not in series:
            series[name] = RuleSeries(
                name, sent=[0] * days, rates={rate: [None] * days for rate in RATES}
            )
        return series[name]

    index_of = {start.strftime("%Y-%m-%d"): index for index, start in enumerate(starts)}
    found = daily_rule_kpis(
        session=session, since=starts[0], until=today + timedelta(days=1), rule=rule
    )
    for day, rows in found.items():
        for row in rows:
            if row.channel != "email" or day not in index_of:
                continue
            entry = of(row.rule)
            entry.sent[index_of[day]] = row.sent
            for name, value in row.rates().items():
                entry.rates[name][index_of[day]] = value
    skips = (
        select(Decision.rule, Decision.reason, func.count())
        .where(col(Decision.outcome) == DecisionOutcome.SKIP.value, col(Decision.at) >= starts[0])
        .group_by(col(Decision.rule), col(Decision.reason))
    )
    if rule is not None:
        skips = skips.where(col(Decision.rule) == rule)
    for name, reason, count in session.exec(skips):
        of(name).skipped[reason_kind(reason)] += count
    labels = [start.strftime("%m-%d") for start in starts]
    return labels, [series[name] for name in sorted(series)]


def period_start(days: int) -> datetime:
    """The start of the last ``days`` UTC days (today included): midnight UTC ``days - 1``
    days ago."""
    today = now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days - 1)


def period_of(raw: str | None) -> int:
    """The period asked for, in days (:data:`DEFAULT_PERIOD` unless one of :data:`PERIODS`)."""
    return int(raw) if raw and raw.isdigit() and int(raw) in PERIODS else DEFAULT_PERIOD


def since_label(days: int) -> str:
    """``the last 14 days`` (as of now, UTC)."""
    return f"the last {days} days (UTC, to {now().astimezone(UTC):%Y-%m-%d %H:%M})"
