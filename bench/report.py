"""Plain-text tables of benchmark results (also pasted into ``docs/benchmarks.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.scenarios import ModeResult


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with columns padded to their widest cell."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def summary(results: Sequence[ModeResult]) -> str:
    """The headline table: one row per mode."""
    headers = [
        "mode",
        "database",
        "broker",
        "ingest events/s",
        "notifications/s",
        "p50 ms",
        "p95 ms",
        "delivery msgs/s",
        "delivered by",
        "exactly once",
    ]
    rows = []
    for r in results:
        rows.append(
            [
                r.mode,
                r.database,
                r.broker,
                r.ingest.get("events_per_s"),
                r.ingest.get("notifications_per_s"),
                r.ingest.get("p50_ms"),
                r.ingest.get("p95_ms"),
                r.delivery.get("messages_per_s"),
                r.delivery.get("workers"),
                "yes" if r.checks.get("ok") else "NO",
            ]
        )
    return table(headers, rows)


def details(results: Sequence[ModeResult]) -> str:
    """Sizes, timings and CPU seconds behind the headline figures."""
    headers = ["mode", "phase", "count", "seconds", "CPU seconds (process: s)"]
    rows = []
    for r in results:
        ingest, delivery = r.ingest, r.delivery
        rows.append(
            [
                r.mode,
                "ingest" + (" (delivery running)" if ingest.get("delivery_running") else ""),
                f"{ingest.get('events')} events / {ingest.get('notifications')} notifications",
                ingest.get("seconds"),
                _cpu(ingest.get("cpu_s", {})),
            ]
        )
        rows.append(
            [
                r.mode,
                "delivery",
                f"{delivery.get('messages')} messages",
                f"{delivery.get('seconds_first_to_last')} (first to last); "
                f"{delivery.get('seconds_from_start')} from start",
                _cpu(delivery.get("cpu_s", {})),
            ]
        )
    return table(headers, rows)


def _cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name}: {seconds:.1f}" for name, seconds in cpu.items())


def profiles(found: dict[str, Any]) -> str:
    """In-process rates and the top hotspots of each profile."""
    parts = []
    for mode, figures in found.items():
        for path in ("ingest", "delivery"):
            data = figures[path]
            rate_key = "events_per_s" if path == "ingest" else "messages_per_s"
            parts.append(
                f"{mode} {path} in-process ({figures['database']}, {figures['broker']}): "
                f"{data[rate_key]:,.0f}/s unprofiled, one thread; profile {data['profile']}"
            )
            rows = [[where, pct] for where, pct in data["self_time"][:8]]
            parts.append(table(["self time: function (file:line)", "%"], rows))
            rows = [[where, pct] for where, pct in data["crm_notify_total_time"][:8]]
            parts.append(table(["crm-notify: function (file:line)", "% total"], rows))
            parts.append("")
    return "\n".join(parts)
