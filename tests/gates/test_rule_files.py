"""Send gates in rule files: what loads, every mistake at its file and line, and the JSON form."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from crm_notify.actions.signing import new_secret
from crm_notify.errors import RuleFileError
from crm_notify.gates.model import (
    DEFAULT_GATE_TIMEOUT,
    GateAuth,
    GateConfig,
    GateRetry,
    OnTimeout,
    gate_config_from_json,
    gate_config_json,
)
from crm_notify.gates.spec import TEMPLATE_NAME_PATTERN
from crm_notify.rules.loader import lint_rules, load_rule_file, rule_file_json_schema
from crm_notify.rules.model import TEMPLATE_NAME_PATTERN as RULE_TEMPLATE_NAME_PATTERN

SECRET = new_secret()
ENVIRON = {
    "GATE_USER": "crm",
    "GATE_PASSWORD": "pw",
    "GATE_TOKEN": "t0k",
    "GATE_KEY": "k",
    "GATE_SECRET": SECRET,
    "GATE_BASIC": "crm:pw",
}
TEMPLATES = {"order_shipped", "cart_rejected_alt", "cart_later"}

GOOD = """\
rules:
  - name: plain
    trigger: {event: Order Completed}
    template: order_shipped
    purpose: transactional
  - name: abandoned-cart
    trigger: {idle_for: {entity: cart, after: 4h}}
    template: order_shipped
    purpose: marketing
    gate:
      url: https://loyalty.example/crm-gate?key=${GATE_KEY}
      auth: {basic: "${GATE_USER}:${GATE_PASSWORD}"}
      secret: ${GATE_SECRET}
      timeout: 2h30m
      on_timeout: drop
      actions:
        - {id: check-stock}
        - id: add-promo
          field: promo_code
          limits: {max: 2, share: 0.5, codes: [A, B], note: null, on: yes}
      on_rejected: {template: cart_rejected_alt}
      on_timed_out: {template: cart_later}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rule.yaml"
    path.write_text(text, "utf-8")
    return path


def _exists(name: str) -> bool:
    return name in TEMPLATES


def _problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = _write(tmp_path, text)
    return [
        f"{err.line}: {err.message}" + (f" ({err.suggestion})" if err.suggestion else "")
        for err in lint_rules(
            path, template_exists=_exists, environ=ENVIRON if environ is None else environ
        )
    ]


def _gate(body: str) -> str:
    """A rule whose ``gate:`` holds ``body``; ``gate`` is line 5, the body starts at line 6."""
    return (
        "name: r\ntrigger: {event: Order Completed}\ntemplate: order_shipped\n"
        "purpose: transactional\ngate:\n"
        + "".join(f"  {line}\n" for line in body.strip("\n").splitlines())
    )


def test_a_gated_rule_loads_into_its_gate_config(tmp_path: Path) -> None:
    # Given a file with a plain rule and a rule with every gate key
    path = _write(tmp_path, GOOD)
    # When it is loaded with the environment and the templates
    plain, gated = load_rule_file(path, template_exists=_exists, environ=ENVIRON)
    # Then the plain rule has no gate, and the gated one has its compiled configuration
    assert plain.gate is None
    assert gated.gate == GateConfig(
        url="https://loyalty.example/crm-gate?key=${GATE_KEY}",
        auth=GateAuth(basic="${GATE_USER}:${GATE_PASSWORD}"),
        secret_variable="GATE_SECRET",
        timeout=timedelta(hours=2, minutes=30),
        on_timeout=OnTimeout.DROP,
        actions=(
            {"id": "check-stock"},
            {
                "id": "add-promo",
                "field": "promo_code",
                "limits": {"max": 2, "share": 0.5, "codes": ["A", "B"], "note": None, "on": "yes"},
            },
        ),
        on_rejected="cart_rejected_alt",
        on_timed_out="cart_later",
        source_path=path,
        source_line=10,
    )
    # And the actions keep their keys in file order, ``id`` first
    assert gated.gate is not None
    assert list(gated.gate.actions[1]) == ["id", "field", "limits"]


