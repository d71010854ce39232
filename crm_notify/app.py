"""The FastAPI application: the Segment event API, health check, and background delivery."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from crm_notify import __version__
from crm_notify.admin import decisions as admin_decisions
from crm_notify.admin import kpis as admin_kpis
from crm_notify.admin import outbox as admin_outbox
from crm_notify.admin import suppressions as admin_suppressions
from crm_notify.admin.consent import make_router as make_consent_router
from crm_notify.auth.api_keys import ApiKeyAuthenticator
from crm_notify.config import Settings
from crm_notify.console import make_router as make_console_router
from crm_notify.console.preview import ConsoleTools, PlaceholderLinks
from crm_notify.events.api import make_router
from crm_notify.events.schemas import SegmentCall
from crm_notify.gates.api import make_router as make_gates_router
from crm_notify.metrics import make_router as make_metrics_router
from crm_notify.runtime import Runtime
from crm_notify.subscriptions.api import make_router as make_subscriptions_router
from crm_notify.unsubscribe.api import make_router as make_unsubscribe_router
from crm_notify.webhooks.api import make_router as make_tracking_router
from crm_notify.webhooks.probe import make_probe_router
from crm_notify.webhooks.registry import build_webhooks

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. Rules and templates are loaded now, so a bad rule file fails here.

    Parameters:
        settings: the process's settings.
        runtime: an already-built runtime (tests); built from ``settings`` when omitted.
            Background delivery starts with the app and stops with it.
    """
    rt = runtime or Runtime.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        rt.start_background()
        try:
            yield
        finally:
            rt.close()

    app = FastAPI(
        title="crm-notify",
        version=__version__,
        description="Segment Spec events in, rule-driven notifications out.",
        lifespan=lifespan,
    )
    app.state.runtime = rt

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def database_unavailable(_request: Request, exc: sa.exc.SQLAlchemyError) -> JSONResponse:
        # The request was not applied (one transaction per request): a 503 makes the Segment
        # and RudderStack SDKs retry it, where a 500 would read as a bug. No parameters are
        # logged (they hold personal data).
        logger.error("database error while handling a request: %s", type(exc).__name__)
        return JSONResponse(
            {
                "error": "the database is unavailable; nothing was written, retry later",
                "field": None,
                "code": "database_unavailable",
                "message": "the database is unavailable; nothing was written, retry later",
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    def ingest(calls: list[SegmentCall], source: str) -> None:
        rt.intake.ingest(calls, source)

    authenticate = ApiKeyAuthenticator(engine=rt.engine)
    app.include_router(make_router(ingest=ingest, authenticate=authenticate))
    app.include_router(
        make_consent_router(
            engine=rt.engine, authenticate=authenticate, purposes=settings.purpose_names
        )
    )
    app.include_router(
        admin_suppressions.make_router(
            engine=rt.engine, authenticate=authenticate, purposes=settings.purpose_names
        )
    )
    app.include_router(
        admin_decisions.make_router(
            engine=rt.engine, authenticate=authenticate, purposes=settings.purpose_names
        )
    )
    app.include_router(
        make_unsubscribe_router(
            engine=rt.engine, secret_key=rt.secret_key, purposes=settings.purpose_names
        )
    )
    app.include_router(admin_kpis.make_router(engine=rt.engine, authenticate=authenticate))
    app.include_router(
        make_gates_router(
            engine=rt.engine,
            secret_key=rt.secret_key,
            base_url=settings.base_url,
            enqueue=rt.enqueue,
        )
    )
    app.include_router(
        admin_outbox.make_router(engine=rt.engine, authenticate=authenticate, enqueue=rt.enqueue)
    )
    app.include_router(
        make_subscriptions_router(
            engine=rt.engine, authenticate=authenticate, sender=rt.subscription_sender
        )
    )
    webhooks = build_webhooks(settings, rt.esp_providers)
    app.include_router(
        make_tracking_router(
            engine=rt.engine,
            webhooks=webhooks,
            public_url=settings.base_url,
            purposes=settings.purpose_names,
        )
    )
    app.include_router(make_probe_router(names=[*webhooks, *rt.esp_providers]))
    token = settings.metrics_token
    app.include_router(
        make_metrics_router(
            engine=rt.engine, token=token.get_secret_value() if token is not None else None
        )
    )
    previews = ConsoleTools(
        rules=rt.rules,
        templates=rt.templates,
        mail_from=settings.mail_from,
        policy=rt.policy,
        links=PlaceholderLinks(base_url=settings.base_url),
        webhooks=rt.webhooks,
        esps=rt.esps,
        rules_dir=settings.rules_dir,
        purposes=settings.purpose_names,
    )
    app.include_router(
        make_console_router(
            engine=rt.engine,
            secure_cookies=settings.base_url.startswith("https://"),
            previews=previews,
        )
    )

    @app.get("/healthz", tags=["health"], summary="Liveness and database check")
    def healthz() -> JSONResponse:
        try:
            with rt.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "database": "ok",
                "broker": settings.broker_kind,
                "rules": len(rt.rules.rules),
            }
        )

    return app
