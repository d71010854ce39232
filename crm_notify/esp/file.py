"""The file adapter: writes each message as an ``.eml`` file (the embedded default)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from email.message import EmailMessage
from pathlib import Path

from crm_notify.esp.base import EspAdapter


class FileAdapter(EspAdapter):
    """Writes messages to ``directory``, one ``.eml`` file each.

    The file name comes from the Message-ID, so delivering the same message again rewrites the
    same file instead of adding a second one. Files appear atomically (write, then rename).
    """

    name = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def _deliver(self, message: EmailMessage) -> str | None:
        message_id = str(message.get("Message-ID", ""))
        digest = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:24]
        target = self.directory / f"{digest}.eml"
        fd, temp_name = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(message.as_bytes())
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        return target.name