def test_a_minimal_gate_takes_the_defaults(tmp_path: Path) -> None:
    # Given a gate with only a loopback URL (plain http allowed there)
    path = _write(tmp_path, _gate("url: http://127.0.0.1:8080/gate"))
    # When loaded
    (rule,) = load_rule_file(path, environ={})
    # Then it waits an hour, releases on timeout, and has no auth, secret, actions or follow-ups
    assert rule.gate == GateConfig(
        url="http://127.0.0.1:8080/gate", source_path=path, source_line=5
    )
    assert rule.gate.timeout == DEFAULT_GATE_TIMEOUT == timedelta(hours=1)
    assert rule.gate.on_timeout is OnTimeout.RELEASE


def test_header_auth(tmp_path: Path) -> None:
    text = _gate(
        "url: https://crm-gate.example/g\nauth: {header: X-Gate-Token, token: '${GATE_TOKEN}'}"
    )
    (rule,) = load_rule_file(_write(tmp_path, text), environ=ENVIRON)
    assert rule.gate is not None
    assert rule.gate.auth == GateAuth(header="X-Gate-Token", token="${GATE_TOKEN}")


def test_environment_and_templates_are_not_checked_without_them(tmp_path: Path) -> None:
    # Given the good file (variables unset here; templates unknown)
    path = _write(tmp_path, GOOD)
    # Then it loads when neither the environment nor the templates are given
    gated = load_rule_file(path)[1]
    assert gated.gate is not None and gated.gate.secret_variable == "GATE_SECRET"
    # And with an empty environment every variable is missing, each at its line
    assert [
        (err.line, err.message) for err in lint_rules(path, template_exists=_exists, environ={})
    ] == [
        (11, "the URL uses ${GATE_KEY}, but GATE_KEY is not set"),
        (12, "basic auth uses ${GATE_USER}, but GATE_USER is not set"),
        (12, "basic auth uses ${GATE_PASSWORD}, but GATE_PASSWORD is not set"),
        (13, "the secret uses ${GATE_SECRET}, but GATE_SECRET is not set"),
    ]
    # And start-up stops at the first, with file and line
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(path, environ={})
    assert str(caught.value).startswith(f"{path}:11: the URL uses ${{GATE_KEY}}")
    assert "3 more problem(s)" in "".join(getattr(caught.value, "__notes__", []))


