"""Previews in the console: what a rule would send to a contact, and a test copy of it.

The preview is :func:`crm_notify.preview.build_preview`, the code path of ``crm-notify
preview``: the same templates and sandbox as a real send, and the same guards, shown as a
dry-run verdict ("would be sent", "would be skipped: no marketing consent recorded"). Nothing
is stored. A test copy goes to the signed-in user's own address through the configured ESPs,
marked ``[TEST]``, and is never recorded as a notification. Neither carries the customer's
working unsubscribe or preference links: placeholders stand in for them.
"""

from __future__ import annotations

import email.policy
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session

from crm_notify.actions.sender import WebhookActionSender
from crm_notify.contacts.models import Contact
from crm_notify.errors import RuleFileError
from crm_notify.esp.failover import EspChain
from crm_notify.guards import SendPolicy
from crm_notify.guards.consent import TRANSACTIONAL
from crm_notify.outbox.models import Notification
from crm_notify.preview import Preview, build_preview
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.loader import lint_rules
from crm_notify.rules.model import BUILTIN_PURPOSES, Rule
from crm_notify.unsubscribe.links import UnsubscribeLinks

logger = logging.getLogger(__name__)

#: What a test copy's subject starts with.
TEST_PREFIX = "[TEST] "


class PlaceholderLinks(UnsubscribeLinks):
    """Unsubscribe and preference links that act on nobody: previews and test copies show
    where the links go without carrying the customer's working tokens (which would let whoever
    reads the copy change the customer's consent)."""

    def __init__(self, *, base_url: str) -> None:
        super().__init__(base_url=base_url, secret_key=b"")

    def for_notification(self, notification: Notification) -> tuple[str, str] | None:
        """Placeholder links where a real send would have its signed ones."""
        if notification.purpose == TRANSACTIONAL or notification.contact_id is None:
            return None
        return f"{self.base_url}/unsubscribe/preview", f"{self.base_url}/preferences/preview"


#: A signed unsubscribe or preference link's token in a stored message.
_LINK_TOKEN = re.compile(r"(/(?:unsubscribe|preferences)/)[A-Za-z0-9_.~=%-]{16,}")


def redact_links(text: str) -> str:
    """``text`` with the tokens of signed unsubscribe and preference links replaced, so the
    console never hands out a customer's working link."""
    return _LINK_TOKEN.sub(r"\1(redacted)", text)


@dataclass(frozen=True)
class ConsoleTools:
    """What previews, test copies and the rule pages need from the running service.

    Parameters:
        rules: the loaded rules.
        templates: the template store.
        mail_from: the From header.
        policy: the send policy (its verdict is shown).
        links: where unsubscribe links point (:class:`PlaceholderLinks`: previews show the
            links' place, never a working token).
        webhooks: the webhook action sender (for rules with actions).
        esps: the ESPs a test copy goes through.
        rules_dir: the rule files, linted for the rule pages (``None``: no lint shown).
        purposes: the purposes rules may name (for the lint).
    """

    rules: RuleSet
    templates: TemplateStore
    mail_from: str
    policy: SendPolicy
    links: PlaceholderLinks | None
    webhooks: WebhookActionSender | None
    esps: EspChain
    rules_dir: Path | None = None
    purposes: tuple[str, ...] = ()

    _lint_cache: dict[tuple[object, ...], list[RuleFileError]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def lint(self) -> list[RuleFileError]:
        """The problems of the rule files as they are on disk now (as ``rules lint`` finds);
        linted again only when a file under the rules or templates folder changed."""
        if self.rules_dir is None:
            return []
        key = _snapshot(self.rules_dir, self.templates.templates_dir)
        if key not in self._lint_cache:
            self._lint_cache.clear()
            self._lint_cache[key] = lint_rules(
                self.rules_dir,
                template_exists=self.templates.exists,
                purposes=self.purposes or BUILTIN_PURPOSES,
                environ=os.environ,
            )
        return self._lint_cache[key]

    def email_rules(self) -> list[Rule]:
        """The rules that send email, by name."""
        return sorted((r for r in self.rules.rules if r.sends_email), key=lambda r: r.name)

    def languages(self, rule: Rule) -> list[str]:
        """The languages ``rule``'s template is written in (the default one first)."""
        return self.templates.languages(rule.template)

    def preview(
        self, session: Session, rule: Rule, contact: Contact, *, language: str | None
    ) -> Preview:
        """What ``rule`` would send ``contact`` now, for their latest matching event.

        Raises:
            PreviewError: no stored event to preview with.
            RenderError: the template fails, as a real send would.
        """
        return build_preview(
            session=session,
            rule=rule,
            contact=contact,
            templates=self.templates,
            mail_from=self.mail_from,
            language=language,
            policy=self.policy,
            links=self.links,
            webhooks=self.webhooks,
        )

    def send_test(self, preview: Preview, *, to_address: str, by_user: int) -> str:
        """Send ``preview``'s email to ``to_address`` (the signed-in user) as a test copy.

        Raises:
            EspError: the ESP refused it or could not be reached.

        Returns:
            The configured name of the ESP that took it.
        """
        message = preview.message
        assert message is not None
        copy = email.message_from_string(message.as_string(), policy=email.policy.default)
        for name in ("To", "List-Unsubscribe", "List-Unsubscribe-Post"):
            del copy[name]
        copy["To"] = to_address
        subject = str(message["Subject"] or "")
        del copy["Subject"]
        copy["Subject"] = TEST_PREFIX + subject
        copy["X-CRM-Notify-Test"] = "yes"
        result = self.esps.send_text(copy.as_string(policy=email.policy.SMTP))
        logger.info("console user %s sent a test copy through %s", by_user, result.esp)
        return result.esp


def _snapshot(*folders: Path) -> tuple[object, ...]:
    """Every file below ``folders`` with its size and modification time (a change to any, a
    new file or a removed one gives another snapshot)."""
    entries: list[object] = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            try:
                stat = path.stat()
            except OSError:  # removed meanwhile
                continue
            entries.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)
