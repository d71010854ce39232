"""The project-level gate (``_project.yaml``): every rule is gated by it, a rule's own ``gate:``
is merged over it (scalar keys win, actions extend the project's), ``gate: false`` opts out,
mistakes are reported at their file and line, and through the real runtime a rule without its
own gate is held."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.actions.signing import new_secret
from crm_notify.cli import main
from crm_notify.errors import RuleFileError
from crm_notify.events.schemas import parse_call
from crm_notify.gates.model import Gate, GateAuth, GateConfig, OnTimeout
from crm_notify.outbox.models import Notification, NotificationStatus
from crm_notify.rules import project_file_json_schema
from crm_notify.rules.loader import (
    lint_rules,
    load_rule_file,
    load_rules,
    rule_file_json_schema,
    rule_files,
)
from tests.conftest import ROOT
from tests.esp._api_server import ApiServer

SECRET = new_secret()
ENVIRON = {
    "GATE_KEY": "k",
    "GATE_USER": "crm",
    "GATE_PASSWORD": "pw",
    "GATE_TOKEN": "t0k",
    "GATE_SECRET": SECRET,
}
TEMPLATES = {"order_shipped", "cart_rejected_alt", "cart_later"}

#: The project's gate; the line of each key is in its comment.
PROJECT = """\
gate:
  url: https://gate.shop.example/crm?key=${GATE_KEY}
  auth: {basic: "${GATE_USER}:${GATE_PASSWORD}"}
  secret: ${GATE_SECRET}
  timeout: 2h
  on_timeout: drop
  actions:
    - {id: consent-check}
    - {id: fraud-check, level: strict}
  on_rejected: {template: cart_rejected_alt}
  on_timed_out: {template: cart_later}
"""
PROJECT_CONFIG = GateConfig(
    url="https://gate.shop.example/crm?key=${GATE_KEY}",
    auth=GateAuth(basic="${GATE_USER}:${GATE_PASSWORD}"),
    secret_variable="GATE_SECRET",
    timeout=timedelta(hours=2),
    on_timeout=OnTimeout.DROP,
    actions=({"id": "consent-check"}, {"id": "fraud-check", "level": "strict"}),
    on_rejected="cart_rejected_alt",
    on_timed_out="cart_later",
    source_line=1,
)
PLAIN = """\
name: plain
trigger: {event: Order Completed}
template: order_shipped
purpose: transactional
"""


def _rule(name: str, gate: str) -> str:
    """A rule whose ``gate:`` holds ``gate`` (a block, or ``false``/``true``); ``gate`` is line 5,
    the block starts at line 6."""
    head = (
        f"name: {name}\ntrigger: {{event: Order Completed}}\ntemplate: order_shipped\n"
        "purpose: transactional\n"
    )
    if gate in ("false", "true"):
        return head + f"gate: {gate}\n"
    return head + "gate:\n" + "".join(f"  {line}\n" for line in gate.strip("\n").splitlines())


def _rules_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    rules_dir = tmp_path / "rules"
    for name, text in files.items():
        path = rules_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    return rules_dir


def _exists(name: str) -> bool:
    return name in TEMPLATES


def _gates(rules_dir: Path) -> dict[str, GateConfig | None]:
    rules = load_rules(rules_dir, template_exists=_exists, environ=ENVIRON).rules
    return {rule.name: rule.gate for rule in rules}


def _problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    return [
        f"{err.path.name}:{err.line}: {err.message}"
        + (f" ({err.suggestion})" if err.suggestion else "")
        for err in lint_rules(
            path, template_exists=_exists, environ=ENVIRON if environ is None else environ
        )
    ]


# --- merging ----------------------------------------------------------------------------------


def test_the_project_gate_applies_to_a_rule_without_its_own(tmp_path: Path) -> None:
    # Given a project gate and a rule with no gate of its own
    rules_dir = _rules_dir(tmp_path, {"_project.yaml": PROJECT, "plain.yaml": PLAIN})
    # When the rules load
    gates = _gates(rules_dir)
    # Then the rule has the project's gate as it is, located in the project file
    assert gates == {
        "plain": GateConfig(
            **{**_fields(PROJECT_CONFIG), "source_path": rules_dir / "_project.yaml"}
        )
    }


def test_a_rules_gate_is_merged_over_the_projects(tmp_path: Path) -> None:
    # Given a rule that changes some keys, turns a follow-up off and adds actions
    rule = _rule(
        "cart",
        """