_NOT_SET = "(set it in the service's environment; the value stays out of the rule file)"
_AUTH = "(write auth: {basic: ${USER}:${PASSWORD}} or auth: {header: X-Token, token: ${TOKEN}})"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # url
        ("url: ftp://files.example/x", "6: unsupported URL scheme 'ftp' (use https://)"),
        ("url: crm-gate.example/x", "6: unsupported URL scheme none (use https://)"),
        (
            "url: http://crm-gate.example/g",
            "6: plain http:// is allowed only to loopback addresses, not 'crm-gate.example' "
            "(use https://)",
        ),
        (
            "url: https://user:pw@crm-gate.example/g",
            f"6: credentials in the URL are not allowed {_AUTH}",
        ),
        (
            "url: https://crm-gate.example/{{ rule }}",
            "6: the gate URL is static: templates are not allowed in it "
            "(${NAME} reads an environment variable in the query string)",
        ),
        (
            "url: https://${GATE_KEY}.example/g",
            "6: ${GATE_KEY} may only be used in the URL's query string "
            "(the scheme, host and path are static)",
        ),
        (
            "url: https://crm-gate.example/g?k=${NOPE}",
            f"6: the URL uses ${{NOPE}}, but NOPE is not set {_NOT_SET}",
        ),
        (
            "url: https://crm-gate.example/g?k=$KEY",
            "6: the URL: write environment variables as ${NAME} (letters, digits and _), "
            "and a literal $ as $$",
        ),
        (
            "url: 'https://crm-gate.example/a b'",
            "6: the URL contains white space or a control character (encode it)",
        ),
        (
            "url: https://crm-gate.example/g#top",
            "6: a URL fragment (#...) is never sent (remove it)",
        ),
        (
            "url: https://crm-gate.example:99999/g",
            "6: invalid port in the URL: Port out of range 0-65535",
        ),
        ("url: https:///g", "6: the URL has no host (e.g. https://crm-gate.example.com/path)"),
        ("urll: https://crm-gate.example/g", "6: unknown key 'urll' (did you mean 'url'?)"),
        ("timeout: 1h", "5: missing required key 'url' in 'gate'"),
        # auth
        (
            "url: https://g.example/\nauth: {basic: '${GATE_USER}:x', header: X-T}",
            f"7: 'gate.auth' takes either 'basic', or 'header' and 'token' {_AUTH}",
        ),
        (
            "url: https://g.example/\nauth: {}",
            f"7: 'gate.auth' needs 'basic', or 'header' and 'token' {_AUTH}",
        ),
        (
            "url: https://g.example/\nauth:\n  header: X-T",
            f"8: 'gate.auth.header' needs 'token' as well {_AUTH}",
        ),
        (
            "url: https://g.example/\nauth:\n  token: ${GATE_TOKEN}",
            f"8: 'gate.auth.token' needs 'header' as well {_AUTH}",
        ),
        (
            "url: https://g.example/\nauth:\n  basic: ${GATE_TOKEN}",
            "8: basic auth is USER:PASSWORD, and this one has no ':' "
            "(e.g. basic: ${GATE_USER}:${GATE_PASSWORD})",
        ),
        (
            "url: https://g.example/\nauth:\n  basic: crm:${NOPE}",
            f"8: basic auth uses ${{NOPE}}, but NOPE is not set {_NOT_SET}",
        ),
        (
            "url: https://g.example/\nauth:\n  header: X Token\n  token: a",
            "8: 'X Token' is not a valid header name (e.g. X-Gate-Token)",
        ),
        (
            "url: https://g.example/\nauth:\n  header: Webhook-Signature\n  token: a",
            "8: header 'Webhook-Signature' is set by crm-notify (the body is JSON; the "
            "webhook-* headers sign the request)",
        ),
        (
            "url: https://g.example/\nauth:\n  header: X-T\n  token: '{{ contact.id }}'",
            "9: the value of header 'X-T' holds a template, but credentials are static "
            "(${NAME} reads an environment variable)",
        ),
        (
            "url: https://g.example/\nauth:\n  header: X-T\n  token: $GATE_TOKEN",
            "9: the value of header 'X-T': write environment variables as ${NAME} (letters, "
            "digits and _), and a literal $ as $$",
        ),
        (
            'url: https://g.example/\nauth:\n  header: X-T\n  token: "a\\nb"',
            "9: the value of header 'X-T' contains a line break or NUL",
        ),
        (
            "url: https://g.example/\nauth:\n  header: X-T\n  token: ${NOPE}",
            f"9: the value of header 'X-T' uses ${{NOPE}}, but NOPE is not set {_NOT_SET}",
        ),
        (
            "url: https://g.example/\nauth: {bsic: a}",
            "7: unknown key 'bsic' (did you mean 'basic'?)",
        ),
        # secret
        (
            "url: https://g.example/\nsecret: whsec_c2VjcmV0",
            "7: write the signing secret as a reference to an environment variable, e.g. "
            "${GATE_SIGNING_SECRET} (never the secret itself in a rule file)",
        ),
        (
            "url: https://g.example/\nsecret: ${GATE_KEY}",
            "7: GATE_KEY is not a signing secret: a signing secret is whsec_ followed by base64 "
            "(crm_notify.actions.signing.new_secret() makes one)",
        ),
        (
            "url: https://g.example/\nsecret: ${NOPE}",
            f"7: the secret uses ${{NOPE}}, but NOPE is not set {_NOT_SET}",
        ),
        # timeout and on_timeout
        ("url: https://g.example/\ntimeout: 8d", "7: 'gate.timeout' must be at most 7d, got '8d'"),
        (
            "url: https://g.example/\ntimeout: 0",
            "7: 'gate.timeout' must be more than zero, got '0s'",
        ),
        (
            "url: https://g.example/\ntimeout: -1h",
            "7: 'gate.timeout' must be more than zero, got '-1h'",
        ),
        (
            "url: https://g.example/\ntimeout: 1y",
            "7: invalid duration '1y' (use e.g. 48h, 30m, 2d)",
        ),
        (
            "url: https://g.example/\ntimeout: 30",
            "7: 'gate.timeout' should be a duration such as 48h, 30m or 2d, got integer 30",
        ),
        (
            "url: https://g.example/\non_timeout: never",
            "7: 'gate.on_timeout' should be 'release' or 'drop', got string 'never'",
        ),
        # actions
        (
            "url: https://g.example/\nactions: []",
            "7: 'gate.actions' list should have at least 1 item after validation, not 0",
        ),
        (
            "url: https://g.example/\nactions:\n  - {id: a}\n  - {field: promo}",
            "9: missing required key 'id' in 'gate.actions[1]'",
        ),
        (
            "url: https://g.example/\nactions:\n  - id: 3",
            "8: 'gate.actions[0].id' should be a valid string, got integer 3",
        ),
        (
            "url: https://g.example/\nactions:\n  - id: ''",
            "8: 'gate.actions[0].id' string should have at least 1 character",
        ),
        (
            "url: https://g.example/\nactions:\n  - {id: a}\n  - {id: b}\n  - {id: a}",
            "10: action id 'a' is already used by 'gate.actions[0]' (action ids must be unique "
            "within a gate)",
        ),
        (
            "url: https://g.example/\nactions:\n  - id: a\n    weights:\n      - 1\n      - .nan",
            "11: 'gate.actions[0].weights[1]' is nan, which JSON cannot carry (actions are "
            "sent to the integration as JSON)",
        ),
        # follow-ups
        (
            "url: https://g.example/\non_rejected: {template: nope}",
            "7: template 'nope' does not exist (create templates/nope/ or fix the name)",
        ),
        (
            "url: https://g.example/\non_timeout: drop\non_timed_out:\n  template: nope",
            "9: template 'nope' does not exist (create templates/nope/ or fix the name)",
        ),
        (
            "url: https://g.example/\non_timed_out: {template: cart_later}",
            "7: 'gate.on_timed_out' is only used with 'on_timeout: drop' (with release, "
            "timed-out sends go out as they are; set 'on_timeout: drop' or remove it)",
        ),
        (
            "url: https://g.example/\non_timeout: drop\non_timed_out: {template: ../x}",
            "8: 'gate.on_timed_out.template' is not a valid name: '../x' (use the name of one "
            "folder under templates/)",
        ),
        (
            "url: https://g.example/\non_rejected: {template: cart_later, delay: 1h}",
            "7: unknown key 'delay' (expected one of: template, retry_after, retries)",
        ),
        # follow-up retries
        (
            "url: https://g.example/\non_rejected: {template: cart_later, retry_after: 1h}",
            "7: 'gate.on_rejected' takes either 'template' (send another template) or "
            "'retry_after' (try the same send again later), not both",
        ),
        (
            "url: https://g.example/\non_rejected: {retries: 2}",
            "7: 'gate.on_rejected' needs 'template' (send another template) or 'retry_after' "
            "(try the same send again later)",
        ),
        (
            "url: https://g.example/\non_rejected: {template: cart_later, retries: 2}",
            "7: 'gate.on_rejected' uses 'retries' only with 'retry_after'",
        ),
        (
            "url: https://g.example/\non_rejected: {retry_after: 0s}",
            "7: 'gate.on_rejected.retry_after' must be more than zero, got '0s'",
        ),
        (
            "url: https://g.example/\non_rejected: {retry_after: 31d}",
            "7: 'gate.on_rejected.retry_after' must be at most 30d, got '31d'",
        ),
        (
            "url: https://g.example/\non_rejected: {retry_after: 1h, retries: 11}",
            "7: 'gate.on_rejected.retries' should be less than or equal to 10",
        ),
        (
            "url: https://g.example/\non_timed_out: {retry_after: 1h}",
            "7: 'gate.on_timed_out' is only used with 'on_timeout: drop' (with release, "
            "timed-out sends go out as they are; set 'on_timeout: drop' or remove it)",
        ),
    ],
)
def test_mistakes_are_reported_at_their_line(tmp_path: Path, body: str, expected: str) -> None:
    assert _problems(tmp_path, _gate(body)) == [expected]


