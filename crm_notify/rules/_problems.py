"""Collecting the problems of a rule-file part that calls out over HTTP (webhook actions,
send gates), and the checks both make of their ``${NAME}`` references."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from crm_notify.actions.env import referenced_variables
from crm_notify.actions.signing import SigningSecret
from crm_notify.errors import RuleFileError
from crm_notify.rules.yaml_source import NodePath, YamlDocument

#: ``secret:`` as it must be written: one reference.
SECRET_REFERENCE = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}$")
#: The hint of a variable that is not set.
ENV_HINT = "set it in the service's environment; the value stays out of the rule file"


class Problems:
    """The problems found so far, each at its line of ``path``.

    Parameters:
        environ: the environment ``${NAME}`` references must be set in (``None``: not checked).
    """

    def __init__(
        self, document: YamlDocument, path: Path, environ: Mapping[str, str] | None
    ) -> None:
        self.document = document
        self.path = path
        self.environ = environ
        self.found: list[RuleFileError] = []

    def add(self, key: NodePath, message: str, hint: str | None = None) -> None:
        """Record a problem at the line of ``key``."""
        self.found.append(RuleFileError(self.path, self.document.line_for(key), message, hint))

    def variables(self, key: NodePath, text: str, what: str) -> bool:
        """Check the ``${NAME}`` references of ``text``; whether they are all fine (and set,
        when the environment is known)."""
        try:
            names = referenced_variables(text)
        except ValueError as exc:
            self.add(key, f"{what}: {exc}")
            return False
        missing = [name for name in names if self.environ is not None and name not in self.environ]
        for name in missing:
            self.add(key, f"{what} uses ${{{name}}}, but {name} is not set", ENV_HINT)
        return not missing

    def secret(self, secret: str | None, key: NodePath, *, example: str) -> str | None:
        """The variable a ``secret:`` names (``None`` without one), checked: one reference,
        and, when the environment is known, set to a valid signing secret.

        Parameters:
            example: a variable name for the message, e.g. ``SMS_WEBHOOK_SECRET``.
        """
        if secret is None:
            return None
        match = SECRET_REFERENCE.fullmatch(secret.strip())
        if match is None:
            self.add(
                key,
                "write the signing secret as a reference to an environment variable, e.g. "
                f"${{{example}}}",
                "never the secret itself in a rule file",
            )
            return None
        name = match["name"]
        if self.environ is None:
            return name
        try:
            SigningSecret.parse(self.environ[name])
        except KeyError:
            self.add(key, f"the secret uses ${{{name}}}, but {name} is not set", ENV_HINT)
        except ValueError as exc:
            self.add(key, f"{name} is not a signing secret: {exc}")
        return name
