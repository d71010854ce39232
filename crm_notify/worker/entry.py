"""Module the ``dramatiq`` worker CLI imports (via ``crm-notify worker``).

Builds the runtime from the environment and makes its broker the global one, so the CLI's
worker processes consume crm-notify's queue with crm-notify's actors.
"""

from __future__ import annotations

from crm_notify.config import load_settings
from crm_notify.runtime import Runtime
from crm_notify.worker.broker import set_broker

runtime = Runtime.from_settings(load_settings())
broker = runtime.broker
set_broker(broker)
