"""``crm-notify preview`` for rules with webhook actions: each request shown as it would go out
(credentials masked), built by the sender that sends it; a rule with only actions previews too.

The CLI tests run the real command against SQLite and PostgreSQL, and compare the preview with
the request a real delivery then makes to an HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session
from standardwebhooks import Webhook

from crm_notify._net import OutboundPolicy
from crm_notify.actions.model import WebhookAction
from crm_notify.actions.preview import MASK, masked_url, preview_request
from crm_notify.actions.sender import WebhookActionSender
from crm_notify.actions.signing import new_secret
from crm_notify.commerce.models import Order
from crm_notify.contacts.models import Contact
from crm_notify.events.schemas import parse_call
from crm_notify.preview import PreviewError, build_preview
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.loader import load_rules
from tests.conftest import ROOT
from tests.esp._api_server import ApiServer
from tests.support.servers import write_tree
from tests.support.service import run_cli, service_env

#: The values behind the ${NAME} references: none may appear in a preview.
SMS_KEY = "key-0f5e1d2c"
SMS_TOKEN = "tok-9a8b7c6d"
SMS_SECRET = new_secret()
ENVIRON = {
    "SMS_KEY": SMS_KEY,
    "SMS_GATEWAY_TOKEN": SMS_TOKEN,
    "SMS_GATEWAY_WEBHOOK_SECRET": SMS_SECRET,
}

#: The sms example of docs/webhook_actions.md, sent to {URL} (a loopback server), with a
#: query-string credential and a form action besides.
SMS_RULE = """
name: order-shipped-sms
trigger: {order_status: {to: shipped}}
when: contact.traits.phone is defined
template: order_shipped
purpose: transactional
actions:
  - type: webhook
    name: sms
    url: {URL}/v1/messages?api_key=${SMS_KEY}&from=shop
    method: POST
    headers:
      Authorization: Bearer ${SMS_GATEWAY_TOKEN}
      X-Shop: acme
    content_type: json
    body:
      to: "{{ contact.traits.phone }}"
      text: "Hi {{ contact.first_name or 'there' }}, order {{ order.order_id }} is on its way"
      amount: "{{ order.total }}"
      reference: "{{ webhook.id }}"
    secret: ${SMS_GATEWAY_WEBHOOK_SECRET}
  - type: webhook
    name: crm
    url: {URL}/crm/leads
    content_type: form
    body: {phone: "{{ contact.traits.phone }}", vip: true, note: "a b&c"}
"""
#: The same rule without its email (its requests go under /only/).
ONLY_ACTIONS = (
    SMS_RULE.replace("template: order_shipped\n", "")
    .replace("order-shipped-sms", "shipped-sms-only")
    .replace("{URL}/", "{URL}/only/")
)
#: A marketing rule with only an action (needs consent like an email would).
PROMO_RULE = """
name: promo-sms
trigger: {event: Promo Viewed}
purpose: marketing
quiet_hours: false
actions:
  - {type: webhook, name: sms, url: "{URL}/promo", body: {to: "{{ contact.traits.phone }}"}}
"""

ALICE = {
    "type": "identify",
    "userId": "u1",
    "messageId": "m1",
    "traits": {"email": "alice@example.com", "first_name": "Alice", "phone": "+4915550001"},
}
PACKED = {
    "type": "track",
    "userId": "u1",
    "messageId": "m2",
    "event": "Order Updated",
    "properties": {"order_id": "A1", "status": "packed", "total": 30.5},
}
SHIPPED = {
    "type": "track",
    "userId": "u1",
    "messageId": "m3",
    "event": "Order Updated",
    "properties": {"order_id": "A1", "status": "shipped", "total": 30.5},
}


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, database_url: str, api: ApiServer) -> dict[str, str]:
    rules = {
        "sms.yaml": SMS_RULE.replace("{URL}", api.url),
        "only.yaml": ONLY_ACTIONS.replace("{URL}", api.url),
        "promo.yaml": PROMO_RULE.replace("{URL}", api.url),
    }
    write_tree(tmp_path / "rules", rules)
    environment = service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_RULES_DIR": str(tmp_path / "rules"),
            "CRM_NOTIFY_TEMPLATES_DIR": str(ROOT / "templates"),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
            "CRM_NOTIFY_ESP_URL": f"file://{tmp_path / 'outbox'}",
            **ENVIRON,
        }
    )
    run_cli(environment, "db", "upgrade")
    return environment


def _send(env: dict[str, str], tmp_path: Path, *calls: dict[str, Any]) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(json.dumps(call) for call in calls))
    run_cli(env, "events", "send", str(path))


def _event_file(tmp_path: Path, call: dict[str, Any]) -> str:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(call))
    return str(path)


def _section(out: str, action: str) -> tuple[str, dict[str, str], str]:
    """The request line, the headers and the body text of one action's section."""
    start = out.index(f"\nWebhook {action}: ")
    end = out.find("\nWebhook ", start + 1)
    head, _, body = out[start + 1 : None if end < 0 else end].partition("\n\n")
    first, _content_type, *header_lines = head.splitlines()
    headers = dict(line.split(": ", 1) for line in header_lines)
    return first, headers, body.strip()


