"""A rule's ``gate:`` -> a checked :class:`~crm_notify.gates.model.GateConfig`, each problem at
its line.

What the schema (:mod:`crm_notify.gates.spec`) cannot say is checked here, so a gate that loads
never fails for a reason the file holds: the URL (https, or http to loopback only; no
credentials, templates or white space in it; ``${NAME}`` only in the query string), ``auth``
(exactly one of ``basic`` or ``header`` with ``token``; values hold text and ``${NAME}``
references only), the ``secret`` reference, the action ids (unique) and values (JSON), that the
follow-up templates exist, ``on_timed_out`` only with ``on_timeout: drop``, and, when the
environment is given, that every referenced variable is set and the secret is a valid
``whsec_`` secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from crm_notify._net import is_loopback_host
from crm_notify.actions.env import ENV_REFERENCE, MissingVariableError, expand, referenced_variables
from crm_notify.actions.signing import SigningSecret
from crm_notify.errors import RuleFileError
from crm_notify.gates.model import DEFAULT_GATE_TIMEOUT, GateAuth, GateConfig, OnTimeout
from crm_notify.gates.spec import GateActionSpec, GateAuthSpec, GateSpec
from crm_notify.rules._actions import RESERVED_HEADERS
from crm_notify.rules._compile import TemplateExists
from crm_notify.rules._validation_errors import dotted
from crm_notify.rules.yaml_source import NodePath, YamlDocument

#: An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: ``secret:`` as it must be written: one reference.
_SECRET_REFERENCE = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}$")
_ENV_HINT = "set it in the service's environment; the value stays out of the rule file"
_AUTH_HINT = "write auth: {basic: ${USER}:${PASSWORD}} or auth: {header: X-Token, token: ${TOKEN}}"


class _Problems:
    """Collects the problems of one gate."""

    def __init__(
        self, document: YamlDocument, path: Path, environ: Mapping[str, str] | None
    ) -> None:
        self.document = document
        self.path = path
        self.environ = environ
        self.found: list[RuleFileError] = []

    def add(self, key: NodePath, message: str, hint: str | None = None) -> None:
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
            self.add(key, f"{what} uses ${{{name}}}, but {name} is not set", _ENV_HINT)
        return not missing


def compile_gate(
    spec: GateSpec | None,
    key: NodePath,
    *,
    document: YamlDocument,
    path: Path,
    environ: Mapping[str, str] | None,
    template_exists: TemplateExists | None,
) -> tuple[GateConfig | None, list[RuleFileError]]:
    """Check and compile a ``gate:``.

    Parameters:
        spec: the validated gate, or ``None`` (no gate).
        key: the path of the ``gate`` key in the document (``("gate",)``, ``("rules", i,
            "gate")``).
        document: the file's data and line map.
        path: the rule file.
        environ: the environment ``${NAME}`` references are read from; ``None`` skips the
            check that they are set and that the secret is valid (``rules test`` and other
            tools without the secrets).
        template_exists: when given, called with the follow-up templates.

    Returns:
        The gate (``None`` when there is none, or on a problem), and the problems.
    """
    if spec is None:
        return None, []
    problems = _Problems(document, path, environ)
    _check_url(spec.url, (*key, "url"), problems)
    auth = _compile_auth(spec.auth, (*key, "auth"), problems) if spec.auth else None
    secret_variable = _check_secret(spec.secret, (*key, "secret"), problems)
    actions = _compile_actions(spec.actions or [], (*key, "actions"), problems)
    on_timeout = OnTimeout(spec.on_timeout)
    for follow_up in ("on_rejected", "on_timed_out"):
        chosen = getattr(spec, follow_up)
        if chosen is None:
            continue
        where = (*key, follow_up)
        if follow_up == "on_timed_out" and on_timeout is not OnTimeout.DROP:
            problems.add(
                where,
                f"'{dotted(where)}' is only used with 'on_timeout: drop'",
                "with release, timed-out sends go out as they are; set 'on_timeout: drop' "
                "or remove it",
            )
        elif template_exists is not None and not template_exists(chosen.template):
            problems.add(
                (*where, "template"),
                f"template '{chosen.template}' does not exist",
                f"create templates/{chosen.template}/ or fix the name",
            )
    if problems.found:
        return None, problems.found
    return GateConfig(
        url=spec.url,
        auth=auth,
        secret_variable=secret_variable,
        timeout=spec.timeout or DEFAULT_GATE_TIMEOUT,
        on_timeout=on_timeout,
        actions=actions,
        on_rejected=spec.on_rejected.template if spec.on_rejected else None,
        on_timed_out=spec.on_timed_out.template if spec.on_timed_out else None,
        source_path=path,
        source_line=document.line_for(key) or 0,
    ), []


def _check_url(url: str, key: NodePath, problems: _Problems) -> None:
    if any(marker in url for marker in ("{{", "{%")):
        problems.add(
            key,
            "the gate URL is static: templates are not allowed in it",
            "${NAME} reads an environment variable in the query string",
        )
        return
    if any(char.isspace() or not char.isprintable() for char in url):
        problems.add(key, "the URL contains white space or a control character", "encode it")
        return
    query_start = url.find("?")
    for match in ENV_REFERENCE.finditer(url):
        if match["name"] and (query_start < 0 or match.start() < query_start):
            problems.add(
                key,
                f"${{{match['name']}}} may only be used in the URL's query string",
                "the scheme, host and path are static",
            )
            return
    if not problems.variables(key, url, "the URL"):
        return
    parts = urlsplit(ENV_REFERENCE.sub("x", url))
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"'{parts.scheme}'" if parts.scheme else "none"
        problems.add(key, f"unsupported URL scheme {shown}", "use https://")
        return
    try:
        parts.port  # noqa: B018 - urlsplit checks the port lazily
    except ValueError as exc:
        problems.add(key, f"invalid port in the URL: {exc}")
        return
    if not parts.hostname:
        problems.add(key, "the URL has no host", "e.g. https://crm-gate.example.com/path")
    elif parts.username is not None or parts.password is not None:
        problems.add(key, "credentials in the URL are not allowed", _AUTH_HINT)
    elif parts.fragment:
        problems.add(key, "a URL fragment (#...) is never sent", "remove it")
    elif scheme == "http" and not is_loopback_host(parts.hostname):
        problems.add(
            key,
            f"plain http:// is allowed only to loopback addresses, not '{parts.hostname}'",
            "use https://",
        )


def _compile_auth(spec: GateAuthSpec, key: NodePath, problems: _Problems) -> GateAuth | None:
    before = len(problems.found)
    if spec.basic is not None and (spec.header is not None or spec.token is not None):
        problems.add(
            key, f"'{dotted(key)}' takes either 'basic', or 'header' and 'token'", _AUTH_HINT
        )
        return None
    if spec.basic is None and (spec.header is None or spec.token is None):
        if spec.header is None and spec.token is None:
            problems.add(key, f"'{dotted(key)}' needs 'basic', or 'header' and 'token'", _AUTH_HINT)
        else:
            given, needed = ("header", "token") if spec.token is None else ("token", "header")
            problems.add(
                (*key, given), f"'{dotted((*key, given))}' needs '{needed}' as well", _AUTH_HINT
            )
        return None
    if spec.basic is not None:
        where = (*key, "basic")
        if _check_value(spec.basic, where, "basic auth", problems):
            _check_basic_form(spec.basic, where, problems)
    else:
        assert spec.header is not None and spec.token is not None
        _check_header(spec.header, (*key, "header"), problems)
        _check_value(spec.token, (*key, "token"), f"the value of header '{spec.header}'", problems)
    if len(problems.found) > before:
        return None
    return GateAuth(basic=spec.basic, header=spec.header, token=spec.token)


def _check_header(name: str, key: NodePath, problems: _Problems) -> None:
    if not _HEADER_NAME.fullmatch(name):
        problems.add(key, f"'{name}' is not a valid header name", "e.g. X-Gate-Token")
    elif name.lower() in RESERVED_HEADERS:
        problems.add(
            key,
            f"header '{name}' is set by crm-notify",
            "the body is JSON; the webhook-* headers sign the request",
        )


def _check_value(value: str, key: NodePath, what: str, problems: _Problems) -> bool:
    """Check a credential: text and ``${NAME}`` references only; whether it is fine."""
    if any(char in value for char in "\r\n\0"):
        problems.add(key, f"{what} contains a line break or NUL")
        return False
    if any(marker in value for marker in ("{{", "{%")):
        problems.add(
            key,
            f"{what} holds a template, but credentials are static",
            "${NAME} reads an environment variable",
        )
        return False
    return problems.variables(key, value, what)


def _check_basic_form(basic: str, key: NodePath, problems: _Problems) -> None:
    """``basic`` is ``USER:PASSWORD``: a ``:`` written, or in the variables' values."""
    if ":" in basic.replace("$$", ""):
        return
    if problems.environ is None:
        return  # the ':' may come from a variable: checked when the environment is known
    try:
        value = expand(basic, problems.environ)
    except MissingVariableError:  # reported by _check_value
        return
    if ":" not in value:
        problems.add(
            key,
            "basic auth is USER:PASSWORD, and this one has no ':'",
            "e.g. basic: ${GATE_USER}:${GATE_PASSWORD}",
        )


