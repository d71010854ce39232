"""Delivering one notification: claim, check the guards again, render once, hand to the ESP,
record the outcome.

Called by the ``deliver_notification`` actor with a notification id. Safe to call any number of
times for the same id: only a claimable row is worked on, and a sent row is never sent again.

Every attempt re-checks the guards that run at delivery (consent, suppression), so a withdrawal
or a bounce since the decision cancels the send. Non-transactional mail gets signed
``unsubscribe_url`` / ``preferences_url`` template variables and the ``List-Unsubscribe`` and
``List-Unsubscribe-Post`` headers (RFC 2369, RFC 8058). A recipient the provider refuses as
nonexistent (SMTP 550, 551 or 553 on RCPT) is put on the suppression list.

An email of a rule with ``fetch`` steps is rendered after their requests
(:mod:`crm_notify.fetch`): the claim is committed first, so no transaction stays open while a
service answers, and the message is stored with the data it was rendered with; a retry sends
it as is, never fetching again. A step that fails cancels the email (``skip``) or defers it
(``defer``: until ``retry_after``, within the step's ``not_after`` and ``max_age``).
"""

from __future__ import annotations

import email
import email.policy
import logging
import random
import re
import smtplib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from email.utils import parseaddr
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from crm_notify.actions.model import WEBHOOK_CHANNEL
from crm_notify.actions.sender import WebhookActionSender, deliver_webhook
from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.errors import (
    EspPermanentError,
    EspTransientError,
    EventValidationError,
    RenderError,
)
from crm_notify.esp.base import EspAdapter
from crm_notify.esp.failover import EspChain
from crm_notify.fetch.model import STORED_KEY, FetchStep
from crm_notify.fetch.outcomes import FetchOutcome, FetchResult
from crm_notify.fetch.record import log_results, retry_deadline
from crm_notify.fetch.runner import FetchRunner
from crm_notify.guards.base import SendAttempt, Verdict
from crm_notify.guards.policy import SendPolicy
from crm_notify.guards.suppression import suppress
from crm_notify.outbox import repository
from crm_notify.outbox.models import DecisionOutcome, Notification
from crm_notify.render.mime import build_message, make_message_id
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.durations import format_duration
from crm_notify.rules.engine import RuleSet
from crm_notify.unsubscribe.headers import list_unsubscribe_headers, plain_list_unsubscribe
from crm_notify.unsubscribe.links import UnsubscribeLinks
from crm_notify.worker.broker import DELIVERY_TIME_LIMIT_MS

logger = logging.getLogger(__name__)

#: First backoff step: after failed attempt n (1-based) the step is ``RETRY_BASE * 2**(n-1)``,
#: capped at ``RETRY_CAP``; :func:`retry_backoff` draws the delay from [step/2, step].
RETRY_BASE = timedelta(seconds=10)
#: Largest backoff step: a long outage is retried every 30 to 60 minutes.
RETRY_CAP = timedelta(hours=1)
#: How long a notification may keep failing transiently before it is dead-lettered (the
#: default of ``CRM_NOTIFY_DELIVERY_MAX_AGE``).
DEFAULT_MAX_AGE = timedelta(hours=24)
#: Source of the backoff jitter (not a secret: any uniform source would do).
_JITTER = random.SystemRandom()


def retry_backoff(
    attempt: int, *, uniform: Callable[[float, float], float] = _JITTER.uniform
) -> timedelta:
    """The delay before the retry that follows failed attempt ``attempt`` (1-based).

    Exponential backoff with "equal jitter": the step doubles from :data:`RETRY_BASE` per
    attempt up to :data:`RETRY_CAP`; the delay is half the step plus a uniformly random share
    of the other half. Retries never come sooner than half the step, and notifications that
    failed together (an ESP outage) spread out instead of retrying in lockstep.

    Parameters:
        attempt: how many attempts have been made (values below 1 count as 1).
        uniform: draws a float from [a, b] (tests pass a fixed one).

    Returns:
        A delay in [step / 2, step].
    """
    exponent = min(max(attempt, 1) - 1, 32)  # 2**32 * 10 s is far past the cap already
    step_s = min(RETRY_CAP.total_seconds(), RETRY_BASE.total_seconds() * 2**exponent)
    return timedelta(seconds=step_s / 2 + uniform(0.0, step_s / 2))


