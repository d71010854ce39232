"""The runtime: every long-lived part of a crm-notify process, built once from Settings."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dramatiq
import redis
from sqlalchemy.engine import Engine

from crm_notify._net import OutboundPolicy
from crm_notify.actions.sender import WebhookActionSender
from crm_notify.config import Settings
from crm_notify.db import make_engine, session_scope
from crm_notify.errors import ConfigurationError
from crm_notify.esp.base import EspAdapter
from crm_notify.esp.factory import adapter_from_url, configured_esps, esp_providers
from crm_notify.esp.failover import EspChain
from crm_notify.esp.rate_limited import (
    LocalSendRateLimiter,
    RateLimitedAdapter,
    RedisSendRateLimiter,
    SendRateLimiter,
)
from crm_notify.fetch.runner import FetchRunner
from crm_notify.gates.hold import GateHold
from crm_notify.gates.notify import GateNotifier
from crm_notify.gates.runner import GateRunner
from crm_notify.guards import SendPolicy
from crm_notify.intake import Intake
from crm_notify.lifecycle.relay import LifecycleRelay
from crm_notify.outbox import repository
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.relay import Relay
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.loader import load_rules
from crm_notify.subscriptions.dispatcher import SubscriptionDispatcher
from crm_notify.subscriptions.file import FileSubscription, load_file, sync_file_into
from crm_notify.subscriptions.sender import SubscriptionSender
from crm_notify.timers.firing import TimerFiring
from crm_notify.timers.scheduler import Scheduler
from crm_notify.unsubscribe.links import UnsubscribeLinks
from crm_notify.unsubscribe.tokens import load_secret_key
from crm_notify.worker.actors import Actors, declare_actors
from crm_notify.worker.broker import build_broker

logger = logging.getLogger(__name__)


def rate_limited(adapter: EspAdapter, settings: Settings) -> EspAdapter:
    """``adapter`` held to ``CRM_NOTIFY_ESP_RATE`` messages per second: across every process
    through Redis when one is configured, else within this process."""
    if settings.esp_rate is None:
        return adapter
    limiter: SendRateLimiter
    if settings.redis_url:
        limiter = RedisSendRateLimiter(
            redis.Redis.from_url(settings.redis_url),
            f"{settings.redis_namespace}:esp-rate:{adapter.name}",
            settings.esp_rate,
        )
    else:
        limiter = LocalSendRateLimiter(settings.esp_rate)
    return RateLimitedAdapter(adapter, rate_per_s=settings.esp_rate, limiter=limiter)


def build_esp_chain(settings: Settings) -> EspChain:
    """The configured ESPs in failover order, each held to ``CRM_NOTIFY_ESP_RATE``.

    Raises:
        ConfigurationError: an ESP URL cannot be used (its name is in the message).
    """
    esps = []
    for name, url in configured_esps(settings).items():
        try:
            adapter = adapter_from_url(url, base_dir=Path.cwd())
        except ConfigurationError as exc:
            where = f"CRM_NOTIFY_ESPS[{name}]" if settings.esps else "CRM_NOTIFY_ESP_URL"
            reason = str(exc).removeprefix("CRM_NOTIFY_ESP_URL: ")
            raise ConfigurationError(f"{where}: {reason}") from exc
        esps.append((name, rate_limited(adapter, settings)))
    return EspChain(
        esps,
        threshold=settings.esp_failover_threshold,
        cooldown_s=settings.esp_failover_cooldown_s,
    )


@dataclass
class Runtime:
    """Engine, rules, templates, ESPs, broker and services of one process."""

    settings: Settings
    engine: Engine
    rules: RuleSet
    templates: TemplateStore
    esps: EspChain
    broker: dramatiq.Broker
    policy: SendPolicy
    secret_key: bytes
    unsubscribe_links: UnsubscribeLinks = field(init=False)
    actors: Actors = field(init=False)
    intake: Intake = field(init=False)
    delivery: DeliveryService = field(init=False)
    webhooks: WebhookActionSender = field(init=False)
    fetcher: FetchRunner = field(init=False)
    relay: Relay = field(init=False)
    scheduler: Scheduler = field(init=False)
    gate_notifier: GateNotifier = field(init=False)
    gate_runner: GateRunner = field(init=False)
    lifecycle: LifecycleRelay = field(init=False)
    subscription_sender: SubscriptionSender = field(init=False)
    subscriptions: SubscriptionDispatcher = field(init=False)
    subscriptions_file: list[FileSubscription] | None = None
    _worker: dramatiq.Worker | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.unsubscribe_links = UnsubscribeLinks(
            base_url=self.settings.base_url, secret_key=self.secret_key
        )
        # Webhook actions read their ${NAME} references from the process environment.
        self.webhooks = WebhookActionSender.from_settings(
            self.settings, rules=self.rules, environ=os.environ
        )
        # Fetch steps: ${NAME} references from the process environment, answers cached in Redis
        # (when configured) or the database, addresses as CRM_NOTIFY_OUTBOUND_ALLOW_NETWORKS says.
        self.fetcher = FetchRunner.from_settings(
            self.settings, engine=self.engine, environ=os.environ
        )
        self.delivery = DeliveryService(
            engine=self.engine,
            templates=self.templates,
            esps=self.esps,
            mail_from=self.settings.mail_from,
            max_attempts=self.settings.max_delivery_attempts,
            max_age=self.settings.delivery_max_age,
            schedule_retry=lambda nid, delay: self.actors.schedule_delivery(nid, delay),
            policy=self.policy,
            unsubscribe=self.unsubscribe_links,
            webhooks=self.webhooks,
            rules=self.rules,
            fetcher=self.fetcher,
        )
        self.actors = declare_actors(
            self.broker, deliver=self.delivery.deliver, queue_name=self.settings.queue_name
        )
        # Send gates: the integration's ${NAME} credentials come from the process environment.
        self.gate_notifier = GateNotifier.from_settings(
            self.settings, secret_key=self.secret_key, environ=os.environ
        )
        self.gate_runner = GateRunner(
            engine=self.engine,
            notifier=self.gate_notifier,
            enqueue=self.enqueue,
            interval_s=self.settings.scheduler_interval,
        )
        hold = GateHold(self.rules, opened=self.gate_runner.wake)
        self.intake = Intake(
            engine=self.engine,
            rules=self.rules,
            policy=self.policy,
            enqueue=self.enqueue,
            consent_categories=self.settings.consent_categories,
            consent_traits=self.settings.consent_traits,
            hold=hold,
        )
        self.scheduler = Scheduler(
            engine=self.engine,
            fire=TimerFiring(rules=self.rules, policy=self.policy),
            enqueue=self.enqueue,
            interval_s=self.settings.scheduler_interval,
            hold=hold,
        )
        self.lifecycle = LifecycleRelay(
            engine=self.engine,
            ingest=self.intake.ingest,
            interval_s=self.settings.scheduler_interval,
        )
        # Webhook subscriptions: file entries' ${NAME} secrets come from the process environment.
        self.subscription_sender = SubscriptionSender(
            environ=os.environ, policy=OutboundPolicy.from_settings(self.settings)
        )
        self.subscriptions = SubscriptionDispatcher(
            engine=self.engine,
            sender=self.subscription_sender,
            interval_s=self.settings.webhook_dispatch_interval_s,
        )
        self.relay = Relay(
            engine=self.engine,
            enqueue=self.enqueue,
            interval_s=self.settings.relay_interval_s,
            lease_s=self.settings.sending_lease_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, engine: Engine | None = None) -> Runtime:
        """Build the runtime; loads and validates every rule and template reference.

        Raises:
            RuleFileError: a rule file is invalid (the process must not start).
            ConfigurationError: a setting cannot be used.
        """
        templates = TemplateStore(
            settings.templates_dir, default_language=settings.default_language
        )
        rules = load_rules(
            settings.rules_dir,
            template_exists=templates.exists,
            purposes=settings.purpose_names,
            environ=os.environ,  # every ${NAME} a webhook action references must be set
        )
        return cls(
            settings=settings,
            engine=engine or make_engine(settings.database_url),
            rules=rules,
            templates=templates,
            esps=build_esp_chain(settings),
            broker=build_broker(settings),
            policy=SendPolicy.from_settings(settings),
            secret_key=load_secret_key(settings),
            subscriptions_file=(
                load_file(settings.webhooks_file, environ=os.environ)
                if settings.webhooks_file is not None
                else None
            ),
        )

    @property
    def esp_providers(self) -> dict[str, str]:
        """ESP name -> provider of the configured ESPs (tracking webhooks answer both)."""
        return esp_providers(configured_esps(self.settings))

    def enqueue(self, notification_ids: Sequence[int]) -> None:
        """Hand notifications to the broker, then mark them ``queued``.

        With the in-process broker but no delivery threads running in this process (the CLI,
        the Python API), they are delivered right here instead: an in-memory queue that no
        thread consumes would only delay them until the service's relay found them.
        """
        if self.settings.embedded_broker and self._worker is None:
            for notification_id in notification_ids:
                self.delivery.deliver(notification_id)
            return
        self.actors.enqueue_deliveries(notification_ids)
        with session_scope(self.engine) as session:
            repository.mark_queued(session=session, notification_ids=notification_ids)

    def start_background(self, *, scheduler: bool = True) -> None:
        """Start the relay, the scheduler, the gate runner and the lifecycle relay, and with the
        in-process broker also the delivery threads.

        With the in-process broker, every unfinished notification is requeued first: the
        previous process's in-memory queue is gone.
        """
        if self.settings.embedded_broker:
            self._worker = dramatiq.Worker(
                self.broker, worker_threads=self.settings.worker_threads, worker_timeout=100
            )
            self._worker.start()
            requeued = self.relay.requeue_all_undelivered()
            if requeued:
                logger.info("requeued %d unfinished notifications at start-up", requeued)
        self.relay.start()
        if scheduler:
            self.scheduler.start()
            self.gate_runner.start()
            self.start_lifecycle()

    def start_lifecycle(self) -> None:
        """Sync the subscriptions file, then start the lifecycle relay and the dispatcher of
        webhook subscriptions."""
        self.sync_subscriptions()
        self.lifecycle.start()
        self.subscriptions.start()

    def sync_subscriptions(self) -> dict[str, int] | None:
        """Sync the subscriptions file into the database (``None``: no file configured).

        Raises:
            SubscriptionError: a name in the file is an API subscription's.
        """
        if self.subscriptions_file is None:
            return None
        counts = sync_file_into(self.engine, self.subscriptions_file)
        logger.info("webhook subscriptions file synced: %s", counts)
        return counts

    def close(self) -> None:
        """Stop background threads and release connections."""
        self.scheduler.stop()
        self.gate_runner.stop()
        self.lifecycle.stop()
        self.subscriptions.stop()
        self.relay.stop()
        if self._worker is not None:
            self._worker.stop(timeout=30_000)
            self._worker = None
        self.broker.close()
        self.esps.close()
        self.webhooks.close()
        self.fetcher.close()
        self.gate_notifier.close()
        self.engine.dispose()