def _check_secret(secret: str | None, key: NodePath, problems: _Problems) -> str | None:
    if secret is None:
        return None
    match = _SECRET_REFERENCE.fullmatch(secret.strip())
    if match is None:
        problems.add(
            key,
            "write the signing secret as a reference to an environment variable, e.g. "
            "${GATE_SIGNING_SECRET}",
            "never the secret itself in a rule file",
        )
        return None
    name = match["name"]
    if problems.environ is None:
        return name
    try:
        SigningSecret.parse(problems.environ[name])
    except KeyError:
        problems.add(key, f"the secret uses ${{{name}}}, but {name} is not set", _ENV_HINT)
    except ValueError as exc:
        problems.add(key, f"{name} is not a signing secret: {exc}")
    return name


def _compile_actions(
    specs: list[GateActionSpec], key: NodePath, problems: _Problems
) -> tuple[dict[str, Any], ...]:
    actions = []
    seen: dict[str, NodePath] = {}
    for index, spec in enumerate(specs):
        base = (*key, index)
        if spec.id in seen:
            problems.add(
                (*base, "id"),
                f"action id '{spec.id}' is already used by '{dotted(seen[spec.id])}'",
                "action ids must be unique within a gate",
            )
        seen.setdefault(spec.id, base)
        action = spec.model_dump()
        bad = _non_json(action, base)
        if bad is not None:
            bad_key, value = bad
            problems.add(
                bad_key,
                f"'{dotted(bad_key)}' is {value}, which JSON cannot carry",
                "actions are sent to the integration as JSON",
            )
        actions.append(action)
    return tuple(actions)


def _non_json(value: Any, key: NodePath) -> tuple[NodePath, float] | None:
    """The first value under ``value`` that JSON cannot carry (``.nan``, ``.inf``), if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for part, item in items:
        found = _non_json(item, (*key, part))
        if found is not None:
            return found
    return None
