"""Fetch outcomes counted per rule and step, from the decision log (for the console)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session, col, select

from crm_notify.fetch.outcomes import FetchOutcome, fetch_entry
from crm_notify.outbox.models import Decision

#: What a decision's reason holds when it is about a fetch step (a cheap filter before the
#: details are read).
REASON_PATTERN = "%fetch %"


@dataclass
class FetchCounts:
    """One step's outcomes (``ok``, ``cache_hit``, ``fallback``, ``skip``, ``defer``) and its
    failures by kind (``timeout``, ``status 500``...)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Requests counted (one per delivery attempt of an email)."""
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        """Attempts whose request failed (a fallback, a skip or a defer)."""
        return self.total - self.outcomes[FetchOutcome.OK] - self.outcomes[FetchOutcome.CACHE_HIT]


def fetch_counts(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    rule: str | None = None,
) -> dict[tuple[str, str], FetchCounts]:
    """Count fetch outcomes by rule and step.

    Parameters:
        session: a database session.
        since: only decisions at or after this moment.
        until: only decisions before this moment.
        rule: only this rule's.

    Returns:
        ``{(rule, step): FetchCounts}``, sorted.
    """
    query = select(Decision.rule, Decision.details).where(col(Decision.reason).like(REASON_PATTERN))
    if since is not None:
        query = query.where(col(Decision.at) >= since)
    if until is not None:
        query = query.where(col(Decision.at) < until)
    if rule is not None:
        query = query.where(col(Decision.rule) == rule)
    counts: dict[tuple[str, str], FetchCounts] = {}
    for name, details in session.exec(query):
        entry = fetch_entry(details)
        if entry is None:
            continue
        per_step = counts.setdefault((name, entry["name"]), FetchCounts())
        per_step.outcomes[str(entry.get("outcome"))] += 1
        if entry.get("error"):
            per_step.errors[str(entry["error"])] += 1
    return dict(sorted(counts.items()))