def _assert_no_secret(*texts: str) -> None:
    secret_key = SMS_SECRET.removeprefix("whsec_")
    for text in texts:
        for value in (SMS_KEY, SMS_TOKEN, secret_key):
            assert value not in text


def test_preview_shows_the_request_a_real_send_makes(
    env: dict[str, str], tmp_path: Path, api: ApiServer
) -> None:
    # Given Alice with a phone number and a packed order
    _send(env, tmp_path, ALICE, PACKED)
    # When the rule is previewed with the event that ships the order
    result = run_cli(
        env, "preview", "order-shipped-sms", "--contact", "alice@example.com",
        "--event", _event_file(tmp_path, SHIPPED),
    )  # fmt: skip
    out = result.stdout
    # Then the verdict and the email come first, then each action's request
    assert out.startswith("Verdict: would be sent\n")
    assert "Subject: Your order A1 is on its way" in out
    assert out.index("Subject:") < out.index("\nWebhook sms: ") < out.index("\nWebhook crm: ")
    assert (tmp_path / "var" / "preview" / "order-shipped-sms.html").exists()
    first, headers, body = _section(out, "sms")
    assert first == f"Webhook sms: POST {api.url}/v1/messages?api_key={MASK}&from=shop"
    assert "Content type: application/json; signed with ${SMS_GATEWAY_WEBHOOK_SECRET}" in out
    assert headers["Authorization"] == MASK
    assert headers["webhook-signature"] == MASK
    assert headers["X-Shop"] == "acme"
    assert headers["Content-Type"] == "application/json"
    shown = json.loads(body)
    assert body.startswith('{\n  "to": "+4915550001",')  # pretty JSON
    assert shown["amount"] == 30.5 and shown["reference"] == headers["webhook-id"]
    _, form_headers, form = _section(out, "crm")
    assert form_headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "webhook-signature" not in form_headers  # no secret configured: unsigned
    assert form.splitlines() == ["phone = +4915550001", "vip = true", "note = a b&c"]
    # And no credential is printed, nor sent anywhere
    _assert_no_secret(out, result.stderr)
    assert api.requests == []

    # When the event really happens (delivered at once: the embedded broker)
    _send(env, tmp_path, SHIPPED)
    # Then the requests are the ones previewed: the same headers in the same order, the same
    # values behind the masks' backs, the same body but for the fresh webhook-id
    sent = {request.path: request for request in api.requests}
    real = sent["/v1/messages"]
    assert real.method == "POST" and real.query == {"api_key": [SMS_KEY], "from": ["shop"]}
    assert [name.lower() for name in headers] == [name for name, _ in real.header_list]
    for name, value in headers.items():
        if name.lower() in {"authorization", "webhook-signature", "webhook-id"}:
            continue
        if name.lower() != "webhook-timestamp":
            assert real.headers[name.lower()] == value, name
    assert real.headers["authorization"] == f"Bearer {SMS_TOKEN}"
    assert real.json == {**shown, "reference": real.headers["webhook-id"]}
    Webhook(SMS_SECRET).verify(real.body, real.headers)
    assert sent["/crm/leads"].form == {"phone": ["+4915550001"], "vip": ["true"], "note": ["a b&c"]}