def test_every_problem_of_a_gate_is_listed(tmp_path: Path) -> None:
    # Given a gate with mistakes in several keys
    text = _gate(
        "url: http://crm-gate.example/g\n"
        "auth: {header: X-T, token: '${NOPE}'}\n"
        "actions:\n  - {id: a}\n  - {id: a}\n"
        "on_timed_out: {template: cart_later}"
    )
    # Then lint lists them all, by line
    assert [line.split(":")[0] for line in _problems(tmp_path, text)] == ["6", "7", "10", "11"]


def test_a_gate_in_a_rules_list_reports_its_own_lines(tmp_path: Path) -> None:
    # Given the good file with a second gated rule with a mistake
    text = GOOD + (
        "  - name: second\n"
        "    trigger: {event: X}\n"
        "    template: order_shipped\n"
        "    purpose: transactional\n"
        "    gate:\n"
        "      url: https://g.example/\n"
        "      timeout: 9d\n"
    )
    # Then only that rule fails, at the line of its timeout
    assert _problems(tmp_path, text) == ["29: 'rules[2].gate.timeout' must be at most 7d, got '9d'"]


def test_basic_auth_from_one_variable_is_checked_against_its_value(tmp_path: Path) -> None:
    # Given basic auth read whole from one variable
    text = _gate("url: https://g.example/\nauth: {basic: '${GATE_BASIC}'}")
    # Then it loads when the value holds USER:PASSWORD, or when the environment is not known
    assert _problems(tmp_path, text) == []
    assert load_rule_file(_write(tmp_path, text))[0].gate is not None
    # And not when the value has no ':'
    assert _problems(tmp_path, text, {"GATE_BASIC": "token-only"}) == [
        "7: basic auth is USER:PASSWORD, and this one has no ':' "
        "(e.g. basic: ${GATE_USER}:${GATE_PASSWORD})"
    ]


