"""Settings: the only reader of the environment.

Every setting comes from an environment variable prefixed ``CRM_NOTIFY_`` or from an optional
``KEY=value`` file (``.env`` in the working directory, or the file named by ``--env-file``).
Entry points (CLI, app factory, worker) build :class:`Settings` once and pass it down.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from crm_notify.errors import ConfigurationError

#: Prefix of every environment variable crm-notify reads.
ENV_PREFIX = "CRM_NOTIFY_"

#: Accepted spellings of boolean URL options.
BOOLEAN_VALUES = frozenset({"1", "0", "true", "false", "yes", "no", "on", "off"})

#: What a purpose name must look like.
PURPOSE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")

#: What the name of an ESP in ``CRM_NOTIFY_ESPS`` must look like (it is part of a URL path).
ESP_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

#: ESP URL schemes of providers with an HTTP API (``<provider>://KEY@[host][/path][?options]``).
API_SCHEMES = frozenset({"sendgrid", "brevo", "mandrill", "postmark", "mailgun", "ses"})
#: ESP URL schemes this release can deliver through.
ESP_SCHEMES = frozenset({"smtp", "smtps", "file", "console", *API_SCHEMES})
#: The query options each ESP URL scheme takes.
ESP_OPTIONS: dict[str, frozenset[str]] = {
    "smtp": frozenset({"timeout", "starttls", "verify"}),
    "smtps": frozenset({"timeout", "starttls", "verify"}),
    **{scheme: frozenset({"timeout", "insecure"}) for scheme in API_SCHEMES},
    "sendgrid": frozenset({"timeout", "insecure", "region"}),
    "postmark": frozenset({"timeout", "insecure", "stream"}),
    "mailgun": frozenset({"timeout", "insecure", "region"}),
    "ses": frozenset({"timeout", "insecure", "region", "configuration_set"}),
}


#: URL schemes of the brokers (Dramatiq's Redis and RabbitMQ brokers).
BROKER_SCHEMES = frozenset({"redis", "rediss", "unix", "amqp", "amqps"})


class Settings(BaseSettings):
    """Validated configuration of one crm-notify process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = Field(
        "sqlite:///var/crm-notify.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql://user@host/db.",
    )
    redis_url: str | None = Field(
        None, description="Redis for the Dramatiq broker; unset runs the actors in-process."
    )
    broker_url: str | None = Field(
        None,
        description="The Dramatiq broker: redis://... or amqp://... (RabbitMQ); unset: "
        "CRM_NOTIFY_REDIS_URL, and without that the actors run in-process.",
    )
    queue_name: str = Field(
        "crm_notify",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The broker queue crm-notify's workers consume.",
    )
    redis_namespace: str = Field(
        "crm-notify", min_length=1, max_length=64, description="Prefix of crm-notify's Redis keys."
    )
    rules_dir: Path = Field(Path("rules"), description="Folder of YAML rule files.")
    templates_dir: Path = Field(Path("templates"), description="Folder of email templates.")
    esp_url: str = Field(
        "file:var/outbox",
        description="Where mail goes: smtp://user:pass@host:port?starttls=1, sendgrid://KEY@, "
        "brevo://KEY@, mandrill://KEY@, postmark://TOKEN@, mailgun://api:KEY@/DOMAIN?region=eu, "
        "ses://ACCESS:SECRET@?region=eu-west-1, file:///dir, console:",
    )
    var_dir: Path = Field(Path("var"), description="Folder for the embedded database and outbox.")
    mail_from: str = Field(
        "crm-notify <notifications@localhost>", description="From header of outgoing mail."
    )
    default_language: str = Field("en", description="Template language when a contact has none.")
    host: str = Field("127.0.0.1", description="Address `crm-notify serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `crm-notify serve` listens on.")
    worker_threads: int = Field(4, ge=1, le=64, description="Delivery threads per process.")
    relay_interval_s: float = Field(
        5.0, gt=0, description="Seconds between passes re-enqueuing notifications left pending."
    )
    scheduler_interval: float = Field(
        5.0, gt=0, le=3600, description="Seconds between scheduler passes over due timers."
    )
    sending_lease_s: float = Field(
        600.0, gt=0, description="Seconds after which a send that never finished is retried."
    )
    max_delivery_attempts: int = Field(
        60,
        ge=1,
        le=1000,
        description="Attempts before a transient failure becomes failed (dead-lettered); the "
        "default covers DELIVERY_MAX_AGE 24h (at most ~57 attempts with the 1 h backoff cap).",
    )
    delivery_max_age: timedelta = Field(
        timedelta(hours=24),
        description="How long a notification may keep failing transiently, from its first "
        "attempt, before it is dead-lettered (failed): a duration such as 24h, 90m, 2d.",
    )
    public_url: str | None = Field(
        None,
        description="The service's public base URL, for unsubscribe links "
        "(default http://HOST:PORT).",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Signs unsubscribe links (32+ characters); unset: generated once in "
        "VAR_DIR/secret_key. Every process of one deployment needs the same key.",
    )
    purposes: str = Field(
        "transactional,marketing",
        description="Comma-separated purposes rules may name; transactional and marketing are "
        "always there. Every purpose but transactional needs granted consent.",
    )
    consent_categories: dict[str, str] = Field(
        default_factory=lambda: {"marketing": "marketing"},
        description="JSON: Segment context.consent.categoryPreferences category -> purpose "
        "(categories match in any case).",
    )
    consent_traits: dict[str, str] = Field(
        default_factory=lambda: {"marketing_consent": "marketing"},
        description="JSON: identify trait (true/false) -> purpose it grants or withdraws.",
    )
    quiet_hours: str = Field(
        "21:00-08:00",
        description="HH:MM-HH:MM in the contact's time zone when non-transactional mail waits; "
        "empty turns quiet hours off.",
    )
    default_timezone: str = Field(
        "UTC", description="Time zone of contacts whose traits give none (IANA name)."
    )
    marketing_limit: str = Field(
        "",
        description="At most N non-transactional sends per contact per window, e.g. 3/24h; "
        "empty: no global cap.",
    )
    esp_rate: float | None = Field(
        None, gt=0, description="Messages per second handed to the ESP, across all workers."
    )
    retention_days: int = Field(
        365, ge=1, description="`gdpr purge` deletes events and rendered bodies older than this."
    )
    esps: dict[str, str] = Field(
        default_factory=dict,
        description='JSON, in failover order: ESP name -> URL, e.g. {"primary": '
        '"sendgrid://${SENDGRID_API_KEY}@", "backup": "smtp://mail.example.com:587"}; '
        "${NAME} is read from the environment. Set, it replaces CRM_NOTIFY_ESP_URL.",
    )
    esp_failover_threshold: int = Field(
        5, ge=1, description="Transient failures in a row after which an ESP is skipped."
    )
    esp_failover_cooldown_s: float = Field(
        60.0, gt=0, description="Seconds a skipped ESP rests before it is tried again."
    )
    webhook_tolerance_s: float = Field(
        300.0,
        ge=0,
        description="Largest age of a signed tracking-webhook call (SendGrid, Mailgun); "
        "0 turns the age check off (replaying captured events).",
    )
    sendgrid_webhook_public_key: str | None = Field(
        None, description="SendGrid Signed Event Webhook verification key (base64)."
    )
    mailgun_webhook_signing_key: SecretStr | None = Field(
        None, description="Mailgun HTTP webhook signing key."
    )
    mandrill_webhook_key: SecretStr | None = Field(
        None, description="Mailchimp Transactional (Mandrill) webhook authentication key."
    )
    mandrill_webhook_url: str | None = Field(
        None,
        description="The webhook URL exactly as entered in Mandrill (it is signed); default "
        "PUBLIC_URL/v1/webhooks/esp/mandrill.",
    )
    postmark_webhook_auth: SecretStr | None = Field(
        None, description="user:password that Postmark sends as HTTP Basic auth."
    )
    brevo_webhook_auth: SecretStr | None = Field(
        None, description="user:password that Brevo sends as HTTP Basic auth."
    )
    brevo_webhook_token: SecretStr | None = Field(
        None, description="Bearer token that Brevo sends in the Authorization header."
    )
    ses_webhook_topic_arns: str | None = Field(
        None, description="Comma-separated SNS topic ARNs whose SES notifications are accepted."
    )
    sns_certificate_hosts: str = Field(
        "aws",
        description="Where SNS signing certificates may come from: `aws` (Amazon SNS in every "
        "region, sns.<region>.amazonaws.com[.cn]) and/or host[:port] patterns (`*` within one "
        "DNS label), comma-separated.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks signing secret (whsec_ + base64 of 24-64 bytes) of rule "
        "webhook actions without their own `secret:`; unset: those are sent unsigned.",
    )
    webhooks_file: Path | None = Field(
        None,
        description="YAML file of webhook subscriptions (see docs/webhooks.md); unset: "
        "subscriptions are managed through the API and `crm-notify webhooks` only.",
    )
    webhook_dispatch_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds between passes sending webhook subscriptions' deliveries.",
    )
    outbound_allow_networks: str = Field(
        "",
        description="Networks that requests to other tools (webhook actions and subscriptions, "
        "send gates, fetch steps) may reach although they are not public, comma-separated: "
        "`10.0.0.0/8`, `127.0.0.1`, `loopback`, `private`; unset: public addresses only.",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="When set, GET /metrics needs `Authorization: Bearer <token>`; unset: "
        "/metrics is open (restrict it at the proxy).",
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme.split("+")[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError("must start with sqlite:// or postgresql://")
        if scheme == "postgres":
            value = "postgresql" + value[len("postgres") :]
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value[len("postgresql://") :]
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if urlsplit(value).scheme not in BROKER_SCHEMES:
            raise ValueError("must start with redis://, rediss://, unix://, amqp:// or amqps://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("esp_url")
    @classmethod
    def _check_esp_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ESP_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(sorted(ESP_SCHEMES))}")
        if parts.scheme in {"smtp", "smtps"} and not parts.hostname:
            raise ValueError("an smtp URL needs a host, e.g. smtp://user:pass@mail.example:587")
        if parts.scheme in API_SCHEMES and not (parts.username or parts.password):
            raise ValueError(
                f"a {parts.scheme} URL needs the API key, e.g. {parts.scheme}://KEY@ "
                "(URL-encode it; keep it in the environment, not in a file under version control)"
            )
        try:
            parts.port  # noqa: B018 - urlsplit checks the port lazily
        except ValueError as exc:
            raise ValueError(f"invalid port: {exc}") from exc
        known = ESP_OPTIONS.get(parts.scheme, frozenset())
        for name, values in parse_qs(parts.query).items():
            if name not in known:
                listed = ", ".join(sorted(known)) or "none"
                raise ValueError(f"unknown option {name!r} (known for {parts.scheme}: {listed})")
            if name == "timeout":
                try:
                    timeout = float(values[-1])
                except ValueError:
                    timeout = -1.0
                if not 0 < timeout <= 600:
                    raise ValueError("timeout must be a number of seconds between 0 and 600")
            elif (
                name in {"starttls", "verify", "insecure"}
                and values[-1].strip().lower() not in BOOLEAN_VALUES
            ):
                raise ValueError(f"{name} must be 1/0, true/false, yes/no or on/off")
        if parts.scheme in API_SCHEMES:
            from crm_notify.esp.http import parse_esp_url

            try:
                parse_esp_url(value)
            except ConfigurationError as exc:
                raise ValueError(str(exc).removeprefix("CRM_NOTIFY_ESP_URL: ")) from exc
        return value

    @field_validator("purposes")
    @classmethod
    def _check_purposes(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        for name in names:
            if not PURPOSE_PATTERN.fullmatch(name):
                raise ValueError(f"purpose {name!r} must match {PURPOSE_PATTERN.pattern}")
        return ",".join(dict.fromkeys(["transactional", "marketing", *names]))

    @field_validator("outbound_allow_networks")
    @classmethod
    def _check_outbound_allow_networks(cls, value: str) -> str:
        from crm_notify._net import OutboundPolicy

        OutboundPolicy.parse(value)  # ValueError names the entry
        return value

    @field_validator("esps")
    @classmethod
    def _check_esps(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not ESP_NAME_PATTERN.fullmatch(name):
                raise ValueError(f"ESP name {name!r} must be lowercase letters, digits, '-' or '_'")
            scheme = urlsplit(url).scheme
            if scheme not in ESP_SCHEMES:
                raise ValueError(f"{name}: scheme must be one of {', '.join(sorted(ESP_SCHEMES))}")
        return value

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. https://notify.shop.example")
        return value.rstrip("/")

    @field_validator("quiet_hours")
    @classmethod
    def _check_quiet_hours(cls, value: str) -> str:
        from crm_notify.rules.model import parse_quiet_hours

        parse_quiet_hours(value)  # ValueError says what is wrong
        return value.strip()

    @field_validator("marketing_limit")
    @classmethod
    def _check_marketing_limit(cls, value: str) -> str:
        from crm_notify.rules.model import parse_limit

        if value.strip():
            parse_limit(value)  # ValueError says what is wrong
        return value.strip()

    @field_validator("delivery_max_age", mode="before")
    @classmethod
    def _check_delivery_max_age(cls, value: Any) -> Any:
        from crm_notify.rules.durations import parse_duration

        if isinstance(value, str):
            value = parse_duration(value.strip())  # ValueError says what is wrong
        if isinstance(value, timedelta) and value <= timedelta(0):
            raise ValueError("must be a positive duration, e.g. 24h, 90m, 2d")
        return value

    @field_validator("default_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as Europe/Warsaw)"
            ) from exc
        return value

    @model_validator(mode="after")
    def _check_consent_purposes(self) -> Settings:
        for name, mapping in (
            ("consent_categories", self.consent_categories),
            ("consent_traits", self.consent_traits),
        ):
            for key, purpose in mapping.items():
                if purpose not in self.purpose_names or purpose == "transactional":
                    raise ValueError(
                        f"{ENV_PREFIX}{name.upper()}: {key!r} maps to {purpose!r}, which is not "
                        f"a purpose needing consent (configured: {self.purposes}; add it to "
                        f"{ENV_PREFIX}PURPOSES)"
                    )
        return self

    @property
    def purpose_names(self) -> tuple[str, ...]:
        """Every purpose rules may name."""
        return tuple(self.purposes.split(","))

    @property
    def base_url(self) -> str:
        """The service's public base URL (``public_url``, or ``http://host:port``)."""
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is the embedded SQLite default."""
        return self.database_url.startswith("sqlite")

    @property
    def broker(self) -> str | None:
        """The broker's URL: ``CRM_NOTIFY_BROKER_URL``, else ``CRM_NOTIFY_REDIS_URL``, else
        ``None`` (in-process)."""
        return self.broker_url or self.redis_url

    @property
    def broker_kind(self) -> str:
        """``rabbitmq``, ``redis`` or ``embedded``."""
        if self.broker is None:
            return "embedded"
        return "rabbitmq" if urlsplit(self.broker).scheme.startswith("amqp") else "redis"

    @property
    def embedded_broker(self) -> bool:
        """Whether actors run in-process (no broker configured)."""
        return self.broker is None


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment, an optional file and explicit overrides.

    Parameters:
        env_file: a ``KEY=value`` file read in addition to the environment; ``None`` reads
            ``.env`` when present.
        overrides: values that win over both (used by tests and CLI options).

    Raises:
        ConfigurationError: naming each invalid variable and why.
    """
    if env_file is not None and not env_file.is_file():
        raise ConfigurationError(f"settings file {env_file} does not exist")
    try:
        if env_file is not None:
            return Settings(_env_file=env_file, **overrides)
        return Settings(**overrides)
    except SettingsError as exc:
        # A JSON setting (CRM_NOTIFY_CONSENT_CATEGORIES, ...) that is not JSON.
        raise ConfigurationError(f"invalid settings: {exc} (it must be a JSON object)") from exc
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if not error["loc"]:  # a check across settings names its variables itself
                problems.append(message)
                continue
            first, *rest = [str(part) for part in error["loc"]]
            where = f" ({'.'.join(rest)})" if rest else ""
            problems.append(f"{ENV_PREFIX}{first.upper()}{where}: {message}")
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(problems)) from exc
