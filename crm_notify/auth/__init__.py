"""API keys for the event API."""

from crm_notify.auth.api_keys import (
    ApiKeyAuthenticator,
    ApiKeyError,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from crm_notify.auth.models import ApiKey

__all__ = [
    "ApiKey",
    "ApiKeyAuthenticator",
    "ApiKeyError",
    "create_api_key",
    "list_api_keys",
    "revoke_api_key",
]
