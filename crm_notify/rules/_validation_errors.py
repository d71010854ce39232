"""Pydantic validation errors -> ``RuleFileError``s worded for people editing YAML."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from crm_notify.errors import RuleFileError
from crm_notify.rules.model import TRIGGER_KEYS
from crm_notify.rules.yaml_source import NodePath, YamlDocument

#: Keys people write from habit, and the key they mean.
_KEY_SYNONYMS = {
    "on": "trigger",
    "if": "when",
    "condition": "when",
    "conditions": "when",
    "enable": "enabled",
    "active": "enabled",
    "type": "purpose",
    "stop_when": "exit_when",
    "exit_if": "exit_when",
    "cancel_when": "cancel_on",
    "wait": "delay",
}
_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "list",
    dict: "mapping",
    type(None): "null",
}


def validation_problems(
    path: Path, document: YamlDocument, model: type[BaseModel], exc: ValidationError
) -> list[RuleFileError]:
    """Turn pydantic's errors into ``RuleFileError``s at the line of the offending key.

    Parameters:
        path: the rule file.
        document: the file's data and line map.
        model: the model that was validated, to find the keys allowed where one is unknown.
        exc: pydantic's error.

    Returns:
        One problem per error, worded for people editing YAML.
    """
    errors = exc.errors(include_url=False)
    # A misspelt required key gives "unknown key" and "missing key": keep only the first.
    meant = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            loc = tuple(error["loc"])
            target = _meant_key(str(loc[-1]), _allowed_keys(model, loc[:-1]))
            meant.add((*loc[:-1], target))
    problems = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc in meant:
            continue
        line = document.line_for(loc)
        kind = error["type"]
        where = dotted(loc)
        suggestion = None
        if kind == "extra_forbidden":
            key = str(loc[-1])
            message = f"unknown key '{key}'"
            suggestion = _suggest_key(key, _allowed_keys(model, loc[:-1]))
        elif kind == "missing":
            message = f"missing required key '{loc[-1]}'"
            parent = dotted(loc[:-1])
            message += f" in '{parent}'" if parent else ""
        elif kind == "duration_parsing":
            message = error["msg"]
            suggestion = error.get("ctx", {}).get("hint")
        elif kind == "string_pattern_mismatch":
            message = f"'{where}' is not a valid name: {error['input']!r}"
            suggestion = "use lowercase letters, digits, '-' and '_'"
            if loc[-1] == "template":
                suggestion = "use the name of one folder under templates/"
            elif len(loc) > 2 and loc[-3] == "fetch":  # a template variable
                suggestion = "use lowercase letters, digits and '_', not starting with a digit"
        else:
            text = error["msg"].removeprefix("Input ")
            message = f"'{where}' {text[0].lower()}{text[1:]}" if where else text
            if kind.endswith("_type") or kind in ("enum", "literal_error"):
                message += f", got {describe(error['input'])}"
        problems.append(RuleFileError(path, line, message, suggestion))
    return problems


def _suggest_key(key: str, allowed: Sequence[str]) -> str | None:
    if not allowed:
        return None
    if key in TRIGGER_KEYS and "trigger" in allowed:
        return f"put it under 'trigger:', e.g. 'trigger: {{{key}: ...}}'"
    meant = _meant_key(key, allowed)
    if meant is not None:
        return f"did you mean '{meant}'?"
    return "expected one of: " + ", ".join(allowed)


def _meant_key(key: str, allowed: Sequence[str]) -> str | None:
    """Return the allowed key that ``key`` most likely stands for, if any."""
    if key in TRIGGER_KEYS and "trigger" in allowed:
        return "trigger"
    synonym = _KEY_SYNONYMS.get(key.lower())
    if synonym in allowed:
        return synonym
    close = difflib.get_close_matches(key, allowed, n=1)
    return close[0] if close else None


def _allowed_keys(model: type[BaseModel], loc: NodePath) -> list[str]:
    """Return the keys allowed in the mapping at ``loc`` of a document validated by ``model``."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            current = typing.get_args(current)[0] if typing.get_origin(current) is list else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            fields = {info.alias or name: info for name, info in current.model_fields.items()}
            current = fields[part].annotation if part in fields else None
        else:
            current = None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated``, ``| None`` and literals (``| Literal[False]``, which have no keys)
    from a type annotation."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            others = [
                arg
                for arg in typing.get_args(annotation)
                if arg is not type(None) and typing.get_origin(arg) is not typing.Literal
            ]
            if len(others) != 1:
                return annotation
            annotation = others[0]
        else:
            return annotation


def dotted(loc: Sequence[str | int]) -> str:
    """Return a path as written in messages: ``rules[1].trigger.event``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def describe(value: Any) -> str:
    """Return a value's YAML type, with the value for scalars: ``"integer 12"``, ``"list"``."""
    name = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return name
    if isinstance(value, bool):
        return f"{name} {str(value).lower()}"
    return f"{name} {value!r}" if value is not None else name
