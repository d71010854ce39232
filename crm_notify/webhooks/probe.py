"""``HEAD /v1/webhooks/esp/{name}``: answers a provider checking that its webhook URL exists.

Mailchimp Transactional (Mandrill) checks a new webhook's URL with a ``HEAD`` request and
shows the webhook's signing key only once that succeeded, so the check must pass before
``CRM_NOTIFY_MANDRILL_WEBHOOK_KEY`` can be set: every provider name (and every configured
webhook name) answers 200, without a body and without storing anything.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, Response

from crm_notify.webhooks.registry import PROVIDER_WEBHOOKS


def make_probe_router(*, names: Iterable[str] = ()) -> APIRouter:
    """The router answering ``HEAD`` on the tracking-webhook URLs.

    Parameters:
        names: the configured webhook names (ESP names included) besides the providers'.
    """
    router = APIRouter(tags=["tracking webhooks"])
    known = frozenset(PROVIDER_WEBHOOKS) | frozenset(names)

    @router.head(
        "/v1/webhooks/esp/{name}",
        summary="Check that a tracking-webhook URL exists (Mandrill does, adding a webhook)",
    )
    async def probe(name: str) -> Response:
        return Response(status_code=200 if name in known else 404)

    return router
