"""Guards between "a rule matched" and "a message is queued"."""

from crm_notify.guards.base import Guard, PlannedSend, SendAttempt, Verdict
from crm_notify.guards.policy import SendPolicy

__all__ = ["Guard", "PlannedSend", "SendAttempt", "SendPolicy", "Verdict"]
