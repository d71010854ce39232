"""Build the ESP adapter named by ``CRM_NOTIFY_ESP_URL``."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError
from crm_notify.esp.base import EspAdapter
from crm_notify.esp.console import ConsoleAdapter
from crm_notify.esp.file import FileAdapter
from crm_notify.esp.http import parse_esp_url
from crm_notify.esp.smtp import SmtpAdapter, SmtpOptions

#: Providers with an HTTP API: URL scheme -> (module, adapter class), imported when used.
API_ADAPTERS: dict[str, tuple[str, str]] = {
    "sendgrid": ("crm_notify.esp.sendgrid", "SendGridAdapter"),
    "brevo": ("crm_notify.esp.brevo", "BrevoAdapter"),
    "postmark": ("crm_notify.esp.postmark", "PostmarkAdapter"),
    "mandrill": ("crm_notify.esp.mandrill", "MandrillAdapter"),
    "mailgun": ("crm_notify.esp.mailgun", "MailgunAdapter"),
    "ses": ("crm_notify.esp.ses", "SesAdapter"),
}

#: A ``${NAME}`` reference to an environment variable in a configured ESP URL.
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: Values of boolean URL options read as true.
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def _flag(query: dict[str, list[str]], name: str, default: bool = False) -> bool:
    values = query.get(name)
    return default if not values else values[-1].strip().lower() in TRUE_VALUES


def adapter_from_url(url: str, *, base_dir: Path | None = None) -> EspAdapter:
    """Return the adapter for ``url``.

    Parameters:
        url: ``smtp://user:pass@host:port?starttls=1``, ``smtps://...``, an API provider's
            ``<provider>://KEY@[host[:port]][/path][?options]`` (see :data:`API_ADAPTERS`),
            ``file:///abs/dir``, ``file:relative/dir`` or ``console:``.
        base_dir: where relative ``file:`` paths start (default: the working directory).

    Raises:
        ConfigurationError: the URL names an unknown scheme or lacks a part it needs.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme in {"smtp", "smtps"}:
        if not parts.hostname:
            raise ConfigurationError(f"CRM_NOTIFY_ESP_URL: no host in {parts.scheme} URL")
        implicit = parts.scheme == "smtps"
        timeout = float(query.get("timeout", ["30"])[-1])
        return SmtpAdapter(
            SmtpOptions(
                host=parts.hostname,
                port=parts.port or (465 if implicit else 25),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                starttls=_flag(query, "starttls"),
                implicit_tls=implicit,
                timeout_s=timeout,
                verify_tls=_flag(query, "verify", default=True),
            )
        )
    if parts.scheme == "file":
        raw = unquote(
            parts.path if parts.netloc in ("", "localhost") else parts.netloc + parts.path
        )
        path = Path(raw)
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return FileAdapter(path)
    if parts.scheme == "console":
        return ConsoleAdapter()
    if parts.scheme in API_ADAPTERS:
        module_name, class_name = API_ADAPTERS[parts.scheme]
        adapter_class = getattr(importlib.import_module(module_name), class_name)
        adapter: EspAdapter = adapter_class.from_esp_url(parse_esp_url(url))
        return adapter
    raise ConfigurationError(f"CRM_NOTIFY_ESP_URL: unsupported scheme {parts.scheme!r}")


def expand_environment(url: str, *, setting: str = "CRM_NOTIFY_ESPS") -> str:
    """``url`` with every ``${NAME}`` replaced by that environment variable.

    Raises:
        ConfigurationError: a referenced variable is not set (named with ``setting``).
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigurationError(f"{setting}: environment variable {name} is not set")
        return os.environ[name]

    return ENV_REFERENCE.sub(value, url)


def configured_esps(settings: Settings) -> dict[str, str]:
    """The ESPs to deliver through, in failover order: name -> URL (references expanded).

    ``CRM_NOTIFY_ESPS`` when set, else the single ``CRM_NOTIFY_ESP_URL`` named after its
    scheme (``smtp``, ``sendgrid``, ...).
    """
    if settings.esps:
        return {name: expand_environment(url) for name, url in settings.esps.items()}
    return {urlsplit(settings.esp_url).scheme: settings.esp_url}


def esp_providers(esps: dict[str, str]) -> dict[str, str]:
    """ESP name -> provider (its URL scheme, ``smtps`` counted as ``smtp``)."""
    return {name: urlsplit(url).scheme.replace("smtps", "smtp") for name, url in esps.items()}
