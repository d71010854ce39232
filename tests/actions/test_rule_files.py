"""Webhook actions in rule files: what loads, and every mistake reported at its file and line."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from crm_notify.actions.signing import new_secret
from crm_notify.errors import RuleFileError
from crm_notify.rules.loader import lint_rules, load_rule_file, rule_file_json_schema

SECRET = new_secret()
ENVIRON = {
    "SMS_TOKEN": "t0k",
    "SMS_SECRET": SECRET,
    "SMS_KEY": "k",
    "SHORT_SECRET": "whsec_" + base64.b64encode(b"x" * 16).decode(),
}

GOOD = """\
name: shipped-sms
trigger: {order_status: {to: shipped}}
template: order_shipped
purpose: transactional
actions:
  - type: webhook
    name: sms
    url: https://api.sms.example/v1/messages?key=${SMS_KEY}
    method: post
    headers:
      Authorization: Bearer ${SMS_TOKEN}
      X-Shop: acme
    body:
      to: "{{ contact.traits.phone }}"
      total: "{{ order.total }}"
      text: "Order {{ order.order_id }} is on its way"
      id: "{{ webhook.id }}"
      retries: 0
    secret: ${SMS_SECRET}
  - type: webhook
    url: https://hooks.zapier.example/catch/1/abc
    content_type: form
    body: {email: "{{ contact.email }}", vip: true}
"""


def _write(tmp_path: Path, text: str, name: str = "rule.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def _problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = _write(tmp_path, text)
    return [
        f"{err.line}: {err.message}" + (f" ({err.suggestion})" if err.suggestion else "")
        for err in lint_rules(path, environ=ENVIRON if environ is None else environ)
    ]


def _action(body: str, *, head: str = "") -> str:
    """A rule with one action whose keys (after ``type``) are ``body``; line 6 is ``url``."""
    return (
        "name: r\ntrigger: {event: Order Completed}\npurpose: transactional\n"
        + head
        + "actions:\n  - type: webhook\n"
        + "".join(f"    {line}\n" for line in body.strip("\n").splitlines())
    )


def test_a_rule_with_actions_loads_with_names_targets_and_compiled_bodies(tmp_path: Path) -> None:
    # Given a rule that emails and calls two webhooks
    (rule,) = load_rule_file(_write(tmp_path, GOOD), environ=ENVIRON)
    # Then both actions are loaded, the second named after its position
    sms, zap = rule.actions
    assert (sms.name, sms.method, sms.content_type, sms.secret_variable) == (
        "sms",
        "POST",
        "json",
        "SMS_SECRET",
    )
    assert zap.name == "webhook-2" and zap.content_type == "form" and zap.secret_variable is None
    # And the target recorded per notification leaves out the query (it holds a credential)
    assert sms.target == "https://api.sms.example/v1/messages"
    assert sms.resolved_url(ENVIRON) == "https://api.sms.example/v1/messages?key=k"
    assert sms.resolved_headers(ENVIRON) == {"Authorization": "Bearer t0k", "X-Shop": "acme"}
    assert sms.source_line == 6 and rule.sends_email
    # And a single expression keeps its JSON type, other templates render text
    assert sms.body is not None
    rendered = sms.body.render(
        {
            "event": {},
            "contact": {"traits": {"phone": "+48 600"}},
            "order": {"order_id": "A1", "total": 30.5},
            "cart": None,
            "webhook": {"id": "msg_1", "rule": "r", "action": "sms"},
        }
    )
    assert rendered.content_type == "application/json"
    assert rendered.data == (
        b'{"to":"+48 600","total":30.5,"text":"Order A1 is on its way","id":"msg_1","retries":0}'
    )


def test_a_rule_with_only_actions_needs_no_template(tmp_path: Path) -> None:
    text = _action("url: https://crm.example/hook\nbody: {id: '{{ event.message_id }}'}")
    (rule,) = load_rule_file(_write(tmp_path, text), template_exists=lambda name: False)
    assert not rule.sends_email and rule.template == ""
    assert [step.template for step in rule.steps] == [""]


def test_environment_is_not_checked_without_one(tmp_path: Path) -> None:
    # Given a rule referencing variables that are not set (e.g. under `rules test`)
    path = _write(tmp_path, GOOD)
    # Then it loads when no environment is given, and not when an empty one is
    assert load_rule_file(path)[0].actions[0].secret_variable == "SMS_SECRET"
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(path, environ={})
    assert caught.value.line == 8
    assert "SMS_KEY is not set" in caught.value.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("url: ftp://files.example/x", "6: unsupported URL scheme 'ftp' (use https://)"),
        ("url: hooks.example/x", "6: unsupported URL scheme none (use https://)"),
        (
            "url: http://crm.example/hook",
            "6: plain http:// is allowed only to loopback addresses, not 'crm.example' "
            "(use https://)",
        ),
        (
            "url: https://user:pw@crm.example/hook",
            "6: credentials in the URL are not allowed "
            "(send them in a header, e.g. Authorization: Bearer ${API_TOKEN})",
        ),
        (
            "url: https://crm.example/{{ contact.id }}",
            "6: the URL is static: templates are not allowed in it (put event data in the "
            "body; ${NAME} reads an environment variable in the query)",
        ),
        (
            "url: https://${HOST}/hook",
            "6: ${HOST} may only be used in the URL's query string "
            "(the scheme, host and path are static)",
        ),
        (
            "url: https://crm.example/hook?key=${MISSING}",
            "6: the URL uses ${MISSING}, but MISSING is not set (set it in the service's "
            "environment; the value stays out of the rule file)",
        ),
        (
            "url: https://crm.example/hook\ncontent_type: xml",
            "7: 'actions[0].content_type' should be 'json' or 'form', got string 'xml'",
        ),
        (
            "url: https://crm.example/hook\nmethod: DELETE",
            "7: 'actions[0].method' should be 'POST', 'PUT', 'PATCH' or 'GET', got string 'DELETE'",
        ),
        (
            "url: https://crm.example/hook\nheaders:\n  Authorization: Bearer ${NOPE}",
            "8: header 'Authorization' uses ${NOPE}, but NOPE is not set (set it in the "
            "service's environment; the value stays out of the rule file)",
        ),
        (
            "url: https://crm.example/hook\nheaders:\n  X-Key: $TOKEN",
            "8: header 'X-Key': write environment variables as ${NAME} (letters, digits and _),"
            " and a literal $ as $$",
        ),
        (
            "url: https://crm.example/hook\nheaders:\n  webhook-signature: x",
            "8: header 'webhook-signature' is set by crm-notify (the body's type comes from "
            "content_type; the webhook-* headers sign the request)",
        ),
        (
            "url: https://crm.example/hook\nbody:\n  a: ok\n  b: '{{ order.total + }}'",
            "9: actions[0].body.b: invalid expression '{{ order.total + }}': syntax error: "
            "unexpected 'end of template'",
        ),
        (
            "url: https://crm.example/hook\nbody:\n  text: 'Hi {{ contcat.first_name }}'",
            "8: actions[0].body.text: unknown variable 'contcat' in 'Hi {{ contcat.first_name "
            "}}' (a body can use cart, contact, event, gate, order, webhook)",
        ),
        (
            "url: https://crm.example/hook\nbody: '{% if %}'",
            "7: actions[0].body: invalid template '{% if %}': syntax error: Expected an "
            "expression, got 'end of statement block'",
        ),
        (
            "url: https://crm.example/hook\ncontent_type: form\nbody:\n  to: [a, b]",
            "9: actions[0].body.to: form field 'to' must be text or a scalar, not a list "
            "(form fields are flat)",
        ),
        (
            "url: https://crm.example/hook\nmethod: GET\nbody: {a: b}",
            "8: a GET request carries no body (use POST, PUT or PATCH)",
        ),
        (
            "url: https://crm.example/hook\nsecret: whsec_c2VjcmV0",
            "7: write the signing secret as a reference to an environment variable, e.g. "
            "${SMS_WEBHOOK_SECRET} (never the secret itself in a rule file)",
        ),
        (
            "url: https://crm.example/hook\nsecret: ${SMS_KEY}",
            "7: SMS_KEY is not a signing secret: a signing secret is whsec_ followed by base64 "
            "(crm_notify.actions.signing.new_secret() makes one)",
        ),
        (
            "url: https://crm.example/hook\nsecret: ${SHORT_SECRET}",
            "7: SHORT_SECRET is not a signing secret: a signing secret must decode to 24 to 64 "
            "bytes, this one has 16",
        ),
        (
            "url: https://crm.example/hook\nbody: {a: 1}\nbodyy: {b: 2}",
            "8: unknown key 'bodyy' (did you mean 'body'?)",
        ),
    ],
)
def test_mistakes_are_reported_at_their_line(tmp_path: Path, body: str, expected: str) -> None:
    assert _problems(tmp_path, _action(body)) == [expected]


def test_rule_level_mistakes(tmp_path: Path) -> None:
    # Given actions on a sequence, an email digest on a rule without email, and a name twice
    text = """\
