"""Durable timers and the scheduler that fires them."""

from crm_notify.timers.models import Timer, TimerStatus
from crm_notify.timers.scheduler import Scheduler

__all__ = ["Scheduler", "Timer", "TimerStatus"]