def test_rule_with_only_actions_previews_without_an_email(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given a contact known by user id only (no email address) and a packed order
    bob = {"type": "identify", "userId": "u2", "messageId": "b1", "traits": {"phone": "+49777"}}
    _send(env, tmp_path, bob, {**PACKED, "userId": "u2", "messageId": "b2"})
    # When the rule that only calls webhooks is previewed
    shipped = {**SHIPPED, "userId": "u2", "messageId": "b3"}
    result = run_cli(
        env, "preview", "shipped-sms-only", "--contact", "u2",
        "--event", _event_file(tmp_path, shipped),
    )  # fmt: skip
    # Then it would be sent (no address needed), the requests are shown, and no email or HTML
    assert result.stdout.startswith("Verdict: would be sent\n\nWebhook sms: POST ")
    assert "Subject:" not in result.stdout and "From:" not in result.stdout
    assert json.loads(_section(result.stdout, "sms")[2])["to"] == "+49777"
    assert "HTML part" not in result.stderr
    assert not (tmp_path / "var" / "preview").exists()
    _assert_no_secret(result.stdout, result.stderr)


def test_preview_of_actions_gives_the_guards_verdict(env: dict[str, str], tmp_path: Path) -> None:
    # Given a contact who never gave marketing consent
    _send(env, tmp_path, ALICE)
    promo = {"type": "track", "userId": "u1", "messageId": "p1", "event": "Promo Viewed"}
    # When the marketing rule with only an SMS action is previewed
    out = run_cli(
        env, "preview", "promo-sms", "--contact", "u1", "--event", _event_file(tmp_path, promo)
    ).stdout
    # Then the consent guard's verdict is shown, and the request that would have gone out
    assert out.startswith("Verdict: would be skipped: ")
    assert "consent" in out.splitlines()[0]
    assert "Content type: application/json; unsigned" in out


def test_an_action_that_would_fail_is_shown_and_fails_the_command(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given Alice without any order (the sms body reads order.order_id)
    _send(env, tmp_path, ALICE)
    # When the rule with only actions is previewed
    result = run_cli(
        env, "preview", "shipped-sms-only", "--contact", "u1",
        "--event", _event_file(tmp_path, SHIPPED), check=False,
    )  # fmt: skip
    # Then the sms shows the error a real send would fail with, the form request still shows,
    # and the command fails naming the action
    assert result.returncode == 1
    assert "would fail: render: " in result.stdout
    assert "phone = +4915550001" in result.stdout
    assert "error: webhook action sms would fail: render: " in result.stderr


# --- the library ----------------------------------------------------------------------------


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    write_tree(
        tmp_path / "lib-rules", {"sms.yaml": ONLY_ACTIONS.replace("{URL}", "https://sms.example")}
    )
    return load_rules(tmp_path / "lib-rules", environ=ENVIRON)


@pytest.fixture
def contact(engine: Engine) -> Contact:
    """Alice, with a phone number but no email address, and her packed order."""
    with Session(engine) as session:
        person = Contact(user_id="u1", traits={"phone": "+4915550001", "first_name": "Alice"})
        session.add(person)
        session.flush()
        session.add(Order(order_id="A1", contact_id=person.id, status="packed", total=30.5))
        session.commit()
        session.refresh(person)
        return person


def _preview(engine: Engine, rules: RuleSet, contact: Contact, environ: dict[str, str]) -> Any:
    call = parse_call(SHIPPED, type_hint=None, received_at=datetime.now(UTC))
    sender = WebhookActionSender(
        policy=OutboundPolicy.allow_loopback(), rules=rules, environ=environ
    )
    try:
        with Session(engine) as session:
            return build_preview(
                session=session,
                rule=rules.rules[0],
                contact=contact,
                templates=TemplateStore(ROOT / "templates"),
                mail_from="shop <shop@example.com>",
                call=call,
                webhooks=sender,
            )
    finally:
        sender.close()


def test_a_variable_missing_at_preview_is_the_actions_error(
    engine: Engine, rules: RuleSet, contact: Contact
) -> None:
    # Given the token's variable unset since the rules loaded
    environ = {name: value for name, value in ENVIRON.items() if name != "SMS_GATEWAY_TOKEN"}
    # When previewed, Then the sms request says why it would fail (as a real send would)
    sms, crm = _preview(engine, rules, contact, environ).requests
    assert sms.error == "action: environment variable SMS_GATEWAY_TOKEN is not set"
    assert sms.url == f"https://sms.example/only/v1/messages?api_key={MASK}&from=shop"
    assert crm.error is None and crm.signing == "unsigned"


def test_a_header_that_resolves_to_a_line_break_is_refused(
    engine: Engine, rules: RuleSet, contact: Contact
) -> None:
    sms, _ = _preview(
        engine, rules, contact, {**ENVIRON, "SMS_GATEWAY_TOKEN": "a\r\nX: y"}
    ).requests
    assert sms.error == "action: header Authorization: its value contains a line break or NUL"


def test_preview_of_actions_needs_the_sender(
    engine: Engine, rules: RuleSet, contact: Contact
) -> None:
    with Session(engine) as session, pytest.raises(PreviewError, match="webhook actions"):
        build_preview(
            session=session,
            rule=rules.rules[0],
            contact=contact,
            templates=TemplateStore(ROOT / "templates"),
            mail_from="shop@example.com",
            call=parse_call(SHIPPED, type_hint=None, received_at=datetime.now(UTC)),
        )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://a.example/x?key=${K}&b=c", f"https://a.example/x?key={MASK}&b=c"),
        ("https://a.example/x?sig=pre${K}post", f"https://a.example/x?sig={MASK}"),
        ("https://a.example/x?${K}=1&b=$$2", f"https://a.example/x?{MASK}&b=$2"),
        ("https://a.example/x y", "https://a.example/x%20y"),
        ("https://a.example/x", "https://a.example/x"),
    ],
)
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(WebhookAction(name="a", url=url)) == shown


def test_a_get_action_has_no_body() -> None:
    action = WebhookAction(name="ping", url="https://a.example/ping?t=${K}", method="GET")
    sender = WebhookActionSender(
        policy=OutboundPolicy.allow_loopback(), rules=RuleSet(), environ={"K": "secret-k"}
    )
    try:
        shown = preview_request(sender, action, rule="r", context={})
    finally:
        sender.close()
    assert (shown.method, shown.content_type, shown.body_text) == ("GET", None, "(no body)")
    assert "Content-Type" not in dict(shown.headers)
    assert "secret-k" not in repr(shown)
