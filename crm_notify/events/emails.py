"""Normalisation of the ``traits.email`` of incoming calls (used by the ingest stage)."""

from __future__ import annotations

from typing import Any

from email_validator import EmailNotValidError, validate_email

from crm_notify.errors import EventValidationError

#: The field that ``normalise_email`` errors name.
EMAIL_FIELD = "traits.email"


def normalise_email(value: Any) -> str:
    """Check an email address's syntax and return its normalised form.

    Deliverability (DNS) is not checked: this runs on the ingest path.

    Parameters:
        value: the ``traits.email`` value as received.

    Raises:
        EventValidationError: ``traits.email`` is not a string or not a valid address.

    Returns:
        The normalised address (domain lower-cased and IDNA-normalised).
    """
    if not isinstance(value, str):
        raise EventValidationError(EMAIL_FIELD, "must be a string")
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise EventValidationError(EMAIL_FIELD, str(exc)) from exc
