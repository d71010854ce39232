"""Tables of the guards: the consent ledger and the suppression list."""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import utc_column


class ConsentSource(enum.StrEnum):
    """Where a consent record came from."""

    API = "api"
    IDENTIFY_TRAIT = "identify_trait"
    SEGMENT = "segment"
    UNSUBSCRIBE_LINK = "unsubscribe_link"
    PREFERENCE_PAGE = "preference_page"
    ADMIN = "admin"
    ESP_WEBHOOK = "esp_webhook"


class LawfulBasis(enum.StrEnum):
    """The GDPR Art. 6(1) basis a grant rests on."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"
    LEGITIMATE_INTERESTS = "legitimate_interests"


class ConsentRecord(SQLModel, table=True):
    """One entry of the append-only consent ledger: a grant or a withdrawal for one purpose.

    The current state of a contact's consent to a purpose is its latest record (by ``id``).
    ``text_version``, ``ip`` and ``user_agent`` are the proof (GDPR Art. 7(1)) where given.
    """

    __tablename__ = "consent_record"
    __table_args__ = (sa.Index("ix_consent_record_contact_purpose", "contact_id", "purpose", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id")
    purpose: str = Field(max_length=64)
    granted: bool
    source: str = Field(max_length=32)
    lawful_basis: str = Field(default=LawfulBasis.CONSENT, max_length=32)
    text_version: str | None = Field(default=None, max_length=255)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=1024)
    actor: str | None = Field(default=None, max_length=255)
    event_id: int | None = Field(default=None, foreign_key="event.id")
    notification_id: int | None = Field(default=None, foreign_key="notification.id")
    recorded_at: datetime = Field(default_factory=now, sa_column=utc_column())


class SuppressionReason(enum.StrEnum):
    """Why an address is suppressed."""

    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    INVALID = "invalid"
    ERASED = "erased"


#: ``Suppression.purpose`` of a hard suppression: every purpose, transactional included.
ALL_PURPOSES = "*"


class Suppression(SQLModel, table=True):
    """An address that must not be mailed: for every purpose (``purpose`` is
    :data:`ALL_PURPOSES`, a hard suppression, which transactional mail respects too) or for one.

    ``address_hash`` (SHA-256 of the normalised address) is what sends are checked against;
    ``email`` is shown to admins and is cleared when the person is erased, so the entry keeps
    them from being mailed again by a later import without holding their address.
    """

    __table_args__ = (
        sa.UniqueConstraint("address_hash", "purpose", name="uq_suppression_address"),
    )

    id: int | None = Field(default=None, primary_key=True)
    address_hash: str = Field(max_length=64, index=True)
    email: str | None = Field(default=None, max_length=320)
    purpose: str = Field(default=ALL_PURPOSES, max_length=64)
    reason: str = Field(max_length=32)
    detail: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_by: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
