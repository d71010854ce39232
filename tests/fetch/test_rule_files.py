"""Fetch steps in rule files: what loads, every mistake at its file and line, the JSON Schema,
rule tests (which make no request) and previews (which make none either)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.contacts.models import Contact
from crm_notify.errors import RuleFileError
from crm_notify.events.schemas import parse_call
from crm_notify.fetch.model import OnError
from crm_notify.preview import build_preview
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.loader import lint_rules, load_rule_file, load_rules, rule_file_json_schema
from crm_notify.rules.testing import exit_status, run_rule_tests
from tests.esp._api_server import ApiServer
from tests.fetch.conftest import ENVIRON, TEMPLATES
from tests.support.servers import write_tree

GOOD = """\
name: cart-reco
trigger: {event: Cart Viewed}
template: cart_reco
purpose: transactional
fetch:
  - name: recommendations
    url: https://reco.example/v1/carts/{{ event.properties.cart_id }}/products?n=3&key=${RECO_KEY}
    headers: {Authorization: "Bearer ${RECO_TOKEN}"}
    cache: 1h
    fallback: {products: []}
  - name: loyalty
    url: https://loyalty.example/v2/points
    method: post
    body: {email: "{{ contact.email }}", cart: "{{ event.properties.cart_id }}"}
    timeout: 10s
    on_error: defer
    retry_after: 15m
