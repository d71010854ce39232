"""The ``crm-notify`` command line, run as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.servers import write_tree
from tests.support.service import run_cli, service_env


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return service_env(
        {
            "CRM_NOTIFY_DATABASE_URL": database_url,
            "CRM_NOTIFY_RULES_DIR": str(ROOT / "rules"),
            "CRM_NOTIFY_TEMPLATES_DIR": str(ROOT / "templates"),
            "CRM_NOTIFY_VAR_DIR": str(tmp_path / "var"),
            "CRM_NOTIFY_ESP_URL": f"file://{tmp_path / 'outbox'}",
        }
    )


def test_help_lists_every_command(env: dict[str, str]) -> None:
    out = run_cli(env, "--help").stdout
    for command in ("db", "api-keys", "serve", "worker", "rules", "preview", "events"):
        assert command in out


def test_commands_refuse_an_unmigrated_database(env: dict[str, str]) -> None:
    result = run_cli(env, "api-keys", "create", "shop", check=False)
    assert result.returncode == 1
    assert "crm-notify db upgrade" in result.stderr


def test_api_key_is_printed_on_the_last_line_and_stored_hashed(env: dict[str, str]) -> None:
    # Given a migrated database
    run_cli(env, "db", "upgrade")
    # When a key is created
    result = run_cli(env, "api-keys", "create", "shop")
    key = result.stdout.strip().splitlines()[-1]
    # Then it is on the last line, listed by name and prefix only, and names are unique
    assert key.startswith("cn_") and len(key) > 30
    listing = run_cli(env, "api-keys", "list").stdout
    assert "shop" in listing and key not in listing
    again = run_cli(env, "api-keys", "create", "shop", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_invalid_setting_names_the_variable(env: dict[str, str]) -> None:
    result = run_cli(dict(env, CRM_NOTIFY_ESP_URL="pigeon://x"), "db", "upgrade", check=False)
    assert result.returncode == 2
    assert "CRM_NOTIFY_ESP_URL" in result.stderr


def test_rules_lint_reports_file_and_line(env: dict[str, str], tmp_path: Path) -> None:
    # Given a rule file with a typo on line 4 and one naming a missing template
    write_tree(
        tmp_path / "bad",
        {
            "a.yaml": "name: a\ntrigger:\n  event: Order Done\ntempalte: x\npurpose: marketing\n",
            "b.yaml": "name: b\ntrigger: {event: X}\ntemplate: nope\npurpose: transactional\n",
        },
    )
    # When linted
    result = run_cli(env, "rules", "lint", str(tmp_path / "bad"), check=False)
    # Then it fails, naming each file and line
    assert result.returncode == 1
    assert f"{tmp_path / 'bad' / 'a.yaml'}:4:" in result.stdout
    assert "did you mean 'template'" in result.stdout
    assert f"{tmp_path / 'bad' / 'b.yaml'}:3:" in result.stdout


def test_shipped_rules_lint_clean(env: dict[str, str]) -> None:
    result = run_cli(env, "rules", "lint")
    assert "4 rules OK" in result.stdout


def test_rules_schema_is_json_schema(env: dict[str, str]) -> None:
    schema = json.loads(run_cli(env, "rules", "schema").stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")


def test_serve_refuses_to_start_with_a_bad_rule_file(env: dict[str, str], tmp_path: Path) -> None:
    # Given a rules folder whose file has a YAML error on line 3
    write_tree(tmp_path / "bad", {"a.yaml": "name: a\ntrigger:\n  event: [unclosed\n"})
    run_cli(env, "db", "upgrade")
    # When the service starts, Then it exits at once naming the file
    result = run_cli(dict(env, CRM_NOTIFY_RULES_DIR=str(tmp_path / "bad")), "serve", check=False)
    assert result.returncode == 2
    assert "a.yaml" in result.stderr


def test_events_send_and_preview(env: dict[str, str], tmp_path: Path) -> None:
    # Given a migrated database and a JSON Lines file of Segment calls
    run_cli(env, "db", "upgrade")
    calls = [
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "m1",
            "traits": {"email": "alice@example.com", "first_name": "Alice", "language": "de"},
        },
        {
            "type": "track",
            "userId": "u1",
            "messageId": "m2",
            "event": "Order Updated",
            "properties": {"order_id": "A1", "status": "shipped", "tracking_number": "TN"},
        },
    ]
    events_file = tmp_path / "calls.jsonl"
    events_file.write_text("\n".join(json.dumps(c) for c in calls))
    # When they are sent from the CLI
    result = run_cli(env, "events", "send", str(events_file))
    # Then both are accepted and the two emails are delivered (embedded: right away)
    assert "accepted 2, duplicates 0, notifications 2" in result.stdout
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 2
    # And sending the file again changes nothing
    assert "accepted 0, duplicates 2" in run_cli(env, "events", "send", str(events_file)).stdout
    # When the shipped rule is previewed for the contact
    html_out = tmp_path / "preview.html"
    preview = run_cli(
        env,
        "preview",
        "order-shipped",
        "--contact",
        "alice@example.com",
        "--html-out",
        str(html_out),
    ).stdout
    # Then the German variant renders with the stored order, and the HTML is written
    assert "Verdict: would be sent" in preview
    assert "Subject: Ihre Bestellung A1 ist unterwegs" in preview
    assert "Sendungsnummer: TN" in preview
    assert "<strong>A1</strong>" in html_out.read_text()


def test_preview_of_unknown_contact_or_rule_is_a_clear_error(env: dict[str, str]) -> None:
    run_cli(env, "db", "upgrade")
    unknown_contact = run_cli(env, "preview", "welcome", "--contact", "x@example.com", check=False)
    assert unknown_contact.returncode == 1 and "no contact" in unknown_contact.stderr
    unknown_rule = run_cli(env, "preview", "nope", "--contact", "x@example.com", check=False)
    assert unknown_rule.returncode == 1 and "no rule named 'nope'" in unknown_rule.stderr