def test_follow_ups_may_retry_the_send_later(tmp_path: Path) -> None:
    # Given a gate whose rejected sends are retried once a day later and whose timed-out sends
    # are retried three times, two hours later each
    path = _write(
        tmp_path,
        _gate(
            "url: https://g.example/\non_timeout: drop\n"
            "on_rejected: {retry_after: 1d}\non_timed_out: {retry_after: 2h, retries: 3}"
        ),
    )
    # When it is loaded
    [rule] = load_rule_file(path, template_exists=_exists, environ=ENVIRON)
    # Then the retries are set and no template is
    gate = rule.gate
    assert gate is not None
    assert (gate.on_rejected, gate.on_timed_out) == (None, None)
    assert gate.retry_rejected == GateRetry(after=timedelta(days=1), times=1)
    assert gate.retry_timed_out == GateRetry(after=timedelta(hours=2), times=3)


@pytest.mark.parametrize(
    "config",
    [
        GateConfig(url="https://g.example/"),
        GateConfig(
            url="https://g.example/?k=${K}",
            auth=GateAuth(header="X-T", token="${T}"),
            secret_variable="S",
            timeout=timedelta(days=7),
            on_timeout=OnTimeout.DROP,
            actions=({"id": "a"}, {"id": "b", "n": [1, 2.5, None, {"x": True}]}),
            on_rejected="r",
            on_timed_out="t",
            source_path=Path("rules/cart.yaml"),
            source_line=12,
        ),
        GateConfig(
            url="https://g.example/",
            auth=GateAuth(basic="${U}:${P}"),
            timeout=timedelta(seconds=90, microseconds=500_000),
        ),
        GateConfig(
            url="https://g.example/",
            on_timeout=OnTimeout.DROP,
            retry_rejected=GateRetry(after=timedelta(days=1)),
            retry_timed_out=GateRetry(after=timedelta(minutes=90, seconds=0.5), times=3),
        ),
    ],
)
def test_gate_config_json_round_trip(config: GateConfig) -> None:
    # When a configuration is stored as JSON text and read back
    data = gate_config_json(config)
    back = gate_config_from_json(json.loads(json.dumps(data, allow_nan=False)))
    # Then it is the same, and the timeout is in seconds
    assert back == config
    assert data["timeout_s"] == config.timeout.total_seconds()
    assert data["on_timeout"] == config.on_timeout.value


