"""crm-notify: Segment events in, rule-driven notifications out.

The in-process API::

    from crm_notify import CrmNotify

    with CrmNotify() as crm:
        crm.identify(user_id="u1", traits={"email": "alice@example.com"})
        crm.track("Order Updated", user_id="u1", properties={"order_id": "o1", "status": "shipped"})

Names are imported on first use, so ``import crm_notify.errors`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from crm_notify.client import CrmNotify, emit
    from crm_notify.config import Settings, load_settings
    from crm_notify.errors import ConfigurationError, CrmNotifyError

#: Public name -> module that defines it.
_EXPORTS = {
    "CrmNotify": "crm_notify.client",
    "emit": "crm_notify.client",
    "Settings": "crm_notify.config",
    "load_settings": "crm_notify.config",
    "ConfigurationError": "crm_notify.errors",
    "CrmNotifyError": "crm_notify.errors",
}

__all__ = [
    "ConfigurationError",
    "CrmNotify",
    "CrmNotifyError",
    "Settings",
    "__version__",
    "emit",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crm_notify' has no attribute {name!r}")
