"""ESP adapters: where rendered messages are handed over for delivery."""

from crm_notify.esp.base import EspAdapter, SendResult
from crm_notify.esp.console import ConsoleAdapter
from crm_notify.esp.factory import adapter_from_url
from crm_notify.esp.file import FileAdapter
from crm_notify.esp.smtp import SmtpAdapter, SmtpOptions

__all__ = [
    "ConsoleAdapter",
    "EspAdapter",
    "FileAdapter",
    "SendResult",
    "SmtpAdapter",
    "SmtpOptions",
    "adapter_from_url",
]
