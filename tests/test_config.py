"""Settings validation."""

from __future__ import annotations

import pytest

from crm_notify.config import load_settings
from crm_notify.errors import ConfigurationError


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given no CRM_NOTIFY_* variables
    for name in list(__import__("os").environ):
        if name.startswith("CRM_NOTIFY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    # When settings load
    settings = load_settings()
    # Then the database is SQLite under var/, no Redis, mail goes to var/outbox
    assert settings.database_url == "sqlite:///var/crm-notify.db"
    assert settings.embedded_broker and settings.is_sqlite
    assert settings.esp_url == "file:var/outbox"


def test_invalid_values_name_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given invalid values
    monkeypatch.setenv("CRM_NOTIFY_DATABASE_URL", "mysql://x")
    monkeypatch.setenv("CRM_NOTIFY_ESP_URL", "pigeon://coop")
    monkeypatch.setenv("CRM_NOTIFY_PORT", "99999")
    # When settings load, Then one error lists every variable and why
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()
    text = str(excinfo.value)
    assert "CRM_NOTIFY_DATABASE_URL: " in text and "sqlite://" in text
    assert "CRM_NOTIFY_ESP_URL: " in text and "smtp" in text
    assert "CRM_NOTIFY_PORT: " in text


def test_env_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CRM_NOTIFY_REDIS_URL", raising=False)
    env_file = tmp_path / "crm.env"
    env_file.write_text("CRM_NOTIFY_REDIS_URL=redis://127.0.0.1:6390/2\n")
    settings = load_settings(env_file)
    assert settings.redis_url == "redis://127.0.0.1:6390/2" and not settings.embedded_broker


def test_missing_env_file_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "nope.env")


def test_postgres_urls_use_psycopg() -> None:
    settings = load_settings(None, database_url="postgres://u@h/db")
    assert settings.database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CRM_NOTIFY_QUIET_HOURS", "25:00-08:00", "CRM_NOTIFY_QUIET_HOURS: invalid time '25:00'"),
        ("CRM_NOTIFY_MARKETING_LIMIT", "abc", "CRM_NOTIFY_MARKETING_LIMIT: invalid limit 'abc'"),
        ("CRM_NOTIFY_PURPOSES", "News Letter", "CRM_NOTIFY_PURPOSES: purpose 'News Letter'"),
        ("CRM_NOTIFY_DEFAULT_TIMEZONE", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("CRM_NOTIFY_SECRET_KEY", "short", "CRM_NOTIFY_SECRET_KEY: must be at least 32"),
        ("CRM_NOTIFY_PUBLIC_URL", "notify.example", "CRM_NOTIFY_PUBLIC_URL: must be an http"),
        ("CRM_NOTIFY_CONSENT_CATEGORIES", "not json", "must be a JSON object"),
        (
            "CRM_NOTIFY_CONSENT_CATEGORIES",
            '{"ads": "advertising"}',
            "CRM_NOTIFY_CONSENT_CATEGORIES: 'ads' maps to 'advertising'",
        ),
    ],
)
def test_guard_settings_are_checked_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()
    assert expected in str(excinfo.value)


def test_custom_purposes_keep_the_built_in_ones_and_consent_may_map_to_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRM_NOTIFY_PURPOSES", "newsletter, marketing")
    monkeypatch.setenv("CRM_NOTIFY_CONSENT_CATEGORIES", '{"news": "newsletter"}')
    monkeypatch.setenv("CRM_NOTIFY_PORT", "9000")
    settings = load_settings()
    assert settings.purpose_names == ("transactional", "marketing", "newsletter")
    assert settings.consent_categories == {"news": "newsletter"}
    assert settings.base_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sendgrid://@", "needs the API key"),
        ("brevo://KEY@?region=eu", "unknown option 'region' (known for brevo: insecure, timeout)"),
        ("postmark://T@api.example.com?insecure=1", "only to loopback addresses"),
        ("mailgun://api:K@/mg.example.com?insecure=maybe", "insecure must be 1/0"),
        ("smtp://mail.example?region=eu", "known for smtp: starttls, timeout, verify"),
    ],
)
def test_api_esp_urls_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("CRM_NOTIFY_ESP_URL", url)
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()
    assert "CRM_NOTIFY_ESP_URL: " in str(excinfo.value)
    assert expected in str(excinfo.value)


def test_api_esp_urls_with_a_key_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (
        "sendgrid://SG.key@",
        "mailgun://api:key@/mg.example.com?region=eu",
        "ses://AKID:secret@?region=eu-west-1",
        "postmark://token@127.0.0.1:8025?insecure=1",
    ):
        monkeypatch.setenv("CRM_NOTIFY_ESP_URL", url)
        assert load_settings().esp_url == url
