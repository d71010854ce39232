"""Signed unsubscribe tokens and the secret key that signs them.

A token binds a contact, a purpose and (optionally) the notification it was mailed in:
``<contact id, hex>.<purpose>.<notification id, hex or empty>.<signature>``, the signature being
the first 16 bytes of HMAC-SHA256 over the rest, base64url. It carries ids only, never an
address, and does not expire (links in old mail must keep working). Without the key nobody can
make one, and changing any byte makes it invalid. Tokens are short on purpose: a
``List-Unsubscribe`` header whose URL fits one folded line (75 characters) needs no encoding.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError, CrmNotifyError

#: File under ``Settings.var_dir`` holding the generated key when none is configured.
SECRET_KEY_FILE = "secret_key"  # noqa: S105 - a file name
#: Bytes of the HMAC-SHA256 kept in a token (128 bits).
SIGNATURE_BYTES = 16
#: The signed part of a token: contact id, purpose, notification id (may be empty).
_PAYLOAD = re.compile(r"([0-9a-f]{1,16})\.([a-z][a-z0-9_]{0,63})\.([0-9a-f]{0,16})")
#: Domain separation: this key signs nothing else with the same construction.
_CONTEXT = b"crm-notify unsubscribe v1\0"


class UnsubscribeTokenError(CrmNotifyError):
    """A token is malformed or its signature does not match (forged or altered)."""


@dataclass(frozen=True, slots=True)
class UnsubscribeToken:
    """What a valid token says."""

    contact_id: int
    purpose: str
    notification_id: int | None = None


def _sign(secret_key: bytes, payload: str) -> str:
    digest = hmac.new(secret_key, _CONTEXT + payload.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:SIGNATURE_BYTES]).rstrip(b"=").decode("ascii")


def make_token(
    secret_key: bytes, *, contact_id: int, purpose: str, notification_id: int | None = None
) -> str:
    """Return a signed token for ``contact_id`` and ``purpose``.

    Raises:
        ValueError: ``purpose`` is not a valid purpose name, or an id is negative.
    """
    notification = "" if notification_id is None else f"{notification_id:x}"
    payload = f"{contact_id:x}.{purpose}.{notification}"
    if not _PAYLOAD.fullmatch(payload):
        raise ValueError(f"cannot make a token for contact {contact_id}, purpose {purpose!r}")
    return f"{payload}.{_sign(secret_key, payload)}"


def read_token(secret_key: bytes, token: str) -> UnsubscribeToken:
    """Check a token's signature (in constant time) and return what it says.

    Raises:
        UnsubscribeTokenError: the token is malformed, or was not signed with ``secret_key``.
    """
    payload, _dot, signature = token.rpartition(".")
    match = _PAYLOAD.fullmatch(payload)
    if match is None or not signature.isascii():
        raise UnsubscribeTokenError("malformed unsubscribe token")
    if not hmac.compare_digest(signature, _sign(secret_key, payload)):
        raise UnsubscribeTokenError("unsubscribe token signature does not match")
    contact, purpose, notification = match.groups()
    return UnsubscribeToken(
        int(contact, 16), purpose, int(notification, 16) if notification else None
    )


def unsubscribe_url(base_url: str, token: str) -> str:
    """The one-click unsubscribe URL of ``token`` under the service's public ``base_url``."""
    return f"{base_url.rstrip('/')}/unsubscribe/{token}"


def preferences_url(base_url: str, token: str) -> str:
    """The preference page URL of ``token`` under the service's public ``base_url``."""
    return f"{base_url.rstrip('/')}/preferences/{token}"


def load_secret_key(settings: Settings) -> bytes:
    """The key that signs tokens: ``settings.secret_key``, else one generated once.

    The generated key (64 hex characters) is written to ``VAR_DIR/secret_key`` with mode 0600,
    atomically (a process that loses the race reads the winner's key), and read thereafter.
    Every process of a deployment must share it: set ``CRM_NOTIFY_SECRET_KEY`` when they do
    not share ``VAR_DIR``.

    Raises:
        ConfigurationError: the key file exists but holds no usable key.
    """
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode("utf-8")
    path = Path(settings.var_dir) / SECRET_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another process created it first
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    key = path.read_text("utf-8").strip()
    if len(key) < 32:
        raise ConfigurationError(f"{path} holds no usable key; delete it to generate a new one")
    return key.encode("utf-8")
