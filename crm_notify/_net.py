"""Small network helpers shared by the parts that make outgoing HTTP calls.

Every request to another tool (webhook actions, send gates, webhook subscriptions, fetch steps)
goes through :func:`outbound_client`. Its connections pass an :class:`OutboundPolicy`: the host
is resolved once, every address it resolves to is checked, and the connection is made to the
checked address (a name that resolves to a public address first and a private one later cannot
slip through). Addresses that are not globally routable — loopback, private (RFC 1918, ULA),
link-local (cloud metadata at 169.254.169.254), carrier-grade NAT, reserved — are refused unless
a network in ``CRM_NOTIFY_OUTBOUND_ALLOW_NETWORKS`` holds them. A refused connection is an
:class:`httpx.ConnectError` for which :func:`blocked_reason` gives the reason.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    from crm_notify.config import Settings

#: An IPv4 or IPv6 network.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: An IPv4 or IPv6 address.
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine: ``localhost`` or a loopback
    address. Plain HTTP is allowed only to such hosts."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BlockedAddressError(httpcore.ConnectError):
    """A connection the :class:`OutboundPolicy` refused (httpx raises it as the cause of an
    :class:`httpx.ConnectError`)."""


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Which addresses outgoing requests may connect to.

    Globally routable addresses always; others (loopback, private, link-local, reserved) only
    when one of ``allowed_networks`` holds them.
    """

    allowed_networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> OutboundPolicy:
        """The policy allowing the comma-separated networks in ``text`` (``10.0.0.0/8``,
        ``127.0.0.1``, ``fd00::/8``; ``loopback`` and ``private`` name the usual ranges).

        Raises:
            ValueError: an entry is not a network.
        """
        networks: list[Network] = []
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            named = _NAMED_NETWORKS.get(entry.lower())
            if named is not None:
                networks.extend(ipaddress.ip_network(net) for net in named)
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not a network (write 10.0.0.0/8, 127.0.0.1, loopback or private)"
                ) from None
        return cls(allowed_networks=tuple(networks))

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        """The policy of ``CRM_NOTIFY_OUTBOUND_ALLOW_NETWORKS``."""
        return cls.parse(settings.outbound_allow_networks)

    @classmethod
    def allow_loopback(cls) -> OutboundPolicy:
        """A policy that also allows this machine (tests, a receiver on the same host)."""
        return cls.parse("loopback")

    def refusal(self, address: Address) -> str | None:
        """Why a connection to ``address`` is refused, or ``None`` when it is allowed."""
        if any(address in network for network in self.allowed_networks):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                return self.refusal(embedded)
        site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
        if address.is_global and not address.is_multicast and not site_local:
            return None
        kind = next(
            (
                name
                for name, flag in (
                    ("loopback", address.is_loopback),
                    ("link-local", address.is_link_local),
                    ("private", address.is_private),
                    ("site-local", site_local),
                    ("multicast", address.is_multicast),
                )
                if flag
            ),
            "not public",
        )
        return (
            f"refused address {address} ({kind}); allow it with CRM_NOTIFY_OUTBOUND_ALLOW_NETWORKS"
        )


#: IPv6 prefixes that carry an IPv4 address in their last 32 bits: NAT64 (RFC 6052, RFC 8215)
#: SIIT (RFC 7915) and IPv4-compatible addresses (deprecated, but still routed by some stacks).
_IPV4_CARRIERS = tuple(
    ipaddress.IPv6Network(prefix)
    for prefix in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::/96")
)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to: IPv4-mapped, 6to4, Teredo, NAT64 or
    IPv4-compatible; ``None`` for a plain IPv6 address (``::`` and ``::1`` included)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if int(address) > 1 and any(address in prefix for prefix in _IPV4_CARRIERS):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


#: The default policy: public addresses only.
PUBLIC_ONLY = OutboundPolicy()

#: Names usable in ``CRM_NOTIFY_OUTBOUND_ALLOW_NETWORKS``.
_NAMED_NETWORKS = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
}


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves the host, checks every address with the policy, connects to a checked one."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve the host: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for text in addresses:
            reason = self._policy.refusal(ipaddress.ip_address(text.split("%")[0]))
            if reason is not None:
                raise BlockedAddressError(reason)
        error: Exception | None = None
        for text in addresses:
            try:
                return super().connect_tcp(
                    text, port, timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:  # try the next address
                error = exc
        raise error or httpcore.ConnectError("the host has no address")


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport, its connections made by :class:`_GuardedBackend` (no proxy)."""

    def __init__(self, policy: OutboundPolicy) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=_GuardedBackend(policy),
        )


def blocked_reason(exc: BaseException) -> str | None:
    """The policy's reason when ``exc`` (or what caused it) is a refused connection."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BlockedAddressError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


class ResponseTooLargeError(Exception):
    """An answer longer than allowed; the rest was not read."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        super().__init__(f"the answer is larger than {max_bytes} bytes")


def read_bounded(response: httpx.Response, max_bytes: int, *, timeout_s: float) -> bytes:
    """The body of a streamed ``response`` (``client.send(..., stream=True)``), read up to
    ``max_bytes`` and for at most ``timeout_s`` seconds in all (an answer that trickles in
    cannot hold the caller longer than that, plus one read's timeout); the response is closed.

    Raises:
        ResponseTooLargeError: the body is longer.
        httpx.ReadTimeout: the body did not end in time.
        httpx.HTTPError: reading failed (a timeout, the connection closed).
    """
    body = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise ResponseTooLargeError(max_bytes)
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the answer did not end in time", request=response.request)
    finally:
        response.close()
    return bytes(body)


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
    *,
    timeout_s: float,
    user_agent: str,
    policy: OutboundPolicy,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """The client of requests to other tools (webhook actions, send gates, subscriptions,
    fetch steps): bounded timeouts, no redirects followed, no proxy from the environment,
    connections only to addresses ``policy`` allows, and httpx's request log without query
    strings (they may carry a ``${NAME}`` credential).

    Parameters:
        transport: replaces the guarded transport (tests of other layers).
    """
    hide_logged_queries()
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        transport=transport or _GuardedTransport(policy),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": user_agent},
    )
