"""Small network helpers shared by the parts that make outgoing HTTP calls."""

from __future__ import annotations

import ipaddress
import logging

import httpx


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine: ``localhost`` or a loopback
    address. Plain HTTP is allowed only to such hosts."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HideQueryFilter(logging.Filter):
    """Takes the query string (it may carry credentials: ``?key=${NAME}``) out of the
    ``HTTP Request: METHOD URL ...`` lines httpx logs at INFO for every request."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], httpx.URL):
            record.args = (args[0], args[1].copy_with(query=None, fragment=None), *args[2:])
        return True


def hide_logged_queries() -> None:
    """Put :class:`HideQueryFilter` on httpx's logger (once)."""
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, HideQueryFilter) for f in httpx_logger.filters):
        httpx_logger.addFilter(HideQueryFilter())


def outbound_client(
    *, timeout_s: float, user_agent: str, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """The client of requests to other tools (webhook actions, send gates): bounded timeouts,
    no redirects followed, and httpx's request log without query strings (they may carry a
    ``${NAME}`` credential)."""
    hide_logged_queries()
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        transport=transport,
        follow_redirects=False,
        headers={"User-Agent": user_agent},
    )
