"""The console adapter: prints messages instead of sending them (for development)."""

from __future__ import annotations

import sys
import threading
from email.message import EmailMessage
from typing import TextIO

from crm_notify.esp.base import EspAdapter


class ConsoleAdapter(EspAdapter):
    """Writes each message to ``stream`` (standard output by default)."""

    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def _deliver(self, message: EmailMessage) -> str | None:
        with self._lock:
            self._stream.write(message.as_string())
            self._stream.write("\n" + "-" * 72 + "\n")
            self._stream.flush()
        return None
