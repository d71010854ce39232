"""CRM_NOTIFY_ESP_URL names the provider: each scheme builds its adapter, with the URL's host
overriding the provider's API host, and a missing credential is a clear configuration error."""

from __future__ import annotations

import pytest

from crm_notify.errors import ConfigurationError
from crm_notify.esp import adapter_from_url
from crm_notify.esp.brevo import BrevoAdapter
from crm_notify.esp.mailgun import MailgunAdapter
from crm_notify.esp.mandrill import MandrillAdapter
from crm_notify.esp.postmark import PostmarkAdapter
from crm_notify.esp.sendgrid import SendGridAdapter
from crm_notify.esp.ses import SesAdapter


@pytest.mark.parametrize(
    ("url", "adapter_class", "base_url"),
    [
        ("sendgrid://SG.key@", SendGridAdapter, "https://api.sendgrid.com"),
        ("brevo://xkeysib-1@", BrevoAdapter, "https://api.brevo.com"),
        ("postmark://token@", PostmarkAdapter, "https://api.postmarkapp.com"),
        ("mandrill://md-key@", MandrillAdapter, "https://mandrillapp.com"),
        ("mailgun://api:key@/mg.example.com", MailgunAdapter, "https://api.mailgun.net"),
        (
            "mailgun://api:key@/mg.example.com?region=eu",
            MailgunAdapter,
            "https://api.eu.mailgun.net",
        ),
        (
            "ses://AKID:secret%2Fkey@?region=eu-west-1",
            SesAdapter,
            "https://email.eu-west-1.amazonaws.com",
        ),
        ("sendgrid://SG.key@127.0.0.1:8025?insecure=1", SendGridAdapter, "http://127.0.0.1:8025"),
    ],
)
def test_each_provider_url_builds_its_adapter(url: str, adapter_class: type, base_url: str) -> None:
    adapter = adapter_from_url(url)
    try:
        assert isinstance(adapter, adapter_class)
        assert adapter.base_url == base_url  # type: ignore[attr-defined]
    finally:
        adapter.close()


@pytest.mark.parametrize(
    "url", ["sendgrid://@", "mailgun://api:key@", "ses://AKID:secret@", "postmark://@"]
)
def test_a_missing_credential_or_required_part_names_the_setting(url: str) -> None:
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_ESP_URL"):
        adapter_from_url(url)