#: Seconds to wait between attempts to record a send the provider accepted.
MARK_SENT_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)
#: The longest one delivery may take: Dramatiq's time limit of a delivery, then the wait to
#: record it; ``CRM_NOTIFY_SENDING_LEASE_S`` should be longer (``crm-notify`` warns if not).
LONGEST_DELIVERY_S = DELIVERY_TIME_LIMIT_MS / 1000 + sum(MARK_SENT_RETRY_DELAYS_S)

#: Length of the ``subject`` column (the header itself is folded, not cut).
SUBJECT_COLUMN_CHARS = 998

#: SMTP replies to RCPT that say the mailbox does not exist (RFC 5321 4.2.3): a hard bounce.
HARD_BOUNCE_CODES = frozenset({550, 551, 553})
#: An enhanced status code (RFC 3463) in a reply; 5.7.x is a policy refusal, not a bad address.
_ENHANCED_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.\d{1,3}\b")


def _display_name(contact: dict[str, Any]) -> str | None:
    """The recipient's display name from contact data, or ``None``; only strings count."""
    name = contact.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    parts = [
        p.strip()
        for p in (contact.get("first_name"), contact.get("last_name"))
        if isinstance(p, str) and p.strip()
    ]
    return " ".join(parts) or None


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one call of :meth:`DeliveryService.deliver` did.

    ``status`` is ``skipped`` (not claimable), ``sent``, ``retrying``, ``failed`` or
    ``cancelled`` (the guards said no at delivery); ``retry_in`` is set for ``retrying``.
    """

    status: str
    retry_in: timedelta | None = None


class DeliveryService:
    """Delivers notifications by id.

    Parameters:
        engine: the database.
        templates: where templates are rendered from.
        adapter: the ESP adapter (when there is no failover list).
        esps: the ESPs in failover order (instead of ``adapter``).
        mail_from: the From header.
        max_attempts: attempts before a transient failure becomes ``failed``.
        max_age: how long after its first attempt a notification may still be retried
            before it is dead-lettered (``failed``).
        schedule_retry: called with (notification id, delay) after a transient failure.
        policy: the send policy; its delivery-time guards run before every attempt (``None``:
            no re-check, for tests of other stages).
        unsubscribe: builds the unsubscribe links of non-transactional mail (``None``: none,
            and templates that use ``unsubscribe_url`` fail to render).
        webhooks: sends the rows of rules' webhook actions (channel ``webhook``); ``None``:
            such rows fail, saying so.
        rules: the loaded rules: each attempt of a send a gate held checks the rule's
            quiet hours (``None``: the configured window, by purpose), and the first attempt
            of an email runs the rule's fetch steps.
        fetcher: makes the requests of fetch steps; ``None``: emails of rules with fetch
            steps fail, saying so.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        templates: TemplateStore,
        adapter: EspAdapter | None = None,
        esps: EspChain | None = None,
        mail_from: str,
        max_attempts: int,
        schedule_retry: Callable[[int, timedelta], None] | None = None,
        policy: SendPolicy | None = None,
        unsubscribe: UnsubscribeLinks | None = None,
        max_age: timedelta = DEFAULT_MAX_AGE,
        webhooks: WebhookActionSender | None = None,
        rules: RuleSet | None = None,
        fetcher: FetchRunner | None = None,
    ) -> None:
        self._engine = engine
        self._fetcher = fetcher
        self._rules = rules
        self._templates = templates
        if esps is None:
            if adapter is None:
                raise ValueError("DeliveryService needs an adapter or esps")
            esps = EspChain.single(adapter)
        self._esps = esps
        self._max_attempts = max_attempts
        self._max_age = max_age
        self._schedule_retry = schedule_retry
        self._policy = policy
        self._unsubscribe = unsubscribe
        self._webhooks = webhooks
        self._from_name, self._from_address = parseaddr(mail_from)
        self._domain = self._from_address.rpartition("@")[2] or "localhost"

    def deliver(self, notification_id: int) -> DeliveryOutcome:
        """Attempt delivery of one notification; see the module docstring."""
        with session_scope(self._engine) as session:
            row = repository.claim_for_delivery(session=session, notification_id=notification_id)
            if row is None:
                return DeliveryOutcome("skipped")
            # the claim has just read the row (and holds it): its recipient is current
            refused = self._recheck(session, row, to_address=row.to_address)
            if refused is not None:
                return refused
            if row.channel == WEBHOOK_CHANNEL:  # a rule's webhook action: crm_notify/actions
                try:
                    return DeliveryOutcome(deliver_webhook(self._webhooks, session, row))
                except EspTransientError as exc:  # committed: retried as an ESP's would be
                    return self._after_transient(notification_id, row.attempts, exc)
                except Exception as exc:  # unforeseen: retried, so it ends dead-lettered
                    logger.exception("webhook action %s failed unexpectedly", notification_id)
                    error = EspTransientError("webhook", f"unexpected {type(exc).__name__}")
                    return self._after_transient(notification_id, row.attempts, error)
            text, attempts, pinned = row.message, row.attempts, row.esp
            steps = self._fetch_steps(row) if text is None else ()
            if text is None and not steps:
                try:
                    rendered = self._render(row)
                except Exception as exc:  # any failure to build the message is permanent
                    session.expire(row)
                    return _render_failed(session, notification_id, exc)
                repository.store_message(
                    session=session, notification_id=notification_id, **rendered
                )
                text = rendered["message"]
        if steps:  # the claim is committed: no transaction stays open while services answer
            fetched = self._fetch_and_render(row, steps)
            if isinstance(fetched, DeliveryOutcome):
                return fetched
            text = fetched
        assert text is not None
        try:
            result = self._esps.send_text(text, pinned=pinned)
        except EspTransientError as exc:
            if exc.maybe_accepted:
                self._pin(notification_id, exc.esp)
            return self._after_transient(notification_id, attempts, exc)
        except EspPermanentError as exc:
            with session_scope(self._engine) as session:
                repository.mark_failed(
                    session=session, notification_id=notification_id, error=str(exc)
                )
                bounce = _hard_bounce(exc)
                if bounce is not None:
                    _suppress_bounced(session, notification_id, bounce)
            logger.warning(
                "notification %s rejected permanently by %s (status %s)",
                notification_id,
                exc.esp,
                exc.status_code,
            )
            return DeliveryOutcome("failed")
        self._record_sent(notification_id, result.esp, result.provider_message_id)
        return DeliveryOutcome("sent")

    def _recheck(
        self, session: Session, row: Notification, *, to_address: str | None
    ) -> DeliveryOutcome | None:
        """Run the delivery-time guards on a claimed row; the outcome when they say no.
        ``to_address``: the row's recipient as read in this transaction, or ``None`` when
        ``row`` was read in an earlier one (the suppression guard reads it again)."""
        if self._policy is None:
            return None
        contact = session.get(Contact, row.contact_id) if row.contact_id is not None else None
        if contact is None:  # erased since: nobody left whose consent could be checked
            assert row.id is not None
            repository.mark_cancelled(
                session=session, notification=row, reason="the contact no longer exists"
            )
            return DeliveryOutcome("cancelled")
        # A send a gate held goes out later than decided: quiet hours are checked again, at
        # every attempt (a retry, or an attempt after a worker died, may fall in the night).
        released = row.gate_id is not None
        attempt = SendAttempt(
            rule_name=row.rule,
            purpose=row.purpose,
            contact=contact,
            moment=now(),
            rule=self._rules.by_name(row.rule) if released and self._rules else None,
            at_delivery=True,
            released=released,
            notification_id=row.id,
            to_address=to_address,
        )
        verdict = self._policy.check(session, attempt)
        if verdict.allows:
            return None
        assert row.id is not None
        if verdict.outcome == DecisionOutcome.DEFER and verdict.until is not None:
            repository.mark_deferred(
                session=session, notification=row, verdict=verdict, until=verdict.until
            )
            delay = max(verdict.until - now(), timedelta(0))
            if self._schedule_retry is not None:
                self._schedule_retry(row.id, delay)
            return DeliveryOutcome("retrying", retry_in=delay)
        repository.mark_cancelled(
            session=session, notification=row, reason=verdict.reason, details=verdict.details
        )
        logger.info("notification %s cancelled at delivery (%s)", row.id, verdict.reason)
        return DeliveryOutcome("cancelled")

    def _fetch_steps(self, row: Notification) -> tuple[FetchStep, ...]:
        """The fetch steps to run before rendering ``row``: its rule's, for one of the rule's
        step emails (not a digest, nor a webhook action)."""
        rule = self._rules.by_name(row.rule) if self._rules is not None else None
        if rule is None or row.channel == WEBHOOK_CHANNEL or "digest" in row.context:
            return ()
        return rule.fetch

    def _fetch_and_render(
        self, row: Notification, steps: Sequence[FetchStep]
    ) -> DeliveryOutcome | str:
        """Run ``steps`` for claimed ``row`` (no transaction open), then, in a new one, record
        their outcomes and render and store the message; return it, or what stopped it."""
        assert row.id is not None
        notification_id = row.id
        if self._fetcher is None:
            with session_scope(self._engine) as session:
                error = "fetch steps are not set up in this process (no fetcher configured)"
                repository.mark_failed(session=session, notification_id=row.id, error=error)
            return DeliveryOutcome("failed")
        context = {**row.context, "gate": row.gate_data or {}}
        try:
            run = self._fetcher.run(steps, context, rule=row.rule)
        except Exception as exc:  # unforeseen: retried, so it ends dead-lettered
            logger.exception("notification %s: fetch steps failed unexpectedly", row.id)
            unforeseen = EspTransientError("fetch", f"unexpected {type(exc).__name__}")
            return self._after_transient(notification_id, row.attempts, unforeseen)
        with session_scope(self._engine) as session:
            if not repository.still_claimed(
                session=session, notification_id=notification_id, attempts=row.attempts
            ):
                logger.warning("notification %s was claimed again during its fetch", row.id)
                return DeliveryOutcome("skipped")
            # consent or suppression may have changed while the services answered; ``row``
            # was read in the claim's transaction, so the guard reads the address again
            refused = self._recheck(session, row, to_address=None)
            if refused is not None:
                log_results(session, row, run.results)
                return refused
            stopped = run.stopped
            rendered: dict[str, str] | None = None
            if stopped is None:
                try:
                    rendered = self._render(row, fetched=run.data)
                except Exception as exc:  # an answer of another shape: its fallback, if any
                    fallen = run.with_fallbacks(steps, f"the email did not render: {exc}"[:300])
                    if fallen is None:
                        log_results(session, row, run.results)
                        return _render_failed(session, notification_id, exc)
                    run = fallen
            log_results(session, row, [result for result in run.results if result is not stopped])
            if stopped is not None and stopped.outcome is FetchOutcome.DEFER:
                deferred = self._defer_fetch(session, row, stopped, steps)
                if deferred is not None:
                    return deferred
                stopped = replace(stopped, outcome=FetchOutcome.SKIP, note=_TOO_LATE)
            if stopped is not None:
                repository.mark_cancelled(
                    session=session,
                    notification=row,
                    reason=stopped.reason,
                    details=stopped.details(),
                )
                logger.info("notification %s cancelled: fetch %s failed", row.id, stopped.name)
                return DeliveryOutcome("cancelled")
            if rendered is None:
                try:
                    rendered = self._render(row, fetched=run.data)
                except Exception as exc:  # any failure to build the message is permanent
                    return _render_failed(session, notification_id, exc)
            repository.store_message(session=session, notification_id=notification_id, **rendered)
            context = {**row.context, STORED_KEY: run.data}
            repository.store_context(
                session=session, notification_id=notification_id, context=context
            )
            return rendered["message"]

    def _defer_fetch(
        self,
        session: Session,
        row: Notification,
        result: FetchResult,
        steps: Sequence[FetchStep],
    ) -> DeliveryOutcome | None:
        """Defer ``row`` by its failed step's ``retry_after``; ``None`` when that would pass
        the step's send window or the max age (the email is cancelled instead)."""
        assert row.id is not None and self._rules is not None
        rule = self._rules.by_name(row.rule)
        step = next(step for step in steps if step.name == result.name)
        assert rule is not None and step.retry_after is not None
        until = now() + step.retry_after
        if until > retry_deadline(session, row, rule, max_age=self._max_age):
            return None
        verdict = Verdict.defer(until, result.reason, **result.details())
        repository.mark_deferred(session=session, notification=row, verdict=verdict, until=until)
        if self._schedule_retry is not None:
            self._schedule_retry(row.id, step.retry_after)
        logger.info("notification %s deferred: fetch %s failed", row.id, result.name)
        return DeliveryOutcome("retrying", retry_in=step.retry_after)

    def _pin(self, notification_id: int, esp: str) -> None:
        """Tie a notification to ``esp``: it may have the message, so failover must not send
        it through another ESP."""
        # Losing this write could hand the message to a second ESP after the lease: a short
        # database outage is waited out, as for the sent status.
        for delay_s in (*MARK_SENT_RETRY_DELAYS_S, None):
            try:
                with session_scope(self._engine) as session:
                    repository.pin_esp(session=session, notification_id=notification_id, esp=esp)
                break
            except OperationalError:
                if delay_s is None:
                    raise
                time.sleep(delay_s)
        logger.warning(
            "notification %s: %s may have accepted it without answering; it is retried only there",
            notification_id,
            esp,
        )

    def _record_sent(self, notification_id: int, esp: str, esp_message_id: str | None) -> None:
        # The provider has the message now: losing this write would mean a second send after
        # the lease, so a short database outage is waited out here.
        for delay_s in (*MARK_SENT_RETRY_DELAYS_S, None):
            try:
                with session_scope(self._engine) as session:
                    repository.mark_sent(
                        session=session,
                        notification_id=notification_id,
                        esp=esp,
                        esp_message_id=esp_message_id,
                    )
                return
            except OperationalError:
                if delay_s is None:
                    logger.error(
                        "notification %s was sent but could not be marked sent; it may be "
                        "sent again after the lease",
                        notification_id,
                    )
                    raise
                time.sleep(delay_s)

    def _render(
        self, row: Notification, *, fetched: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """The message of ``row`` and the columns stored with it (see ``store_message``);
        ``fetched`` holds the data of the rule's fetch steps, by name."""
        context = dict(row.context)
        if row.gate_id is not None:  # what a send gate's integration attached on release
            context["gate"] = row.gate_data or {}
        context.update(fetched or {})
        headers = {"X-CRM-Notify-Id": str(row.id), "X-CRM-Notify-Rule": row.rule}
        links = self._unsubscribe.for_notification(row) if self._unsubscribe else None
        if links is not None:
            context["unsubscribe_url"], context["preferences_url"] = links
            headers.update(list_unsubscribe_headers(links[0]))
        rendered = self._templates.render(row.template, context, language=row.language)
        message_id = make_message_id(self._domain)
        contact = row.context.get("contact") or {}
        name = _display_name(contact)
        message = build_message(
            rendered,
            from_address=self._from_address,
            from_name=self._from_name or None,
            to_address=row.to_address,
            to_name=name,
            message_id=message_id,
            extra_headers=headers,
        )
        text = message.as_string(policy=email.policy.SMTP)
        if links is not None:
            text = plain_list_unsubscribe(text, f"<{links[0]}>")
        return {
            "message": text,
            "message_id": message_id,
            "subject": rendered.subject[:SUBJECT_COLUMN_CHARS],
            "language": rendered.language,
        }

    def _after_transient(
        self, notification_id: int, attempts: int, exc: EspTransientError
    ) -> DeliveryOutcome:
        """Schedule the retry of a transient failure (:func:`retry_backoff`, at least the
        provider's Retry-After), or dead-letter the notification (``failed``).

        It is dead-lettered after ``max_attempts`` attempts, or when ``max_age`` has passed
        since its first attempt. The last retry is moved forward to that moment, so no attempt
        starts later; a Retry-After reaching past it ends the retries at once.
        """
        moment = now()
        with session_scope(self._engine) as session:
            row = session.get(Notification, notification_id)
            started = (row.first_attempt_at if row is not None else None) or moment
            deadline = started + self._max_age
            at_least = timedelta(seconds=exc.retry_after_s or 0)
            limit = None
            if attempts >= self._max_attempts:
                limit = "the attempt limit"
            elif moment >= deadline or moment + at_least > deadline:
                limit = f"the max age of {format_duration(self._max_age)}"
            if limit is not None:
                elapsed = format_duration(
                    timedelta(seconds=round((moment - started).total_seconds()))
                )
                repository.mark_failed(
                    session=session,
                    notification_id=notification_id,
                    error=f"dead-lettered after {attempts} attempts in {elapsed} ({limit}): {exc}",
                )
                logger.warning(
                    "notification %s dead-lettered after %s attempts in %s (%s, status %s)",
                    notification_id,
                    attempts,
                    elapsed,
                    exc.esp,
                    exc.status_code,
                )
                return DeliveryOutcome("failed")
            delay = max(min(retry_backoff(attempts), deadline - moment), at_least)
            repository.mark_retrying(
                session=session,
                notification_id=notification_id,
                error=str(exc),
                next_attempt_at=moment + delay,
            )
        logger.info(
            "notification %s will be retried in %s (%s, status %s)",
            notification_id,
            delay,
            exc.esp,
            exc.status_code,
        )
        if self._schedule_retry is not None:
            self._schedule_retry(notification_id, delay)
        return DeliveryOutcome("retrying", retry_in=delay)


#: Why a fetch step that would defer its email cancels it instead.
_TOO_LATE = "a retry would come after the send window (not_after) or the max age"


def _render_failed(session: Session, notification_id: int, exc: Exception) -> DeliveryOutcome:
    """Fail a notification whose message could not be built (permanently)."""
    kind = "render" if isinstance(exc, RenderError) else type(exc).__name__
    repository.mark_failed(session=session, notification_id=notification_id, error=f"{kind}: {exc}")
    logger.warning("notification %s failed to render (%s)", notification_id, kind)
    return DeliveryOutcome("failed")


def _hard_bounce(exc: EspPermanentError) -> str | None:
    """The provider's words when ``exc`` says the recipient does not exist, else ``None``.

    SMTP: every recipient refused at RCPT with 550, 551 or 553, unless the reply's enhanced
    status is 5.7.x (refused by policy: the address may well exist).
    """
    cause = exc.__cause__
    if not isinstance(cause, smtplib.SMTPRecipientsRefused):
        return None
    replies = list(cause.recipients.values())
    for code, message in replies:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        status = _ENHANCED_STATUS.search(text)
        if code not in HARD_BOUNCE_CODES or (status and status.group(2) == "7"):
            return None
    code, message = replies[0]
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    for address in cause.recipients:  # keep the address out of the free-text detail
        text = text.replace(address, "<recipient>")
    return f"{exc.esp} {code} {text}"[:1000]


def _suppress_bounced(session: Session, notification_id: int, detail: str) -> None:
    """Suppress the address of a notification the provider refused as nonexistent."""
    row = session.get(Notification, notification_id)
    if row is None:
        return
    try:
        suppress(
            session=session,
            email=row.to_address,
            reason="hard_bounce",
            created_by="system",
            detail=detail,
        )
    except EventValidationError:  # not an address at all: nothing to put on the list
        return
    logger.info("notification %s: recipient suppressed after a hard bounce", notification_id)
