"""Console sessions: a random token in an HttpOnly cookie, its SHA-256 in the database, and a
CSRF token that every form of the session carries.

Before sign-in, the sign-in form is protected by a double-submit token (a cookie and a hidden
field that must match). Tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.console.models import ConsoleRole, ConsoleSession, ConsoleUser
from crm_notify.console.users import SignedInUser

#: The session cookie.
SESSION_COOKIE = "crm_console"
#: The double-submit cookie of the sign-in form.
SIGN_IN_CSRF_COOKIE = "crm_console_csrf"
#: How long a session lasts after sign-in.
SESSION_LIFETIME = timedelta(hours=12)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A random URL-safe token (32 bytes)."""
    return secrets.token_urlsafe(32)


def tokens_match(given: str | None, expected: str | None) -> bool:
    """Whether ``given`` equals ``expected`` (constant time; ``None`` never matches)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def start_session(session: Session, user: SignedInUser) -> str:
    """Open a session for ``user`` and return its cookie token (only its hash is stored)."""
    token = new_token()
    moment = now()
    session.execute(sa.delete(ConsoleSession).where(col(ConsoleSession.expires_at) < moment))
    session.add(
        ConsoleSession(
            token_hash=_digest(token),
            user_id=user.id,
            csrf_token=new_token(),
            created_at=moment,
            expires_at=moment + SESSION_LIFETIME,
        )
    )
    return token


def load_session(session: Session, token: str | None) -> tuple[SignedInUser, str] | None:
    """The signed-in user and the session's CSRF token, or ``None`` (no, unknown or expired
    session, or a deleted user)."""
    if not token or len(token) > 128:
        return None
    row = session.exec(
        select(ConsoleSession, ConsoleUser)
        .join(ConsoleUser, col(ConsoleUser.id) == col(ConsoleSession.user_id))
        .where(ConsoleSession.token_hash == _digest(token))
        .where(col(ConsoleSession.expires_at) > now())
    ).first()
    if row is None:
        return None
    console_session, user = row
    assert user.id is not None
    return SignedInUser(user.id, user.email, ConsoleRole(user.role)), console_session.csrf_token


def end_session(session: Session, token: str | None) -> None:
    """Sign the session of ``token`` out (nothing when there is none)."""
    if token:
        session.execute(
            sa.delete(ConsoleSession).where(col(ConsoleSession.token_hash) == _digest(token))
        )