timeout: 30m
auth: {header: X-Gate-Token, token: "${GATE_TOKEN}"}
on_rejected: null
actions:
  - {id: add-promo, field: promo_code}
  - {id: check-stock}
""",
    )
    rules_dir = _rules_dir(tmp_path, {"_project.yaml": PROJECT, "cart.yaml": rule})
    # When the rules load
    (gate,) = _gates(rules_dir).values()
    # Then the keys the rule writes win, the others are the project's, and the rule's actions
    # follow the project's, in file order; the gate is located at the rule's gate: key
    assert gate == GateConfig(
        url=PROJECT_CONFIG.url,
        auth=GateAuth(header="X-Gate-Token", token="${GATE_TOKEN}"),
        secret_variable="GATE_SECRET",
        timeout=timedelta(minutes=30),
        on_timeout=OnTimeout.DROP,
        actions=(
            {"id": "consent-check"},
            {"id": "fraud-check", "level": "strict"},
            {"id": "add-promo", "field": "promo_code"},
            {"id": "check-stock"},
        ),
        on_rejected=None,
        on_timed_out="cart_later",
        source_path=rules_dir / "cart.yaml",
        source_line=5,
    )


def test_a_rule_may_change_the_url_and_the_timeout_policy(tmp_path: Path) -> None:
    # Given a rule with its own endpoint, released on timeout (so no timed-out follow-up)
    rule = _rule(
        "own",
        """
