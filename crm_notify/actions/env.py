"""``${NAME}`` references to environment variables in webhook actions (headers, secret, query).

Secrets stay out of rule files: a header ``Authorization: Bearer ${SMS_API_TOKEN}`` names the
variable, and the value is read from the process environment (passed in as a mapping) when the
request is built. The loader checks that every referenced variable is set, so a missing one
stops start-up instead of failing sends. ``$$`` stands for a literal ``$``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: A reference: ``${NAME}`` (letters, digits and ``_``, not starting with a digit), or ``$$``.
ENV_REFERENCE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
#: A ``$`` that starts neither a reference nor ``$$``.
_STRAY_DOLLAR = re.compile(r"\$(?!\$|\{[A-Za-z_][A-Za-z0-9_]*\})")


class MissingVariableError(LookupError):
    """A referenced environment variable is not set.

    Parameters:
        name: the variable.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"environment variable {name} is not set")


def referenced_variables(text: str) -> list[str]:
    """The variables ``text`` references, in order, each once.

    Raises:
        ValueError: a ``$`` that does not start ``${NAME}`` or ``$$`` (say, ``$TOKEN`` or
            ``${1X}``): written by mistake, it would be sent as is.

    Returns:
        The variable names.
    """
    stray = _STRAY_DOLLAR.search(text.replace("$$", ""))
    if stray is not None:
        raise ValueError(
            "write environment variables as ${NAME} (letters, digits and _), and a literal $ as $$"
        )
    names = [match["name"] for match in ENV_REFERENCE.finditer(text) if match["name"]]
    return list(dict.fromkeys(names))


def expand(text: str, environ: Mapping[str, str]) -> str:
    """Replace each ``${NAME}`` in ``text`` by its value in ``environ`` (``$$`` by ``$``).

    Raises:
        MissingVariableError: a referenced variable is not in ``environ``.

    Returns:
        The text with the values in.
    """

    def value(match: re.Match[str]) -> str:
        name = match["name"]
        if name is None:
            return "$"
        if name not in environ:
            raise MissingVariableError(name)
        return environ[name]

    return ENV_REFERENCE.sub(value, text)


def expand_headers(
    headers: Iterable[tuple[str, str]], environ: Mapping[str, str]
) -> dict[str, str]:
    """Header values with their ``${NAME}`` references replaced (:func:`expand`).

    Raises:
        MissingVariableError: a referenced variable is not set.
        ValueError: a value contains a line break or NUL once resolved.
    """
    resolved = {}
    for name, value in headers:
        text = expand(value, environ)
        if any(char in text for char in "\r\n\0"):
            raise ValueError(f"header {name}: its value contains a line break or NUL")
        resolved[name] = text
    return resolved
