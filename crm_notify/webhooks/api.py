"""``POST /v1/webhooks/esp/{name}``: providers' tracking events in.

No API key: each provider's own proof of authenticity is checked instead (a signature, HTTP
Basic credentials, an SNS message signature). Answers: 200 with
``{"received", "stored", "duplicates", "unmatched"}``; 400 a body not in the provider's format;
401 credentials or signature missing; 403 wrong; 404 no webhook configured under that name;
413 a body over :data:`MAX_BODY_BYTES`; 503 something the check needs is unreachable (the
provider retries). Nothing is stored unless the whole call is accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from crm_notify.admin._http import error_response
from crm_notify.db import session_scope
from crm_notify.errors import WebhookError
from crm_notify.webhooks.base import EspWebhook, WebhookRequest
from crm_notify.webhooks.ingest import IngestSummary, record_tracking_events
from crm_notify.webhooks.registry import PROVIDER_WEBHOOKS, setting_names

logger = logging.getLogger(__name__)

#: Largest body accepted (SendGrid posts batches of up to a few thousand events).
MAX_BODY_BYTES = 10 * 1024 * 1024


def make_router(
    *,
    engine: Engine,
    webhooks: Mapping[str, EspWebhook],
    public_url: str,
    purposes: Sequence[str],
) -> APIRouter:
    """The tracking-webhook router.

    Parameters:
        webhooks: the configured webhooks by name (see ``registry.build_webhooks``).
        public_url: the service's public base URL (some providers sign the URL they call).
        purposes: the configured purposes (for unsubscribes from transactional mail).
    """
    router = APIRouter(tags=["tracking webhooks"])
    base = public_url.rstrip("/")

    @router.post(
        "/v1/webhooks/esp/{name}",
        summary="Receive a provider's tracking events (delivered, bounced, opened ...)",
    )
    async def receive(name: str, request: Request) -> JSONResponse:
        webhook = webhooks.get(name)
        if webhook is None:
            return _not_configured(name)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return error_response(
                    413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes"
                )
        query = f"?{request.url.query}" if request.url.query else ""
        call = WebhookRequest(
            url=f"{base}{request.url.path}{query}",
            headers={key.lower(): value for key, value in request.headers.items()},
            body=bytes(body),
        )
        try:
            summary = await run_in_threadpool(_handle, engine, webhook, call, purposes)
        except WebhookError as exc:
            logger.warning("%s webhook refused: %s", webhook.provider, exc.message)
            if exc.status_code == 503:
                response = error_response(503, "unavailable", str(exc))
                response.headers["Retry-After"] = "30"
                return response
            code = "unauthorized" if exc.status_code in (401, 403) else "invalid_payload"
            return error_response(exc.status_code, code, str(exc))
        return JSONResponse(summary.as_json())

    return router


def _handle(
    engine: Engine, webhook: EspWebhook, call: WebhookRequest, purposes: Sequence[str]
) -> IngestSummary:
    events = webhook.handle(call)
    with session_scope(engine) as session:
        return record_tracking_events(
            session=session, provider=webhook.provider, events=events, purposes=purposes
        )


def _not_configured(name: str) -> JSONResponse:
    if name in PROVIDER_WEBHOOKS:
        variables = " or ".join(setting_names(name))
        message = f"the {name} tracking webhook is not configured: set {variables}"
    else:
        known = ", ".join(sorted(PROVIDER_WEBHOOKS))
        message = f"no tracking webhook named {name!r} (providers: {known})"
    return error_response(404, "not_found", message, field="name")
