"""Lifecycle events: what happened to a contact, emitted by crm-notify itself.

:func:`emit` writes one in the caller's transaction; :class:`crm_notify.lifecycle.relay.
LifecycleRelay` ingests them as Segment ``track`` calls (imported from its module: it needs the
intake, which emits).
"""

from crm_notify.lifecycle.emit import emit
from crm_notify.lifecycle.models import LifecycleEvent, LifecycleName, LifecycleSource

__all__ = ["LifecycleEvent", "LifecycleName", "LifecycleSource", "emit"]
