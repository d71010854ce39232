"""The console's rule pages and KPI dashboard.

::

    GET /console/rules                     every loaded rule, and the lint of the files now
    GET /console/rules/{name}?contact=...  one rule: what it does, its KPIs per day, its fetch
                                           steps' outcomes, and a dry run for a contact (its
                                           preview page)
    GET /console/kpis?days=14              per rule: sends per day, the delivery, open, click,
                                           bounce and complaint rates per day, skips by reason
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session

from crm_notify.console._view import PREFIX, ConsoleView, query_text
from crm_notify.console.charts import bar_chart, line_chart
from crm_notify.console.dashboard import (
    PERIODS,
    RATES,
    RuleSeries,
    daily_kpis,
    describe_trigger,
    lint_by_file,
    period_of,
    period_start,
    since_label,
)
from crm_notify.console.preview import ConsoleTools
from crm_notify.fetch.stats import FetchCounts, fetch_counts
from crm_notify.preview import PreviewError, find_contact_by_address


def add_rule_routes(router: APIRouter, view: ConsoleView, tools: ConsoleTools) -> None:
    """Add the rule pages and the KPI dashboard to the console's ``router``."""

    def charts(labels: list[str], series: list[RuleSeries]) -> list[dict[str, Any]]:
        return [
            {
                "series": entry,
                "sent": bar_chart(labels, entry.sent, title=f"{entry.rule}: sent per day"),
                "rates": line_chart(
                    labels,
                    {rate.removesuffix("_rate"): entry.rates[rate] for rate in RATES},
                    title=f"{entry.rule}: rates per day",
                ),
            }
            for entry in series
        ]

    @router.get("/rules")
    async def rules_page(request: Request) -> Response:
        current = await view.signed_in(request)
        if isinstance(current, Response):
            return current
        user, csrf = current
        problems = await run_in_threadpool(tools.lint)
        lint = lint_by_file(problems, tools.rules_dir) if tools.rules_dir else {}
        rows = [
            {
                "rule": rule,
                "trigger": describe_trigger(rule),
                "file": _relative(rule.source_path, tools),
            }
            for rule in sorted(tools.rules.rules, key=lambda r: r.name)
        ]
        return view.page(
            "rules.html", user=user, csrf=csrf, rows=rows, lint=lint, linted=tools.rules_dir
        )

    @router.get("/rules/{name}")
    async def rule_page(request: Request, name: str) -> Response:
        current = await view.signed_in(request)
        if isinstance(current, Response):
            return current
        user, csrf = current
        rule = tools.rules.by_name(name)
        if rule is None:
            return view.refused(404, "No such rule.", user)
        who = query_text(request, "contact")
        if who:

            def find() -> int | None:
                with Session(view.engine) as session:
                    try:
                        return find_contact_by_address(session, who).id
                    except PreviewError:
                        return None

            contact_id = await run_in_threadpool(find)
            if contact_id is not None:
                query = urlencode({"rule": rule.name})
                target = f"{PREFIX}/contacts/{contact_id}/preview?{query}"
                return RedirectResponse(target, status_code=303)
        days = period_of(request.query_params.get("days"))

        def load() -> tuple[list[str], list[RuleSeries], dict[str, FetchCounts]]:
            with Session(view.engine) as session:
                labels, series = daily_kpis(session, days=days, rule=rule.name)
                if not rule.fetch:
                    return labels, series, {}
                counts = fetch_counts(session, since=period_start(days), rule=rule.name)
                return labels, series, {step: found for (_, step), found in counts.items()}

        labels, series, fetches = await run_in_threadpool(load)
        return view.page(
            "rule.html",
            user=user,
            csrf=csrf,
            rule=rule,
            trigger=describe_trigger(rule),
            file=_relative(rule.source_path, tools),
            who=who,
            not_found=bool(who),
            charts=charts(labels, series),
            fetches=fetches,
            days=days,
            periods=PERIODS,
            since=since_label(days),
        )

    @router.get("/kpis")
    async def kpis_page(request: Request) -> Response:
        current = await view.signed_in(request)
        if isinstance(current, Response):
            return current
        user, csrf = current
        days = period_of(request.query_params.get("days"))

        def load() -> tuple[list[str], list[RuleSeries]]:
            with Session(view.engine) as session:
                return daily_kpis(session, days=days)

        labels, series = await run_in_threadpool(load)
        return view.page(
            "kpis.html",
            user=user,
            csrf=csrf,
            charts=charts(labels, series),
            days=days,
            periods=PERIODS,
            since=since_label(days),
        )


def _relative(path: Any, tools: ConsoleTools) -> str:
    if tools.rules_dir is None:
        return str(path.name)
    try:
        return str(path.resolve().relative_to(tools.rules_dir.resolve()))
    except ValueError:
        return str(path.name)