url: https://fraud.shop.example/gate
on_timeout: release
on_timed_out: null
auth: null
""",
    )
    rules_dir = _rules_dir(tmp_path, {"_project.yaml": PROJECT, "own.yaml": rule})
    # Then those keys are the rule's, and the rest (actions included) the project's
    (gate,) = _gates(rules_dir).values()
    assert gate is not None
    assert (gate.url, gate.on_timeout, gate.on_timed_out, gate.auth) == (
        "https://fraud.shop.example/gate",
        OnTimeout.RELEASE,
        None,
        None,
    )
    assert (gate.timeout, gate.secret_variable, gate.actions, gate.on_rejected) == (
        PROJECT_CONFIG.timeout,
        "GATE_SECRET",
        PROJECT_CONFIG.actions,
        "cart_rejected_alt",
    )


def test_gate_false_opts_a_rule_out(tmp_path: Path) -> None:
    # Given a project gate, a plain rule and one with gate: false
    rules_dir = _rules_dir(
        tmp_path,
        {"_project.yaml": PROJECT, "plain.yaml": PLAIN, "free.yaml": _rule("free", "false")},
    )
    # Then only the plain rule is gated
    gates = _gates(rules_dir)
    assert gates["free"] is None
    assert gates["plain"] is not None and gates["plain"].url == PROJECT_CONFIG.url
    # And without a project file gate: false is simply no gate
    (tmp_path / "rules" / "_project.yaml").unlink()
    assert _gates(rules_dir) == {"free": None, "plain": None}


def test_gate_true_is_refused(tmp_path: Path) -> None:
    rules_dir = _rules_dir(tmp_path, {"_project.yaml": PROJECT, "r.yaml": _rule("r", "true")})
    assert _problems(rules_dir) == [
        "r.yaml:5: 'gate' should be a mapping (the gate), or false (no gate, not even the "
        "project's), got boolean true"
    ]


def test_an_action_id_of_the_project_used_again_is_an_error_at_the_rules_line(
    tmp_path: Path,
) -> None:
    # Given a rule whose second action reuses an id of the project's gate
    rule = _rule("cart", "actions:\n  - {id: add-promo}\n  - {id: fraud-check}")
    rules_dir = _rules_dir(tmp_path, {"_project.yaml": PROJECT, "cart.yaml": rule})
    project = rules_dir / "_project.yaml"
    # Then lint names the rule's line and the project file's
    assert _problems(rules_dir) == [
        f"cart.yaml:8: action id 'fraud-check' is already used by the project's gate "
        f"({project}:9) (the rule's actions extend the project's, and action ids must be "
        "unique within a gate: use another id)"
    ]
    # And start-up stops there, with file and line
    with pytest.raises(RuleFileError) as caught:
        load_rules(rules_dir, environ=ENVIRON)
    assert str(caught.value).startswith(f"{rules_dir / 'cart.yaml'}:8: action id 'fraud-check'")
    # And an id used twice within the rule is reported as before
    rule = _rule("cart", "actions:\n  - {id: a}\n  - {id: a}")
    (rules_dir / "cart.yaml").write_text(rule, "utf-8")
    assert _problems(rules_dir) == [
        "cart.yaml:8: action id 'a' is already used by 'gate.actions[0]' (action ids must be "
        "unique within a gate)"
    ]


def test_dropping_the_projects_timed_out_follow_up_needs_saying_so(tmp_path: Path) -> None:
    # Given a rule that releases on timeout under a project gate with an on_timed_out template
    rule = _rule("cart", "on_timeout: release")
    rules_dir = _rules_dir(tmp_path, {"_project.yaml": PROJECT, "cart.yaml": rule})
    # Then its on_timeout line is blamed, naming the project's on_timed_out
    assert _problems(rules_dir) == [
        "cart.yaml:6: 'gate.on_timeout: release' leaves the project's 'on_timed_out' "
        f"({rules_dir / '_project.yaml'}:11) unused (with release, timed-out sends go out as "
        "they are; add 'on_timed_out: null' here, or keep 'on_timeout: drop')"
    ]
    # And a rule adding on_timed_out under the project's drop is fine
    rule = _rule("cart", "on_timed_out: {template: order_shipped}")
    (rules_dir / "cart.yaml").write_text(rule, "utf-8")
    (gate,) = _gates(rules_dir).values()
    assert gate is not None and (gate.on_timeout, gate.on_timed_out) == (
        OnTimeout.DROP,
        "order_shipped",
    )


def test_without_a_project_file_nothing_changes(tmp_path: Path) -> None:
    # Given rule files but no project file
    rules_dir = _rules_dir(
        tmp_path, {"plain.yaml": PLAIN, "own.yaml": _rule("own", "url: https://g.example/")}
    )
    # Then a rule without a gate has none, and one with a gate has exactly its own
    assert _gates(rules_dir) == {
        "own": GateConfig(
            url="https://g.example/", source_path=rules_dir / "own.yaml", source_line=5
        ),
        "plain": None,
    }
    # And a rule's gate needs its url
    (rules_dir / "own.yaml").write_text(_rule("own", "timeout: 1h\non_timeout: drop"), "utf-8")
    assert _problems(rules_dir) == ["own.yaml:5: missing required key 'url' in 'gate'"]


# --- the project file -------------------------------------------------------------------------


_NOT_SET = "(set it in the service's environment; the value stays out of the rule file)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gaet:\n  url: https://g.example/\n", "1: unknown key 'gaet' (did you mean 'gate'?)"),
        ("rules: []\n", "1: unknown key 'rules' (expected one of: gate)"),
        ("gate:\n  urll: https://g.example/\n", "2: unknown key 'urll' (did you mean 'url'?)"),
        ("gate:\n  timeout: 1h\n", "1: missing required key 'url' in 'gate'"),
        (
            "gate:\n  url: http://gate.example/\n",
            "2: plain http:// is allowed only to loopback addresses, not 'gate.example' "
            "(use https://)",
        ),
        (
            "gate:\n  url: https://g.example/\n  timeout: 8d\n",
            "3: 'gate.timeout' must be at most 7d, got '8d'",
        ),
        (
            "gate:\n  url: https://g.example/?k=${NOPE}\n",
            f"2: the URL uses ${{NOPE}}, but NOPE is not set {_NOT_SET}",
        ),
        (
            "gate:\n  url: https://g.example/\n  on_timed_out: {template: cart_later}\n",
            "3: 'gate.on_timed_out' is only used with 'on_timeout: drop' (with release, "
            "timed-out sends go out as they are; set 'on_timeout: drop' or remove it)",
        ),
        (
            "gate:\n  url: https://g.example/\n  on_rejected: {template: nope}\n",
            "3: template 'nope' does not exist (create templates/nope/ or fix the name)",
        ),
        (
            "gate:\n  url: https://g.example/\n  actions:\n    - {id: a}\n    - {id: a}\n",
            "5: action id 'a' is already used by 'gate.actions[0]' (action ids must be unique "
            "within a gate)",
        ),
        (
            "- gate\n",
            "1: the project file must be a mapping, got list (write 'gate:' with the gate of "
            "every rule)",
        ),
    ],
)
def test_mistakes_in_the_project_file_are_reported_at_their_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    # Given a project file with a mistake, a plain rule and a rule extending the project's gate
    rule = _rule("cart", "actions:\n  - {id: add-promo}")
    rules_dir = _rules_dir(
        tmp_path, {"_project.yaml": text, "plain.yaml": PLAIN, "cart.yaml": rule}
    )
    project = rules_dir / "_project.yaml"
    # Then lint reports it in the project file only (the rules are not blamed for it)
    assert _problems(rules_dir) == [f"_project.yaml:{expected}"]
    # And start-up stops at it, with file and line
    with pytest.raises(RuleFileError) as caught:
        load_rules(rules_dir, template_exists=_exists, environ=ENVIRON)
    assert str(caught.value).startswith(f"{project}:{expected.split(' (')[0]}")


def test_the_environment_of_the_project_gate_is_checked_only_when_given(tmp_path: Path) -> None:
    rules_dir = _rules_dir(tmp_path, {"_project.yaml": PROJECT, "plain.yaml": PLAIN})
    # Then without the environment (rules test, other tools) the project gate loads
    assert load_rules(rules_dir).rules[0].gate is not None
    # And with an empty one each variable is missing, at its line in the project file
    assert [line.split(" (")[0] for line in _problems(rules_dir, environ={})] == [
        "_project.yaml:2: the URL uses ${GATE_KEY}, but GATE_KEY is not set",
        "_project.yaml:3: basic auth uses ${GATE_USER}, but GATE_USER is not set",
        "_project.yaml:3: basic auth uses ${GATE_PASSWORD}, but GATE_PASSWORD is not set",
        "_project.yaml:4: the secret uses ${GATE_SECRET}, but GATE_SECRET is not set",
    ]


def test_the_project_file_is_not_a_rule_file(tmp_path: Path) -> None:
    # Given a rules directory with a project file, a rule, and the rule's test file
    rules_dir = _rules_dir(
        tmp_path,
        {
            "_project.yaml": PROJECT,
            "plain.yaml": PLAIN,
            "plain.test.yaml": "cases: []\n",
            "more/other.yaml": _rule("other", "false"),
        },
    )
    # Then only the rule files are rule files
    assert rule_files(rules_dir) == [rules_dir / "more/other.yaml", rules_dir / "plain.yaml"]
    assert rule_files(rules_dir / "_project.yaml") == []
    # And linting the project file alone checks it (and no rule)
    assert _problems(rules_dir / "_project.yaml") == []
    (rules_dir / "_project.yaml").write_text("gate: {}\n", "utf-8")
    assert _problems(rules_dir / "_project.yaml") == [
        "_project.yaml:1: missing required key 'url' in 'gate'"
    ]


def test_a_single_rule_file_takes_the_project_file_next_to_it(tmp_path: Path) -> None:
    rules_dir = _rules_dir(tmp_path, {"_project.yaml": PROJECT, "plain.yaml": PLAIN})
    (rule,) = load_rule_file(rules_dir / "plain.yaml", environ=ENVIRON)
    assert rule.gate is not None and rule.gate.actions == PROJECT_CONFIG.actions
    assert _problems(rules_dir / "plain.yaml") == []


def test_a_project_file_elsewhere_is_an_error(tmp_path: Path) -> None:
    # Given a project file in a sub-folder, and two at the top
    rules_dir = _rules_dir(
        tmp_path,
        {
            "_project.yaml": PROJECT,
            "_project.yml": PROJECT,
            "plain.yaml": PLAIN,
            "shop/_project.yaml": PROJECT,
        },
    )
    # Then both mistakes are reported, and the top _project.yaml still applies
    assert _problems(rules_dir) == [
        f"_project.yml:None: there is a project file already: {rules_dir / '_project.yaml'} "
        "(keep one of them)",
        "_project.yaml:None: '_project.yaml' is a project file, not a rule file (only the one "
        "at the top of the rules directory is read: move it there)",
    ]


def test_json_schemas(tmp_path: Path) -> None:
    # The rule file's gate may be false, and its url may come from the project
    definitions = rule_file_json_schema()["$defs"]
    gate = definitions["RuleSpec"]["properties"]["gate"]
    assert gate["anyOf"] == [
        {"$ref": "#/$defs/GateSpec"},
        {"const": False, "type": "boolean"},
        {"type": "null"},
    ]
    assert "required" not in definitions["GateSpec"]
    # The project file holds a gate whose url is required
    schema = project_file_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"gate"}
    project_gate = schema["$defs"]["ProjectGateSpec"]
    assert project_gate["required"] == ["url"]
    assert project_gate["dependentSchemas"]["on_timed_out"]["required"] == ["on_timeout"]
    # And `crm-notify rules schema --project` prints it
    result = CliRunner().invoke(main, ["rules", "schema", "--project"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(json.dumps(schema))


def test_rule_lint_and_rule_tests_work_with_a_project_file(tmp_path: Path) -> None:
    # Given the sample rules, their tests, and a project gate (to a loopback endpoint)
    rules_dir = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules_dir)
    (rules_dir / "_project.yaml").write_text(
        "gate:\n  url: http://127.0.0.1:9/gate\n  actions: [{id: consent-check}]\n", "utf-8"
    )
    env = {
        "CRM_NOTIFY_RULES_DIR": str(rules_dir),
        "CRM_NOTIFY_TEMPLATES_DIR": str(ROOT / "templates"),
        "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
        "CRM_NOTIFY_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
    }
    runner = CliRunner()
    # Then lint passes and counts the rules (not the project file)
    lint = runner.invoke(main, ["rules", "lint"], env=env)
    assert lint.exit_code == 0, lint.output
    assert lint.output.startswith("4 rules OK in ")
    # And the rule tests run (a gated rule is tested as ungated)
    tests = runner.invoke(main, ["rules", "test"], env=env)
    assert tests.exit_code == 0, tests.output


# --- through the runtime ----------------------------------------------------------------------


RUNTIME_RULES = {
    "welcome.yaml": """\
