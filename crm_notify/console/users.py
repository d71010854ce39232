"""Console users: created from the CLI, signed in with an Argon2id-hashed password.

The console is off until at least one user exists (:func:`console_enabled`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from crm_notify.clock import as_utc, now
from crm_notify.console.models import ConsoleRole, ConsoleUser
from crm_notify.db import session_scope
from crm_notify.errors import CrmNotifyError

logger = logging.getLogger(__name__)

#: Wrong passwords in a row that lock an account, and for how long.
MAX_FAILED_SIGN_INS = 5
LOCKOUT = timedelta(minutes=15)
#: Shortest password accepted.
MIN_PASSWORD_CHARS = 12
#: Longest password accepted (the hash's input stays bounded).
MAX_PASSWORD_CHARS = 1024
#: Argon2id with the library's defaults (RFC 9106 "second recommended" parameters).
_HASHER = PasswordHasher()
#: Verified against when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("crm-notify: no such user")


class ConsoleUserError(CrmNotifyError):
    """A console user cannot be created or changed as asked."""


@dataclass(frozen=True, slots=True)
class SignedInUser:
    """Who is signed in: id, email and role."""

    id: int
    email: str
    role: ConsoleRole

    @property
    def is_admin(self) -> bool:
        """Whether the user may change consent, suppression and rules."""
        return self.role is ConsoleRole.ADMIN


def normalise_email(email: str) -> str:
    """``email`` checked and lower-cased.

    Raises:
        ConsoleUserError: not a valid address.
    """
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ConsoleUserError(f"not a valid email address: {exc}") from exc


def _lookup_form(email: str) -> str:
    """``email`` as :func:`create_user` stored it (or lower-cased, when it is not valid)."""
    try:
        return normalise_email(email)
    except ConsoleUserError:
        return email.strip().lower()


def create_user(email: str, password: str, *, role: str, engine: Engine) -> SignedInUser:
    """Create a console user.

    Raises:
        ConsoleUserError: a bad email, role or password, or the email is taken.
    """
    address = normalise_email(email)
    try:
        chosen = ConsoleRole(role)
    except ValueError:
        raise ConsoleUserError(f"role must be admin or support, not {role!r}") from None
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ConsoleUserError(
            f"the password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )
    with session_scope(engine) as session:
        if session.exec(select(ConsoleUser).where(ConsoleUser.email == address)).first():
            raise ConsoleUserError(f"a console user {address} already exists")
        user = ConsoleUser(email=address, role=chosen.value, password_hash=_HASHER.hash(password))
        session.add(user)
        session.flush()
        assert user.id is not None
        return SignedInUser(user.id, address, chosen)


def delete_user(email: str, *, engine: Engine) -> None:
    """Delete a console user and their sessions.

    Raises:
        ConsoleUserError: no such user.
    """
    from crm_notify.console.models import ConsoleSession

    address = _lookup_form(email)
    with session_scope(engine) as session:
        user = session.exec(select(ConsoleUser).where(ConsoleUser.email == address)).first()
        if user is None:
            raise ConsoleUserError(f"no console user {address}")
        for row in session.exec(select(ConsoleSession).where(ConsoleSession.user_id == user.id)):
            session.delete(row)
        session.delete(user)


def list_users(*, engine: Engine) -> list[tuple[str, str, datetime, datetime | None]]:
    """Every user: (email, role, created, last sign-in), by email."""
    with session_scope(engine) as session:
        rows = session.exec(select(ConsoleUser).order_by(col(ConsoleUser.email))).all()
        return [(row.email, row.role, row.created_at, row.last_sign_in_at) for row in rows]


def console_enabled(session: Session) -> bool:
    """Whether at least one console user exists (the console is off otherwise)."""
    return bool(session.exec(select(func.count()).select_from(ConsoleUser)).one())


def authenticate(session: Session, email: str, password: str) -> SignedInUser | None:
    """The user whose email and password these are, or ``None`` (the same time either way).

    :data:`MAX_FAILED_SIGN_INS` wrong passwords in a row lock the account for
    :data:`LOCKOUT` (even the right password is refused then). A hash made with older
    parameters is replaced by one with the current ones.
    """
    address = _lookup_form(email)
    found = session.exec(select(ConsoleUser).where(ConsoleUser.email == address)).first()
    if len(password) > MAX_PASSWORD_CHARS:
        return None
    try:
        _HASHER.verify(found.password_hash if found else _DUMMY_HASH, password)
        verified = True
    except (VerificationError, InvalidHashError):
        verified = False
    if found is None:
        return None
    # Locked only now, for the counters: not while the hash ran.
    user = session.exec(
        select(ConsoleUser).where(ConsoleUser.id == found.id).with_for_update()
    ).one()
    session.refresh(user)
    assert user.id is not None
    moment = now()
    if user.locked_until is not None and as_utc(user.locked_until) > moment:
        return None
    if not verified:
        user.failed_sign_ins += 1
        if user.failed_sign_ins >= MAX_FAILED_SIGN_INS:
            user.failed_sign_ins = 0
            user.locked_until = moment + LOCKOUT
            logger.warning("console user %s locked after repeated wrong passwords", user.id)
        session.add(user)
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    user.failed_sign_ins = 0
    user.locked_until = None
    user.last_sign_in_at = moment
    session.add(user)
    return SignedInUser(user.id, user.email, ConsoleRole(user.role))
