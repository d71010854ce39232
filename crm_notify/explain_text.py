"""A :class:`~crm_notify.explain.Timeline` as text for support staff at a terminal."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from crm_notify.clock import as_utc
from crm_notify.explain import ContactSummary, EventSummary, Timeline


def _at(value: datetime) -> str:
    return f"{as_utc(value):%Y-%m-%d %H:%M:%S} UTC"


def _short(value: datetime, day: date) -> str:
    value = as_utc(value)
    return f"{value:%H:%M:%S}" if value.date() == day else f"{value:%Y-%m-%d %H:%M:%S}"


def _heading(contact: ContactSummary) -> list[str]:
    who = [f"contact {contact.id}"]
    if contact.user_id:
        who.append(f"user {contact.user_id}")
    who.append(f"time zone {contact.timezone}" if contact.timezone else "no time zone")
    consent = " · ".join(
        f"{c.purpose}: none"
        if c.granted is None or c.at is None
        else f"{c.purpose} {'granted' if c.granted else 'withdrawn'} "
        f"{as_utc(c.at):%Y-%m-%d %H:%M} UTC ({c.source})"
        for c in contact.consent
    )
    suppression = "; ".join(
        f"{'all mail' if s.purpose == '*' else s.purpose} ({s.reason}, "
        f"{as_utc(s.at):%Y-%m-%d}, by {s.created_by})"
        for s in contact.suppressions
    )
    return [
        f"{contact.email or '(no email)'} ({', '.join(who)})",
        f"consent: {consent or 'none'}",
        f"suppression: {suppression or 'none'}",
    ]


def _details(details: dict[str, Any]) -> str:
    parts = []
    for key, value in sorted(details.items()):  # JSONB does not keep the order
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        parts.append(f"{key}={text if len(text) <= 60 else text[:57] + '...'}")
    line = " ".join(parts)
    return line if len(line) <= 160 else line[:157] + "..."


def _event_label(event: EventSummary) -> str:
    label = f'{event.type} "{event.name}"' if event.name else event.type
    return f"{label} ({event.message_id})"


def format_timeline(timeline: Timeline) -> str:
    """The timeline as text for a terminal: the contact, then one block per moment."""
    lines = _heading(timeline.contact)
    lines.append("")
    if timeline.truncated:
        lines.append(f"(older entries left out; showing the last {len(timeline.entries)})")
    if not timeline.entries:
        lines.append("nothing recorded" + (f" for rule {timeline.rule}" if timeline.rule else ""))
    width = max(
        [14, *(len(d.rule) for e in timeline.entries for d in e.decisions)],
    )
    for entry in timeline.entries:
        day = as_utc(entry.at).date()
        if entry.kind == "event" and entry.event is not None:
            lines.append(f"{_at(entry.at)}  {_event_label(entry.event)}")
        else:
            about = f" (for {_event_label(entry.event)})" if entry.event else ""
            lines.append(f"{_at(entry.at)}  {entry.kind}{about}")
        if not entry.decisions:
            lines.append("  no rule triggered")
        for decision in entry.decisions:
            text = f"  {decision.rule:<{width}} {decision.outcome:<6} {decision.reason}"
            note = decision.notification
            if note is not None:
                last = note.history[-1].at if note.history else note.created_at
                text += f" → notification {note.id}: {note.status} {_short(last, day)}"
            lines.append(text)
            if decision.details:
                lines.append(f"  {'':<{width}} {'':<6} {_details(decision.details)}")
    return "\n".join(lines)
