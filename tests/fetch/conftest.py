"""Fetch-step tests: a recommendation service stand-in on loopback, an SMTP sink, and intake
and delivery wired as the runtime wires them (the queue in the test's hands)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify._net import OutboundPolicy
from crm_notify.esp.factory import adapter_from_url
from crm_notify.events.schemas import parse_call
from crm_notify.fetch.cache import FetchCache
from crm_notify.fetch.runner import FetchRunner
from crm_notify.guards import SendPolicy
from crm_notify.intake import Intake
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.models import Decision, Notification
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.loader import load_rules
from tests.esp._api_server import Answer, ApiServer
from tests.support.servers import SmtpSink, write_tree

#: The environment the steps' ${NAME} references read.
ENVIRON = {"RECO_TOKEN": "reco-t0ken", "RECO_KEY": "k-42"}

#: Templates: the cart email lists the recommended products; ``plain`` uses no fetch.
TEMPLATES = {
    "cart_reco/subject.txt": "Picks for {{ contact.first_name }}",
    "cart_reco/body.txt": (
        "Cart {{ event.properties.cart_id }}\n"
        "{% for p in recommendations.products %}- {{ p.name }}\n{% endfor %}"
        "{% if not recommendations.products %}(our bestsellers){% endif %}\n"
    ),
    "cart_reco/body.html": (
        "<ul>{% for p in recommendations.products %}<li>{{ p.name }}</li>{% endfor %}</ul>"
    ),
    "plain/subject.txt": "Hello",
    "plain/body.txt": "Hello {{ contact.first_name }}\n",
}

#: Three products, as the stand-in answers.
PRODUCTS = {"products": [{"name": "Red mug"}, {"name": "Blue pot"}, {"name": "Tea towel"}]}


def reco_rule(url: str, **step: Any) -> dict[str, Any]:
    """The ``cart-reco`` rule: on ``Cart Viewed``, one ``recommendations`` step at ``url``
    (``{{ ... }}`` and ``${NAME}`` as written) with ``step``'s keys."""
    return {
        "name": "cart-reco",
        "trigger": {"event": "Cart Viewed"},
        "template": "cart_reco",
        "purpose": "transactional",
        "fetch": [
            {
                "name": "recommendations",
                "url": url,
                "headers": {"Authorization": "Bearer ${RECO_TOKEN}"},
                "timeout": "1s",
                **step,
            }
        ],
    }


def reco_url(api: ApiServer) -> str:
    """The stand-in's products URL for the event's cart, with the key from the environment."""
    return api.url + "/v1/carts/{{ event.properties.cart_id }}/products?limit=3&key=${RECO_KEY}"


@dataclass
class Pipeline:
    """Intake, fetch runner and delivery wired as the runtime wires them."""

    engine: Engine
    intake: Intake
    delivery: DeliveryService
    fetcher: FetchRunner
    queued: list[int] = field(default_factory=list)
    retries: list[tuple[int, timedelta]] = field(default_factory=list)

    def send(self, obj: dict[str, Any]) -> None:
        obj = {"userId": "u1", "type": "track", **obj}
        obj.setdefault("timestamp", datetime.now(UTC).isoformat())
        obj.setdefault("messageId", f"m-{uuid.uuid4().hex}")
        self.intake.ingest([parse_call(obj, type_hint=None, received_at=datetime.now(UTC))])

    def identify(self, user_id: str = "u1", **traits: Any) -> None:
        self.send({"type": "identify", "userId": user_id, "traits": traits})

    def cart_viewed(self, cart_id: str, user_id: str = "u1") -> None:
        self.send({"event": "Cart Viewed", "userId": user_id, "properties": {"cart_id": cart_id}})

    def deliver_queued(self) -> list[str]:
        ids, self.queued[:] = list(self.queued), []
        return [self.delivery.deliver(nid).status for nid in ids]

    def rows(self) -> list[Notification]:
        with Session(self.engine) as session:
            return list(session.exec(select(Notification).order_by(col(Notification.id))))

    def decisions(self, rule: str = "cart-reco") -> list[tuple[str, str, Any]]:
        with Session(self.engine) as session:
            query = select(Decision).where(Decision.rule == rule).order_by(col(Decision.id))
            return [(str(d.outcome), d.reason, d.details) for d in session.exec(query)]


MakePipeline = Callable[..., Pipeline]


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(default=Answer(200, json=PRODUCTS)) as server:
        yield server


@pytest.fixture
def make_pipeline(engine: Engine, tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[MakePipeline]:
    """Build a pipeline for ``rules`` (rule dicts, written as YAML files)."""
    built: list[Pipeline] = []

    def build(
        *rules: dict[str, Any],
        cache: FetchCache | None = None,
        policy: OutboundPolicy | None = None,
    ) -> Pipeline:
        folder = tmp_path / f"rules-{len(built)}"
        write_tree(folder, {f"{r['name']}.yaml": json.dumps(r, indent=2) for r in rules})
        write_tree(tmp_path / "templates", TEMPLATES)
        ruleset = load_rules(folder, environ=ENVIRON)
        fetcher = FetchRunner(
            environ=ENVIRON, policy=policy or OutboundPolicy.allow_loopback(), cache=cache
        )
        queued: list[int] = []
        retries: list[tuple[int, timedelta]] = []
        send_policy = SendPolicy.standard()
        delivery = DeliveryService(
            engine=engine,
            templates=TemplateStore(tmp_path / "templates"),
            adapter=adapter_from_url(smtp_sink.url),
            mail_from="Shop <shop@example.com>",
            max_attempts=5,
            schedule_retry=lambda nid, delay: retries.append((nid, delay)),
            policy=send_policy,
            rules=ruleset,
            fetcher=fetcher,
        )
        intake = Intake(engine=engine, rules=ruleset, policy=send_policy, enqueue=queued.extend)
        pipeline = Pipeline(engine, intake, delivery, fetcher, queued, retries)
        built.append(pipeline)
        return pipeline

    yield build
    for pipeline in built:
        pipeline.fetcher.close()