"""


def _write(tmp_path: Path, text: str, name: str = "rule.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = _write(tmp_path, textwrap.dedent(text))
    return [
        f"{err.line}: {err.message}" + (f" ({err.suggestion})" if err.suggestion else "")
        for err in lint_rules(path, environ=ENVIRON)
    ]


def test_a_rule_with_fetch_steps_loads(tmp_path: Path) -> None:
    # Given a rule with a cached GET step with a fallback and a deferring POST step
    path = _write(tmp_path, GOOD)
    # When it is loaded
    (rule,) = load_rule_file(path, environ=ENVIRON)
    # Then both steps are compiled with their options and defaults
    reco, loyalty = rule.fetch
    assert (reco.name, reco.method, reco.timeout, reco.cache) == (
        "recommendations",
        "GET",
        timedelta(seconds=2),
        timedelta(hours=1),
    )
    assert (reco.on_error, reco.fallback, reco.source_line) == (
        OnError.FALLBACK,
        {"products": []},
        6,
    )
    target = "https://reco.example/v1/carts/{{ event.properties.cart_id }}/products"
    assert reco.url.target == target
    context = {"event": {"properties": {"cart_id": "a b/c"}}}
    assert reco.url.render(context, ENVIRON) == (
        "https://reco.example/v1/carts/a%20b%2Fc/products?n=3&key=k-42"
    )
    assert (loyalty.method, loyalty.timeout, loyalty.on_error, loyalty.retry_after) == (
        "POST",
        timedelta(seconds=10),
        OnError.DEFER,
        timedelta(minutes=15),
    )
    assert loyalty.body is not None
    assert loyalty.body.render({**context, "contact": {"email": "a@x.io"}}).data == (
        b'{"email":"a@x.io","cart":"a b/c"}'
    )


def test_without_fallback_on_error_defaults_to_skip(tmp_path: Path) -> None:
    text = GOOD.replace("    fallback: {products: []}\n", "")
    (rule,) = load_rule_file(_write(tmp_path, text), environ=ENVIRON)
    assert rule.fetch[0].on_error is OnError.SKIP


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            "  - {name: event, url: 'https://reco.example/p'}",
            "6: 'event' is a template variable crm-notify sets itself "
            "(choose another name, e.g. recommendations)",
        ),
        (
            "  - {name: reco-list, url: 'https://reco.example/p'}",
            "6: 'fetch[0].name' is not a valid name: 'reco-list' "
            "(use lowercase letters, digits and '_', not starting with a digit)",
        ),
        (
            "  - {name: reco, url: 'https://{{ event.properties.host }}/p'}",
            "6: the URL's scheme and host are static: templates only in its path and query "
            "(e.g. https://reco.example/carts/{{ cart.cart_id }})",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/${RECO_KEY}/p'}",
            "6: ${RECO_KEY} may only be used in the URL's query string "
            "(the scheme, host and path are static)",
        ),
        (
            "  - {name: reco, url: 'http://reco.example/p'}",
            "6: plain http:// is allowed only to loopback addresses, not 'reco.example' "
            "(use https://)",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/{% if cart %}x{% endif %}'}",
            "6: only {{ expression }} values are allowed in the URL, not {% %} or {# #} "
            "(e.g. https://reco.example/carts/{{ cart.cart_id }})",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/{{ basket.id }}'}",
            "6: unknown variable 'basket' in the URL (a URL can use cart, contact, event, gate, "
            "order)",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', timeout: 30s}",
            "6: 'fetch[0].timeout' must be at most 10s, got '30s'",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', on_error: defer}",
            "6: 'on_error: defer' needs 'retry_after' (when to try again) (e.g. retry_after: 15m)",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', on_error: fallback}",
            "6: 'on_error: fallback' needs 'fallback' (the data to render with) "
            "(e.g. fallback: {products: []})",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', on_error: skip, fallback: {a: 1}}",
            "6: 'fallback' is used only with 'on_error: fallback', not skip "
            "(remove it, or set on_error: fallback)",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', fallback: 3}",
            "6: the fallback must be a mapping or a list, as the answer it stands in for "
            "(e.g. fallback: {products: []})",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', retry_after: 1h}",
            "6: 'retry_after' is used only with 'on_error: defer' "
            "(remove it, or set on_error: defer)",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', body: {a: 1}}",
            "6: a GET request carries no body (use method: POST)",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', headers: {X-Key: '${NOPE}'}}",
            "6: header 'X-Key' uses ${NOPE}, but NOPE is not set (set it in the service's "
            "environment; the value stays out of the rule file)",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', headers: {Content-Type: text/xml}}",
            "6: header 'Content-Type' is set by crm-notify (a POST body is sent as JSON)",
        ),
        (
            "  - {name: reco, url: 'https://reco.example/p', method: post, "
            "body: {a: '{{ order.nope( }}'}}",
            "6: fetch[0].body.a: invalid expression '{{ order.nope( }}': syntax error: "
            "unexpected 'end of template'",
        ),
    ],
)
def test_mistakes_are_reported_at_their_line(tmp_path: Path, step: str, expected: str) -> None:
    text = (
        "name: cart-reco\ntrigger: {event: Cart Viewed}\ntemplate: cart_reco\n"
        f"purpose: transactional\nfetch:\n{step}\n"
    )
    problems = _problems(tmp_path, text)
    assert problems == [expected]


def test_rule_level_mistakes(tmp_path: Path) -> None:
    # Given a rule sending no email, and two steps with one name
    text = """\
        name: crm-only
        trigger: {event: Cart Viewed}
        purpose: transactional
        actions:
          - {type: webhook, url: "https://crm.example/hook"}
        fetch:
          - {name: reco, url: "https://reco.example/a"}
          - {name: reco, url: "https://reco.example/b"}
        """
    # Then each problem is at its own line
    assert _problems(tmp_path, text) == [
        "6: fetch steps fill an email's template, and this rule sends no email "
        "(add a template, or put the request in a webhook action)",
        "8: fetch name 'reco' is already used by 'fetch[0]' "
        "(each step fills its own template variable)",
    ]
    # And loading stops at the first, with its file and line
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(tmp_path / "rule.yaml", environ=ENVIRON)
    assert str(caught.value).startswith(f"{tmp_path / 'rule.yaml'}:6: fetch steps fill")


def test_the_schema_describes_fetch_steps() -> None:
    schema = rule_file_json_schema()
    step = schema["$defs"]["FetchStepSpec"]
    assert step["title"] == "FetchStep"
    rule = schema["$defs"]["RuleSpec"]
    assert rule["properties"]["fetch"]["anyOf"][0]["items"] == {"$ref": "#/$defs/FetchStepSpec"}
    assert step["required"] == ["name", "url"]
    assert set(step["properties"]) == {
        "name",
        "url",
        "method",
        "headers",
        "body",
        "timeout",
        "cache",
        "on_error",
        "fallback",
        "retry_after",
    }
    assert step["properties"]["on_error"]["anyOf"][0]["enum"] == ["fallback", "skip", "defer"]
    assert step["properties"]["timeout"]["default"] == "2s"
    assert step["additionalProperties"] is False


def test_rule_tests_make_no_request(tmp_path: Path) -> None:
    with ApiServer() as api:
        # Given a fetch rule calling a service on loopback, and a test case of it
        rule = GOOD.replace("https://reco.example", api.url)
        rule = rule.replace("https://loyalty.example", api.url)
        write_tree(tmp_path / "rules", {"cart-reco.yaml": rule})
        (tmp_path / "rules" / "cart-reco.test.yaml").write_text(
            textwrap.dedent(
                """\
                cases:
                  - name: a viewed cart gets its email
                    contact: {user_id: u1, email: ala@example.com}
                    events:
                      - {at: 0h, track: Cart Viewed, properties: {cart_id: C1}}
                    expect:
                      - {rule: cart-reco, template: cart_reco, at: 0h}
                """
            ),
            "utf-8",
        )
        # When the rule tests run (the environment is not needed either)
        results = run_rule_tests(
            [tmp_path / "rules" / "cart-reco.test.yaml"], rules=load_rules(tmp_path / "rules")
        )
        # Then the case passes, and the service was never called
        assert exit_status(results) == 0
        assert api.requests == []


def test_a_preview_renders_with_the_fallback_and_makes_no_request(
    engine: Engine, tmp_path: Path
) -> None:
    with ApiServer() as api:
        # Given a fetch rule and a contact
        url = api.url + "/v1/carts/{{ event.properties.cart_id }}/products?key=${RECO_KEY}"
        write_tree(
            tmp_path / "rules",
            {
                "r.yaml": GOOD.replace(
                    "https://reco.example/v1/carts/{{ event.properties.cart_id }}"
                    "/products?n=3&key=${RECO_KEY}",
                    url,
                )
            },
        )
        write_tree(tmp_path / "templates", TEMPLATES)
        (rule,) = load_rules(tmp_path / "rules", environ=ENVIRON).rules
        moment = datetime(2026, 11, 20, 12, tzinfo=UTC)
        call = parse_call(
            {
                "type": "track",
                "userId": "u1",
                "event": "Cart Viewed",
                "properties": {"cart_id": "C1"},
                "timestamp": moment.isoformat(),
            },
            type_hint=None,
            received_at=moment,
        )
        with Session(engine) as session:
            contact = Contact(user_id="u1", email="ala@example.com", first_name="Ala")
            session.add(contact)
            session.commit()
            # When it is previewed
            preview = build_preview(
                session=session,
                rule=rule,
                contact=contact,
                templates=TemplateStore(tmp_path / "templates"),
                mail_from="Shop <shop@example.com>",
                call=call,
            )
        # Then the email rendered with the fallback, and nothing was requested
        assert api.requests == []
        assert preview.text is not None and "(our bestsellers)" in preview.text
        reco, loyalty = preview.fetches
        # And each step's request is shown, the ${NAME} value masked
        assert (reco.method, reco.url) == ("GET", f"{api.url}/v1/carts/C1/products?key=***")
        assert reco.uses.startswith("its fallback data")
        assert loyalty.uses.startswith("an empty mapping")
