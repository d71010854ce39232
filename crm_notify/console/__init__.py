"""The support console (``/console``): accounts, sign-in sessions and the pages."""

from crm_notify.console.models import ConsoleRole, ConsoleSession, ConsoleUser
from crm_notify.console.pages import make_router
from crm_notify.console.users import (
    ConsoleUserError,
    SignedInUser,
    authenticate,
    create_user,
    delete_user,
    list_users,
)

__all__ = [
    "ConsoleRole",
    "ConsoleSession",
    "ConsoleUser",
    "ConsoleUserError",
    "SignedInUser",
    "authenticate",
    "create_user",
    "delete_user",
    "list_users",
    "make_router",
]
