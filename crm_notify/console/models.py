"""Console accounts and their sign-in sessions."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import utc_column


class ConsoleRole(enum.StrEnum):
    """What a console user may do: ``support`` reads and previews; ``admin`` also changes
    consent and suppression (and, later, rules)."""

    SUPPORT = "support"
    ADMIN = "admin"


class ConsoleUser(SQLModel, table=True):
    """A person who signs in to ``/console``; the password is stored as an Argon2id hash.

    ``failed_sign_ins`` counts wrong passwords since the last success; at
    :data:`~crm_notify.console.users.MAX_FAILED_SIGN_INS` the account is locked until
    ``locked_until``.
    """

    __tablename__ = "console_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    role: str = Field(max_length=16)
    password_hash: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
    last_sign_in_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    failed_sign_ins: int = 0
    locked_until: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))


class ConsoleSession(SQLModel, table=True):
    """One signed-in browser: the SHA-256 of its cookie's token (never the token), the CSRF
    token its forms carry, and when it expires."""

    __tablename__ = "console_session"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    user_id: int = Field(foreign_key="console_user.id", index=True)
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
    expires_at: datetime = Field(sa_column=utc_column(index=True))