name: welcome-gated
trigger: {identify: {first: true}}
template: welcome
purpose: transactional
""",
    "order_confirmed.yaml": """\
name: order-confirmed
trigger: {event: Order Completed}
template: welcome
purpose: transactional
gate:
  actions: [{id: add-promo, field: promo_code}]
""",
    "order_note.yaml": """\
name: order-note
trigger: {event: Order Completed}
template: welcome
purpose: transactional
gate: false
""",
}


def _call(obj: dict[str, Any]) -> Any:
    obj = {"userId": "u1", **obj}
    obj.setdefault("timestamp", datetime.now(UTC).isoformat())
    return parse_call(obj, type_hint=None, received_at=datetime.now(UTC))


def test_the_runtime_holds_a_rule_without_its_own_gate_under_the_projects(
    tmp_path: Path, make_settings: Any, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crm_notify.runtime import Runtime

    with ApiServer() as integration:
        # Given a project gate pointing at a real HTTP server, and three rules: one without a
        # gate, one extending the project's actions, one opting out
        project = (
            f"gate:\n  url: {integration.url}/crm-gate\n"
            '  auth: {header: X-Gate-Token, token: "${GATE_TOKEN}"}\n'
            "  actions: [{id: consent-check}]\n"
        )
        rules_dir = _rules_dir(tmp_path, {"_project.yaml": project, **RUNTIME_RULES})
        monkeypatch.setenv("GATE_TOKEN", "t0k")
        runtime = Runtime.from_settings(
            make_settings(rules_dir=rules_dir, webhook_secret=SECRET), engine=engine
        )
        try:
            # When a contact signs up and completes an order
            runtime.intake.ingest(
                [
                    _call({"type": "identify", "traits": {"email": "ada@example.com"}}),
                    _call({"type": "track", "event": "Order Completed", "properties": {}}),
                ]
            )
            # Then the two gated rules' sends are held, each under its own gate, and the
            # opted-out rule's went on
            with Session(engine) as session:
                rows = {
                    row.rule: row
                    for row in session.exec(select(Notification).order_by(col(Notification.id)))
                }
                gates = {
                    gate.rule: gate for gate in session.exec(select(Gate).order_by(col(Gate.id)))
                }
            assert rows["welcome-gated"].status == NotificationStatus.GATED
            assert rows["order-confirmed"].status == NotificationStatus.GATED
            assert rows["order-note"].status != NotificationStatus.GATED
            assert rows["order-note"].gate_id is None
            assert set(gates) == {"welcome-gated", "order-confirmed"}
            assert rows["welcome-gated"].gate_id == gates["welcome-gated"].id
            # And when the gate runner runs, the integration hears of both, with the
            # project's actions, extended by the rule's
            runtime.gate_runner.run_once()
        finally:
            runtime.close()
        bodies = {request.json["rule"]: request for request in integration.requests}
    assert set(bodies) == {"welcome-gated", "order-confirmed"}
    assert bodies["welcome-gated"].json["actions"] == [{"id": "consent-check"}]
    assert bodies["order-confirmed"].json["actions"] == [
        {"id": "consent-check"},
        {"id": "add-promo", "field": "promo_code"},
    ]
    assert all(request.headers["x-gate-token"] == "t0k" for request in bodies.values())


def _fields(config: GateConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in GateConfig.__dataclass_fields__}
