"""Without any console user the console is off."""

from __future__ import annotations

import httpx

from tests.console.conftest import Console


def test_the_console_is_off_until_a_user_exists(console_app: Console) -> None:
    for path in ("/console", "/console/sign-in", "/console/contacts/1"):
        answer = httpx.get(console_app.url + path)
        assert answer.status_code == 404
        assert "crm-notify users create EMAIL --role admin" in answer.text
