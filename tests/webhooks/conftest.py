"""Fixtures of the tracking-webhook tests: the webhook router under a real uvicorn server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from crm_notify.config import Settings
from crm_notify.webhooks.api import make_router
from crm_notify.webhooks.registry import build_webhooks
from tests.support.servers import serve
from tests.webhooks._helpers import WebhookServer


@pytest.fixture
def webhook_server(
    engine: Engine, make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., WebhookServer]]:
    """Start the tracking-webhook app configured by setting overrides; stopped at teardown.

    ``webhook_server(mailgun_webhook_signing_key="...")`` builds Settings (the test's database),
    the configured webhooks (``registry.build_webhooks``) and ``POST /v1/webhooks/esp/{name}``,
    serves them on a loopback port and returns a :class:`WebhookServer`.
    """
    stops: list[Callable[[], None]] = []

    def start(**overrides: object) -> WebhookServer:
        settings = make_settings(**overrides)
        app = FastAPI()
        app.include_router(
            make_router(
                engine=engine,
                webhooks=build_webhooks(settings),
                public_url=settings.base_url,
                purposes=settings.purpose_names,
            )
        )
        running = serve(app)
        url = running.__enter__()

        def stop() -> None:
            running.__exit__(None, None, None)

        stops.append(stop)
        return WebhookServer(url=url, settings=settings, engine=engine)

    yield start
    for stop in reversed(stops):
        stop()
