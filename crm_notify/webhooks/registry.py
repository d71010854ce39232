"""Which tracking webhooks a process answers, built from Settings."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from crm_notify.config import ENV_PREFIX, Settings
from crm_notify.webhooks.base import EspWebhook

#: provider -> (module, class, the settings that configure it); imported only when configured.
PROVIDER_WEBHOOKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sendgrid": (
        "crm_notify.webhooks.sendgrid",
        "SendGridWebhook",
        ("sendgrid_webhook_public_key",),
    ),
    "mailgun": ("crm_notify.webhooks.mailgun", "MailgunWebhook", ("mailgun_webhook_signing_key",)),
    "postmark": ("crm_notify.webhooks.postmark", "PostmarkWebhook", ("postmark_webhook_auth",)),
    "brevo": (
        "crm_notify.webhooks.brevo",
        "BrevoWebhook",
        ("brevo_webhook_auth", "brevo_webhook_token"),
    ),
    "mandrill": ("crm_notify.webhooks.mandrill", "MandrillWebhook", ("mandrill_webhook_key",)),
    "ses": ("crm_notify.webhooks.ses", "SesWebhook", ("ses_webhook_topic_arns",)),
}


def setting_names(provider: str) -> list[str]:
    """The environment variables that configure ``provider``'s webhook."""
    return [ENV_PREFIX + name.upper() for name in PROVIDER_WEBHOOKS[provider][2]]


def build_webhooks(
    settings: Settings, esp_providers: Mapping[str, str] | None = None
) -> dict[str, EspWebhook]:
    """The configured webhooks by the name in their URL (``/v1/webhooks/esp/<name>``).

    Each configured provider answers under its own name, and also under the name of every
    ESP of ``esp_providers`` (ESP name -> provider) that uses it.
    """
    by_provider: dict[str, EspWebhook] = {}
    for provider, (module, class_name, names) in PROVIDER_WEBHOOKS.items():
        if not any(getattr(settings, name) for name in names):
            continue
        webhook_class: type[EspWebhook] = getattr(importlib.import_module(module), class_name)
        webhook = webhook_class.from_settings(settings)
        if webhook is not None:
            by_provider[provider] = webhook
    named = dict(by_provider)
    for esp_name, provider in (esp_providers or {}).items():
        if provider in by_provider:
            named.setdefault(esp_name, by_provider[provider])
    return named
