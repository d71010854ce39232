"""Signing webhook requests per the Standard Webhooks specification (symmetric, ``v1``).

Every request carries three headers (https://www.standardwebhooks.com/):

- ``webhook-id``: the message's id, the same on every retry of one notification (receivers use
  it as an idempotency key);
- ``webhook-timestamp``: when this attempt was made, in whole seconds since the epoch;
- ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``,
  keyed with the secret's bytes: the secret is written ``whsec_`` + base64 of 24 to 64 random
  bytes, and the key is the base64-decoded part.

Receivers verify with any Standard Webhooks library, e.g. ``standardwebhooks.Webhook(secret)
.verify(body, headers)`` in Python.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError

#: The prefix of a symmetric signing secret.
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
#: Fewest and most bytes of a signing key (the spec: at least 24 bytes, 512 bits at most).
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
#: The prefix of our message ids; the rest is hex, so an id never contains a ``.``.
MESSAGE_ID_PREFIX = "msg_"


@dataclass(frozen=True, slots=True, repr=False)
class SigningSecret:
    """A parsed ``whsec_...`` secret; ``repr`` never shows the key.

    Parameters:
        key: the HMAC key (the decoded bytes).
    """

    key: bytes

    def __repr__(self) -> str:
        return "SigningSecret(<hidden>)"

    @classmethod
    def parse(cls, text: str) -> SigningSecret:
        """Read ``whsec_<base64>`` (the prefix may be left out, as the reference libraries allow).

        Raises:
            ValueError: not base64, or a key shorter than 24 or longer than 64 bytes; the
                message never contains the secret.

        Returns:
            The secret.
        """
        encoded = text.strip().removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(
                "a signing secret is whsec_ followed by base64 "
                "(crm_notify.actions.signing.new_secret() makes one)"
            ) from exc
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise ValueError(
                f"a signing secret must decode to {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, "
                f"this one has {len(key)}"
            )
        return cls(key)

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` value of one attempt.

        Parameters:
            message_id: the ``webhook-id``.
            timestamp: the ``webhook-timestamp`` (seconds since the epoch).
            body: the exact bytes sent.

        Returns:
            ``v1,<base64 HMAC-SHA256 of "{message_id}.{timestamp}.{body}">``.
        """
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(self.key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode("ascii")


def new_secret() -> str:
    """A fresh secret to give a receiver: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_message_id() -> str:
    """A fresh ``webhook-id``: ``msg_`` and 32 hex digits (no ``.``, as the spec asks)."""
    return MESSAGE_ID_PREFIX + secrets.token_hex(16)


def signature_headers(
    *, message_id: str, timestamp: int, body: bytes, secret: SigningSecret | None
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (no ``webhook-signature`` without a secret).

    Parameters:
        message_id: the ``webhook-id``, the same on every attempt.
        timestamp: this attempt's time, in seconds since the epoch.
        body: the exact bytes sent.
        secret: the signing secret, or ``None`` to send unsigned.

    Returns:
        The headers, lower-case names.
    """
    headers = {"webhook-id": message_id, "webhook-timestamp": str(timestamp)}
    if secret is not None:
        headers["webhook-signature"] = secret.sign(message_id, timestamp, body)
    return headers


def default_secret(settings: Settings) -> SigningSecret | None:
    """``CRM_NOTIFY_WEBHOOK_SECRET``, parsed (``None`` when unset).

    Raises:
        ConfigurationError: it is not a signing secret.
    """
    if settings.webhook_secret is None:
        return None
    try:
        return SigningSecret.parse(settings.webhook_secret.get_secret_value())
    except ValueError as exc:
        raise ConfigurationError(f"CRM_NOTIFY_WEBHOOK_SECRET: {exc}") from exc
