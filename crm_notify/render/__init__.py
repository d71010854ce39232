"""Rendering: sandboxed, resource-bounded Jinja templates and conditions, and MIME building."""

from crm_notify.render.mime import build_message, make_message_id
from crm_notify.render.sandbox import (
    BoundedSandboxEnvironment,
    CompiledExpression,
    SandboxLimits,
    ensure_plain_data,
)
from crm_notify.render.templates import RenderedMessage, TemplateStore

__all__ = [
    "BoundedSandboxEnvironment",
    "CompiledExpression",
    "RenderedMessage",
    "SandboxLimits",
    "TemplateStore",
    "build_message",
    "ensure_plain_data",
    "make_message_id",
]