def test_gate_config_json_is_plain_and_detached(tmp_path: Path) -> None:
    # Given a loaded gate
    path = _write(tmp_path, GOOD)
    gate = load_rule_file(path, environ=ENVIRON)[1].gate
    assert gate is not None
    # When stored
    data = gate_config_json(gate)
    # Then the JSON holds the references (never the values) and whole seconds
    assert data == {
        "url": "https://loyalty.example/crm-gate?key=${GATE_KEY}",
        "auth": {"basic": "${GATE_USER}:${GATE_PASSWORD}", "header": None, "token": None},
        "secret_variable": "GATE_SECRET",
        "timeout_s": 9000,
        "on_timeout": "drop",
        "actions": [dict(action) for action in gate.actions],
        "on_rejected": "cart_rejected_alt",
        "on_timed_out": "cart_later",
        "retry_rejected": None,
        "retry_timed_out": None,
        "source_path": str(path),
        "source_line": 10,
    }
    # And changing the stored actions does not change the rule's
    data["actions"][1]["limits"]["codes"].append("C")
    assert gate.actions[1]["limits"]["codes"] == ["A", "B"]


def test_gate_config_from_json_fills_in_defaults() -> None:
    assert gate_config_from_json({"url": "https://g.example/"}) == GateConfig(
        url="https://g.example/"
    )


def test_json_schema_describes_the_gate() -> None:
    definitions = rule_file_json_schema()["$defs"]
    assert definitions["RuleSpec"]["properties"]["gate"]["anyOf"][0] == {"$ref": "#/$defs/GateSpec"}
    gate = definitions["GateSpec"]
    assert gate["additionalProperties"] is False
    assert "required" not in gate  # url may come from the project's gate (_project.yaml)
    assert set(gate["properties"]) == {
        "url",
        "auth",
        "secret",
        "timeout",
        "on_timeout",
        "actions",
        "on_rejected",
        "on_timed_out",
    }
    assert gate["properties"]["on_timeout"]["enum"] == ["release", "drop"]
    timeout = gate["properties"]["timeout"]["anyOf"][0]
    assert timeout["type"] == "string" and "pattern" in timeout
    assert gate["dependentSchemas"]["on_timed_out"]["properties"]["on_timeout"] == {"const": "drop"}
    action = definitions["GateActionSpec"]
    assert action["required"] == ["id"] and action["additionalProperties"] is True
    assert len(definitions["GateAuthSpec"]["oneOf"]) == 2
    follow_up = definitions["GateFollowUpSpec"]
    assert follow_up["properties"]["template"]["anyOf"][0]["pattern"] == TEMPLATE_NAME_PATTERN
    retry_after = follow_up["properties"]["retry_after"]["anyOf"][0]
    assert retry_after["type"] == "string" and "pattern" in retry_after
    assert follow_up["properties"]["retries"]["anyOf"][0] == {
        "maximum": 10,
        "minimum": 1,
        "type": "integer",
    }
    # exactly one path: a template, or a retry (with its count)
    assert [choice["required"] for choice in follow_up["oneOf"]] == [["template"], ["retry_after"]]


def test_template_name_pattern_matches_the_rules() -> None:
    # The spec keeps its own copy (the rule model imports the spec); they must not drift apart
    assert TEMPLATE_NAME_PATTERN == RULE_TEMPLATE_NAME_PATTERN
