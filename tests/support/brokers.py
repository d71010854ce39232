"""The broker a test's crm-notify processes share (see the ``broker`` fixture)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SharedBroker:
    """The broker a test's processes share: its kind and the settings that name it (a Redis
    key namespace, or a RabbitMQ queue, of the test's own)."""

    kind: str
    settings: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        """The settings as the environment of ``crm-notify serve``, ``worker``, ``scheduler``."""
        return {f"CRM_NOTIFY_{name.upper()}": value for name, value in self.settings.items()}
