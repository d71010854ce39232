"""Translate whatever Jinja (or the template's Python calls) raised into :class:`RenderError`."""

from __future__ import annotations

from jinja2 import TemplateNotFound, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from crm_notify.errors import RenderError, SandboxLimitError, TemplateNotFoundError


def syntax_error(exc: TemplateSyntaxError) -> RenderError:
    """The :class:`RenderError` for a template that does not compile."""
    return RenderError(f"{template_location(exc)}: syntax error: {exc.message}")


def template_location(exc: BaseException) -> str | None:
    """Return ``"name:line"`` of the innermost template frame of ``exc``, if any."""
    if isinstance(exc, TemplateSyntaxError):
        return f"{exc.name or exc.filename or '<string>'}:{exc.lineno}"
    found = None
    tb = exc.__traceback__
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            line = template.get_corresponding_lineno(tb.tb_lineno)
            found = f"{template.name or '<string>'}:{line}"
        tb = tb.tb_next
    return found


def translate(exc: Exception, source: str) -> RenderError:
    """Build the :class:`RenderError` to raise (``from exc``) for ``exc``.

    A :class:`RenderError` raised outside template code is returned unchanged (re-raise it);
    one raised inside template code gets the template location prepended.

    Parameters:
        exc: what was raised while compiling or rendering.
        source: what was being rendered, used when no template line is known
            (a template name, or ``expression '...'``).

    Returns:
        A :class:`SandboxLimitError` for exceeded bounds (recursion and memory included), a
        :class:`TemplateNotFoundError` for missing templates, else a :class:`RenderError`;
        the message starts with ``name:line`` when known.
    """
    location = template_location(exc)
    if isinstance(exc, RenderError):
        return exc if location is None else type(exc)(f"{location}: {exc}")
    where = location or source
    if isinstance(exc, RecursionError):
        return SandboxLimitError(f"{where}: recursion too deep (recursive macro or include?)")
    if isinstance(exc, MemoryError):
        return SandboxLimitError(f"{where}: out of memory")
    if isinstance(exc, TemplateNotFound):
        return TemplateNotFoundError(f"{where}: template {exc.name!r} not found")
    if isinstance(exc, TemplateSyntaxError):
        return syntax_error(exc)
    if isinstance(exc, UndefinedError):
        return RenderError(f"{where}: {exc.message}")
    if isinstance(exc, SecurityError):
        return RenderError(f"{where}: blocked by the sandbox: {exc}")
    return RenderError(f"{where}: {type(exc).__name__}: {exc}")
