"""Guards between "a rule matched" and "a message is queued"."""

from crm_notify.guards.policy import SendPolicy

__all__ = ["SendPolicy"]
