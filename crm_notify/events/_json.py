"""Strict JSON parsing: the standard parser with hooks that refuse what Segment bodies never need.

Refused values are planted in the tree as ``_Bad`` markers and reported with their path after
parsing, so ``{"properties": {"price": NaN}}`` names ``properties.price``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from crm_notify.errors import EventValidationError

#: Deepest nesting of arrays and objects accepted.
MAX_DEPTH = 64
#: Longest integer literal accepted, in digits.
MAX_INT_DIGITS = 100

#: A JSON string literal (bytes), removed before brackets are counted.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
#: Escapes that can produce a NUL or a UTF-16 surrogate inside a string; only when one is
#: present are the parsed strings walked to find the offending one.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
#: Every byte that is not a bracket, deleted to leave the nesting skeleton.
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
#: The opening brackets, as byte values.
_OPENING = frozenset(b"[{")


class _Bad:
    """A value the hooks refused; its path is found once parsing is over."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class _Hooks:
    """The ``json.loads`` hooks; ``found`` tells whether any ``_Bad`` was planted."""

    def __init__(self) -> None:
        self.found = False

    def bad(self, message: str) -> _Bad:
        self.found = True
        return _Bad(message)

    def constant(self, text: str) -> Any:
        return self.bad(f"{text} is not valid JSON")

    def integer(self, text: str) -> Any:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            return self.bad(f"integer longer than {MAX_INT_DIGITS} digits")
        return int(text)

    def real(self, text: str) -> Any:
        value = float(text)
        if math.isinf(value):
            shown = text if len(text) <= 24 else f"{text[:20]}..."
            return self.bad(f"number {shown} is out of range")
        return value

    def pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            result[key] = self.bad(f"duplicate key {key!r}") if key in result else value
        return result


def _too_deep(data: bytes) -> bool:
    """Tell whether brackets outside strings nest deeper than ``MAX_DEPTH``.

    Runs before parsing, so a deeply nested body costs a scan of its first brackets, never a
    recursive parse. Strings and non-bracket bytes are removed first, at C speed.
    """
    depth = 0
    for byte in _STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if byte in _OPENING:
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _find_bad(value: Any) -> tuple[str, _Bad] | None:
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _Bad):
            return path, node
        if isinstance(node, dict):
            children = [(f"{path}.{key}" if path else key, child) for key, child in node.items()]
        elif isinstance(node, list):
            children = [(f"{path}[{i}]", child) for i, child in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))
    return None


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON strictly.

    Rejects invalid UTF-8, ``NaN``/``Infinity``, duplicate keys, nesting deeper than
    ``MAX_DEPTH``, integers longer than ``MAX_INT_DIGITS`` digits and floats that overflow.

    Parameters:
        data: the JSON document (bytes must be UTF-8).

    Raises:
        EventValidationError: naming the path of the offending value (empty for the document
            as a whole: syntax, encoding, depth).

    Returns:
        The parsed value.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventValidationError("", f"invalid UTF-8 at byte {exc.start}") from exc
        raw = data
    else:
        text, raw = data, data.encode("utf-8", "surrogatepass")
    if _too_deep(raw):
        raise EventValidationError("", f"JSON nested deeper than {MAX_DEPTH} levels")
    hooks = _Hooks()
    try:
        value = json.loads(
            text,
            parse_constant=hooks.constant,
            parse_int=hooks.integer,
            parse_float=hooks.real,
            object_pairs_hook=hooks.pairs,
        )
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise EventValidationError("", f"invalid JSON: {exc.msg} at {where}") from exc
    if hooks.found:
        found = _find_bad(value)
        if found is not None:
            raise EventValidationError(found[0], found[1].message)
    if _SUSPECT_ESCAPE.search(text):
        bad = _find_bad_string(value)
        if bad is not None:
            raise EventValidationError(bad, "must not contain NUL characters or lone surrogates")
    return value


def _bad_string(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _find_bad_string(value: Any) -> str | None:
    """The path of the first key or string holding NUL or a lone surrogate, if any."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            if _bad_string(node):
                return path
        elif isinstance(node, dict):
            for key, child in node.items():
                child_path = f"{path}.{key}" if path else key
                if _bad_string(key):
                    return path or "(key)"
                stack.append((child_path, child))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(node))
    return None


_JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def json_type(value: Any) -> str:
    """Name the JSON type of a parsed value for messages ("an object", "a string", ...).

    Parameters:
        value: a parsed JSON value.

    Returns:
        The name, with its article.
    """
    return _JSON_TYPES.get(type(value), type(value).__name__)
