"""Fixtures for the rules tests."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

WriteRule = Callable[..., Path]


@pytest.fixture
def write_rule(tmp_path: Path) -> WriteRule:
    """Write dedented YAML to ``tmp_path/<name>`` and return the path."""

    def write(text: str, name: str = "rule.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write
