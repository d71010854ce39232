"""Emitting a lifecycle event: a row in the lifecycle outbox, in the caller's transaction, so
the event exists exactly when the change it reports was committed."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from crm_notify.lifecycle.models import LifecycleEvent, LifecycleName, LifecycleSource


def emit(
    session: Session,
    name: LifecycleName,
    *,
    contact_id: int,
    source: LifecycleSource,
    **properties: Any,
) -> None:
    """Record lifecycle event ``name`` of ``contact_id`` (the relay ingests it later).

    Parameters:
        source: who caused it.
        properties: what the event says (JSON values), e.g. ``purpose="marketing"``.
    """
    session.add(
        LifecycleEvent(
            name=name.value,
            source=source.value,
            contact_id=contact_id,
            properties={**properties, "source": source.value},
        )
    )
