"""The tokens of a gate's URIs: each binds one gate, one action and (for an item) one item.

A token is the hex HMAC-SHA256, keyed with the service's secret key (the one that signs
unsubscribe tokens, :func:`crm_notify.unsubscribe.tokens.load_secret_key`), of
``{public_id}|{action}|{item id or ""}`` behind a domain-separation prefix: nobody can make
one without the key, and a token opens only the URI it was made for (another gate, another
item or another action needs another token). Whether the URI still works (the gate open, its
deadline not passed) is the API's to check, not the token's: tokens carry no expiry.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

#: Domain separation: this key signs nothing else with the same construction.
_CONTEXT = b"crm-notify gate v1\0"


class GateAction(enum.StrEnum):
    """What a gate URI does; each has tokens of its own."""

    ITEMS = "items"
    FINISH = "finish"
    CANCEL = "cancel"
    REJECT = "reject"


def gate_token(
    secret_key: bytes, *, public_id: str, action: GateAction | str, item_id: int | None = None
) -> str:
    """The token of one gate URI.

    Parameters:
        secret_key: the service's secret key.
        public_id: the gate's ``public_id``.
        action: what the URI does (:class:`GateAction`).
        item_id: the notification the URI acts on (``None`` for the gate's own URIs).

    Returns:
        64 hex digits.
    """
    item = "" if item_id is None else str(item_id)
    message = _CONTEXT + f"{public_id}|{GateAction(action).value}|{item}".encode()
    return hmac.new(secret_key, message, hashlib.sha256).hexdigest()


def check_gate_token(
    secret_key: bytes,
    token: str | None,
    *,
    public_id: str,
    action: GateAction | str,
    item_id: int | None = None,
) -> bool:
    """Whether ``token`` is the token of this gate, action and item (a constant-time compare).

    Returns:
        ``False`` for a missing, malformed, forged or misdirected token.
    """
    if not token or not token.isascii():
        return False
    expected = gate_token(secret_key, public_id=public_id, action=action, item_id=item_id)
    return hmac.compare_digest(token, expected)
