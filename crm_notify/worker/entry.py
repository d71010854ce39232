"""Module the ``dramatiq`` worker CLI imports (via ``crm-notify worker``).

Builds the runtime from the environment and makes its broker the global one, so the CLI's
worker processes consume crm-notify's queue with crm-notify's actors. Also sets how many
messages each worker process takes from Redis ahead of its threads (the CLI builds its
``Worker`` after importing this module).
"""

from __future__ import annotations

import dramatiq.worker

from crm_notify.config import load_settings
from crm_notify.runtime import Runtime
from crm_notify.worker.broker import set_broker

#: Messages a worker process holds ahead of its threads, unless Dramatiq's own
#: ``dramatiq_queue_prefetch`` environment variable says otherwise. Dramatiq's default, two per
#: thread, starves the threads: its consumer sleeps, with growing backoff, whenever that many
#: are in progress. A delivery message is only an id; the ones a dead process held are
#: requeued by the broker (and by the outbox relay).
QUEUE_PREFETCH = 64

if not dramatiq.worker.QUEUE_PREFETCH:  # 0: the variable is unset
    dramatiq.worker.QUEUE_PREFETCH = QUEUE_PREFETCH

runtime = Runtime.from_settings(load_settings())
broker = runtime.broker
set_broker(broker)
