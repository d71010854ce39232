"""One-click unsubscribe (RFC 8058, RFC 2369) and the preference page."""

from crm_notify.unsubscribe.links import UnsubscribeLinks
from crm_notify.unsubscribe.tokens import (
    UnsubscribeToken,
    UnsubscribeTokenError,
    load_secret_key,
    make_token,
    preferences_url,
    read_token,
    unsubscribe_url,
)

__all__ = [
    "UnsubscribeLinks",
    "UnsubscribeToken",
    "UnsubscribeTokenError",
    "load_secret_key",
    "make_token",
    "preferences_url",
    "read_token",
    "unsubscribe_url",
]
