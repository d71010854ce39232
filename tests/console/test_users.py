"""Console accounts: Argon2id hashes, validation, sign-in checks and the users command."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.cli import main
from crm_notify.console import ConsoleUser, ConsoleUserError, authenticate, create_user
from crm_notify.console.models import ConsoleRole
from crm_notify.console.users import (
    LOCKOUT,
    MAX_FAILED_SIGN_INS,
    console_enabled,
    delete_user,
    list_users,
)
from crm_notify.db import session_scope

PASSWORD = "correct horse battery"


def test_a_user_is_stored_with_an_argon2id_hash_only(engine: Engine) -> None:
    # Given a new support user
    user = create_user(" Ada@Example.com ", PASSWORD, role="support", engine=engine)
    # Then the address is normalised and only an Argon2id hash of the password is stored
    assert (user.email, user.role) == ("ada@example.com", ConsoleRole.SUPPORT)
    with Session(engine) as session:
        row = session.exec(select(ConsoleUser)).one()
    assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash


@pytest.mark.parametrize(
    ("email", "password", "role", "message"),
    [
        ("not-an-address", PASSWORD, "admin", "not a valid email address"),
        ("ada@example.com", "short", "admin", "the password must have 12 to 1024 characters"),
        ("ada@example.com", PASSWORD, "owner", "role must be admin or support, not 'owner'"),
    ],
)
def test_bad_accounts_are_refused(
    engine: Engine, email: str, password: str, role: str, message: str
) -> None:
    with pytest.raises(ConsoleUserError, match=message):
        create_user(email, password, role=role, engine=engine)
    with Session(engine) as session:
        assert not console_enabled(session)


def test_sign_in_checks_the_password_and_a_taken_email_is_refused(engine: Engine) -> None:
    create_user("ada@example.com", PASSWORD, role="admin", engine=engine)
    with pytest.raises(ConsoleUserError, match="already exists"):
        create_user("ADA@example.com", PASSWORD, role="support", engine=engine)
    with session_scope(engine) as session:
        assert console_enabled(session)
        assert authenticate(session, "ada@example.com", "wrong password!") is None
        assert authenticate(session, "nobody@example.com", PASSWORD) is None
        user = authenticate(session, "ADA@example.com ", PASSWORD)
    assert user is not None and user.is_admin
    [(email, role, _created, last)] = list_users(engine=engine)
    assert (email, role) == ("ada@example.com", "admin") and last is not None
    delete_user("ada@example.com", engine=engine)
    assert list_users(engine=engine) == []


def test_users_command_creates_lists_and_deletes(make_settings: Any, engine: Engine) -> None:
    settings = make_settings()
    env = {"CRM_NOTIFY_DATABASE_URL": settings.database_url}
    runner = CliRunner()
    # When an admin creates a user with the password on stdin
    created = runner.invoke(
        main,
        ["users", "create", "bo@example.com", "--role", "support", "--password-stdin"],
        input=PASSWORD + "\n",
        env=env,
    )
    assert created.exit_code == 0, created.output
    assert "created support bo@example.com; sign in at http" in created.output
    # Then it is listed, a second one is refused with a clear error, and it can be deleted
    listed = runner.invoke(main, ["users", "list"], env=env)
    assert listed.output.startswith("bo@example.com\tsupport\tcreated ")
    again = runner.invoke(
        main,
        ["users", "create", "bo@example.com", "--role", "admin", "--password-stdin"],
        input=PASSWORD + "\n",
        env=env,
    )
    assert again.exit_code == 1 and "a console user bo@example.com already exists" in again.output
    # And a password typed at the prompt is asked twice
    prompted = runner.invoke(
        main,
        ["users", "create", "cy@example.com", "--role", "admin"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
        env=env,
    )
    assert prompted.exit_code == 0, prompted.output
    assert runner.invoke(main, ["users", "delete", "bo@example.com"], env=env).exit_code == 0
    assert [row[0] for row in list_users(engine=engine)] == ["cy@example.com"]


def test_five_wrong_passwords_lock_the_account_for_a_while(engine: Engine) -> None:
    create_user("ada@example.com", PASSWORD, role="support", engine=engine)
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    with freeze_time(start) as clock:
        # Given four wrong passwords, the right one still works and resets the count
        for _ in range(MAX_FAILED_SIGN_INS - 1):
            with session_scope(engine) as session:
                assert authenticate(session, "ada@example.com", "wrong password!") is None
        with session_scope(engine) as session:
            assert authenticate(session, "ada@example.com", PASSWORD) is not None
        # When five wrong ones come in a row
        for _ in range(MAX_FAILED_SIGN_INS):
            with session_scope(engine) as session:
                assert authenticate(session, "ada@example.com", "wrong password!") is None
        # Then even the right password is refused until the lockout has passed
        with session_scope(engine) as session:
            assert authenticate(session, "ada@example.com", PASSWORD) is None
        clock.move_to(start + LOCKOUT - timedelta(seconds=1))
        with session_scope(engine) as session:
            assert authenticate(session, "ada@example.com", PASSWORD) is None
        clock.move_to(start + LOCKOUT + timedelta(seconds=1))
        with session_scope(engine) as session:
            assert authenticate(session, "ada@example.com", PASSWORD) is not None