name: r
trigger: {event: Order Completed}
purpose: marketing
limit: 1/1d
over_limit: digest
digest_template: abandoned_cart
steps:
  - {delay: 0h, template: a}
actions:
  - {type: webhook, name: a, url: "https://crm.example/1"}
  - {type: webhook, name: a, url: "https://crm.example/2"}
"""
    # Then each is reported where it is
    assert _problems(tmp_path, text) == [
        "5: 'over_limit: digest' collects sends into one email, and this rule sends none "
        "(use drop or defer for a rule with only actions)",
        "9: 'actions' cannot be used with 'steps' (actions go with a single-message rule "
        "(template, or actions alone, and delay))",
        "11: action name 'a' is already used by 'actions[0]' (action names must be unique "
        "within a rule (unnamed ones are webhook-1, ...))",
    ]


def test_start_up_fails_at_the_first_problem_with_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, _action("url: ftp://x/y\nmethod: GET\nbody: {a: 1}"))
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(path, environ={})
    assert str(caught.value).startswith(f"{path}:6: unsupported URL scheme 'ftp'")
    assert "1 more problem(s)" in "".join(getattr(caught.value, "__notes__", []))


def test_json_schema_describes_actions() -> None:
    definitions = rule_file_json_schema()["$defs"]
    rule = definitions["RuleSpec"]
    assert rule["properties"]["actions"]["anyOf"][0]["items"] == {
        "$ref": "#/$defs/WebhookActionSpec"
    }
    assert rule["dependentSchemas"]["actions"] == {"not": {"required": ["steps"]}}
    action = definitions["WebhookActionSpec"]
    assert action["additionalProperties"] is False
    assert set(action["required"]) == {"type", "url"}
    assert set(action["properties"]) == {
        "type",
        "name",
        "url",
        "method",
        "headers",
        "content_type",
        "body",
        "secret",
    }
