"""The checks of a static outbound URL in a rule file (webhook actions, send gates)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from crm_notify._net import is_loopback_host
from crm_notify.actions.env import ENV_REFERENCE

#: A problem: the message and an optional hint.
Problem = tuple[str, str | None]


def static_url_problem(
    url: str,
    *,
    template_problem: Problem,
    host_example: str,
    credentials_hint: str,
    check_variables: Callable[[str], bool],
) -> Problem | None:
    """The first problem of ``url``, or ``None``.

    The URL must be static (no templates; ``${NAME}`` only in the query string), printable,
    ``https://`` (``http://`` only to a loopback host), with a host, no credentials and no
    fragment.

    Parameters:
        template_problem: what to say about a template in the URL.
        host_example: an example URL, for a URL without a host.
        credentials_hint: where credentials go instead.
        check_variables: reports problems of the ``${NAME}`` references itself; returns
            whether they are fine (when not, ``None`` is returned: already reported).
    """
    if any(marker in url for marker in ("{{", "{%")):
        return template_problem
    if any(char.isspace() or not char.isprintable() for char in url):
        return "the URL contains white space or a control character", "encode it"
    query_start = url.find("?")
    for match in ENV_REFERENCE.finditer(url):
        if match["name"] and (query_start < 0 or match.start() < query_start):
            return (
                f"${{{match['name']}}} may only be used in the URL's query string",
                "the scheme, host and path are static",
            )
    if not check_variables(url):
        return None
    parts = urlsplit(ENV_REFERENCE.sub("x", url))
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"'{parts.scheme}'" if parts.scheme else "none"
        return f"unsupported URL scheme {shown}", "use https://"
    try:
        parts.port  # noqa: B018 - urlsplit checks the port lazily
    except ValueError as exc:
        return f"invalid port in the URL: {exc}", None
    if not parts.hostname:
        return "the URL has no host", f"e.g. {host_example}"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed", credentials_hint
    if parts.fragment:
        return "a URL fragment (#...) is never sent", "remove it"
    if scheme == "http" and not is_loopback_host(parts.hostname):
        return (
            f"plain http:// is allowed only to loopback addresses, not '{parts.hostname}'",
            "use https://",
        )
    return None
