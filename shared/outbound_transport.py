"""httpx transports whose every TCP connection goes through the outbound address check.

The check lives in an httpcore network backend (`connect_tcp`), the lowest point where a host
becomes a socket: it resolves the host once, refuses the connection if any resolved address is
refused, and dials the checked address itself. httpcore then runs TLS on that socket with
`server_hostname` set to the URL's host, so SNI and certificate verification use the name while
the socket is bound to the address that was checked; the Host header comes from the URL as usual.
There is no second lookup that a rebinding DNS server could answer differently, and every
redirect hop and every new pooled connection passes through the same code.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import anyio.to_thread
import httpcore
import httpx

from shared.outbound_policy import DestinationNotAllowed, OutboundPolicy, literal_address

Resolver = Callable[[str, int], list[str]]
"""Maps (host, port) to the addresses to try, best first. Raises OSError when the name does not resolve."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every A and AAAA address of `host` from the system resolver, in its preferred order. Raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressGuard:
    """Resolves a host once and checks every address before anything connects."""

    def __init__(self, policy: OutboundPolicy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolver = resolver

    def addresses(self, host: str, port: int) -> list[str]:
        """The checked addresses to dial for `host`. Raises DestinationNotAllowed, httpcore.ConnectError."""
        literal = literal_address(host)
        if literal is not None:
            # Dial exactly the address that was classified, whatever spelling the URL used.
            addresses = [str(literal)]
        else:
            try:
                addresses = self._resolver(host, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"could not resolve {host!r}") from exc
            if not addresses:
                raise httpcore.ConnectError(f"{host!r} has no addresses")
        # Refuse when ANY address is refused: the caller cannot know which one a retry would use.
        for address in addresses:
            self._policy.check_address(address)
        return addresses


def _dial_in_order(addresses: list[str], connect: Callable[[str], httpcore.NetworkStream]) -> httpcore.NetworkStream:
    """Connect to the first address that accepts, trying them in order."""
    errors: list[Exception] = []
    for address in addresses:
        try:
            return connect(address)
        except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
            errors.append(exc)
    raise errors[-1] if errors else httpcore.ConnectError("no address to connect to")


class GuardedSyncBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, dialling only addresses the guard checked."""

    def __init__(self, guard: AddressGuard, inner: httpcore.NetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._guard.addresses(host, port)
        return _dial_in_order(
            addresses,
            lambda address: self._inner.connect_tcp(
                address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
            ),
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise DestinationNotAllowed("unix socket")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedAsyncBackend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, dialling only addresses the guard checked."""

    def __init__(self, guard: AddressGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # getaddrinfo blocks; a cancelled request abandons the lookup instead of waiting for it.
        addresses = await anyio.to_thread.run_sync(self._guard.addresses, host, port, abandon_on_cancel=True)
        errors: list[Exception] = []
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                errors.append(exc)
        raise errors[-1] if errors else httpcore.ConnectError("no address to connect to")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationNotAllowed("unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _pool_options(ssl_context: ssl.SSLContext, limits: httpx.Limits) -> dict[str, Any]:
    return {
        "ssl_context": ssl_context,
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
        "http1": True,
        "http2": False,
        "retries": 0,
    }


# httpx 0.28 takes no network backend (encode/httpx#3180), so each transport below lets httpx
# build its pool (no I/O happens in the constructor) and swaps in an identical pool that dials
# through the guard. Proxies are never configured: the guard must see the real destination.


class GuardedSyncTransport(httpx.HTTPTransport):
    """httpx's sync transport over the guarded backend."""

    def __init__(self, guard: AddressGuard, *, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.ConnectionPool(
            network_backend=GuardedSyncBackend(guard), **_pool_options(ssl_context, limits)
        )


class GuardedAsyncTransport(httpx.AsyncHTTPTransport):
    """httpx's async transport over the guarded backend."""

    def __init__(self, guard: AddressGuard, *, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=GuardedAsyncBackend(guard), **_pool_options(ssl_context, limits)
        )
