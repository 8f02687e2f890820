"""The one HTTP client for every outbound fetch: image sources, webhooks, document sub-resources,
callbacks.

Every request goes through three gates: the URL rules on every hop (shared/outbound_policy.py),
the address check on every connection (shared/outbound_transport.py), and the caps here (a
total timeout, a connect timeout, and a body size limit enforced while streaming). The size limit
counts decoded bytes: gzip, deflate and br are decoded in bounded steps by shared/outbound_decoding.py
(a compressed bomb stops at the cap), and no other content coding is offered or accepted. Environment
proxies are ignored (`trust_env=False`), because through a proxy the address check would see the
proxy instead of the destination.

Errors, all JobErrors so a handler can let them propagate:

* PermanentJobError
  + DestinationNotAllowed  "destination-not-allowed": refused URL, address, redirect hop
  + ResponseTooLarge       "response-too-large": the decoded body exceeds `max_bytes`
  + UnsupportedContentEncoding "unsupported-content-encoding": a coding other than gzip, deflate, br
  + TooManyRedirects       "too-many-redirects"
* RetryableJobError
  + OutboundTimeout        "timeout": no complete answer within `timeout_seconds`
  + OutboundNetworkError   "network": DNS failure, refused or reset connection, broken HTTP
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Final

import httpx

from shared.errors import PermanentJobError, RetryableJobError
from shared.outbound_decoding import ACCEPT_ENCODING, BodyDecoder, UnsupportedContentEncoding
from shared.outbound_policy import DestinationNotAllowed, OutboundPolicy, OutboundUrl, check_url
from shared.outbound_transport import (
    AddressGuard,
    GuardedAsyncTransport,
    GuardedSyncTransport,
    Resolver,
    system_resolver,
)
from shared.settings import Settings

__all__ = [
    "DEFAULT_MAX_BYTES",
    "RESOURCE_KEY",
    "DestinationNotAllowed",
    "OutboundClient",
    "OutboundNetworkError",
    "OutboundResponse",
    "OutboundTimeout",
    "OutboundUrl",
    "ResponseTooLarge",
    "TooManyRedirects",
    "UnsupportedContentEncoding",
    "check_url",
    "shared_client",
]

DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
CONNECT_TIMEOUT_SECONDS: Final = 5.0
USER_AGENT: Final = "ContentProcessor/0.1"
RESOURCE_KEY: Final = "outbound"
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
# Only codings decoded with a bound are offered (without this httpx would offer what it can decode).
_DEFAULT_HEADERS: Final = {"user-agent": USER_AGENT, "accept-encoding": ACCEPT_ENCODING}
_LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


class OutboundTimeout(RetryableJobError):
    """The destination did not give a complete answer within the time allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="timeout")


class OutboundNetworkError(RetryableJobError):
    """Resolving, connecting, sending or receiving failed for a network reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="network")


class ResponseTooLarge(PermanentJobError):
    """The response body is larger than the caller allows."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"response body exceeds {max_bytes} bytes", kind="response-too-large")
        self.max_bytes = max_bytes


class TooManyRedirects(PermanentJobError):
    """The destination redirected more times than the caller allows."""

    def __init__(self, max_redirects: int) -> None:
        super().__init__(f"more than {max_redirects} redirects", kind="too-many-redirects")


@dataclass
class OutboundResponse:
    """A fully read (or, when asked, truncated) response of the last hop."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str
    elapsed_seconds: float  # from the start of the first hop to the last byte read
    truncated: bool = False  # True when `truncate=True` cut the body at `max_bytes`


@dataclass(frozen=True, slots=True)
class _Hop:
    method: str
    url: httpx.URL
    headers: httpx.Headers
    content: bytes | None


class _Body:
    """Decodes a response body and collects it up to `max_bytes` decoded bytes, refusing (or cutting) beyond.

    Decoding is incremental and bounded (shared/outbound_decoding.py), so the cap holds for what a
    compressed body decodes to, and memory never exceeds the cap by more than one decoded piece.
    """

    def __init__(self, response: httpx.Response, *, max_bytes: int, truncate: bool) -> None:
        declared = response.headers.get("content-length", "")
        # A declared length is checked before reading anything; with a content encoding it is the
        # compressed size, a lower bound of what decoding produces.
        if not truncate and declared.isdigit() and int(declared) > max_bytes:
            raise ResponseTooLarge(max_bytes)
        self._decoder = BodyDecoder(response.headers)
        self._max_bytes = max_bytes
        self._truncate = truncate
        self._parts: list[bytes] = []
        self._size = 0
        self.truncated = False

    def feed(self, raw: bytes) -> bool:
        """Decode and keep one raw chunk; True once nothing more should be read.

        Raises ResponseTooLarge, UnsupportedContentEncoding, httpx.DecodingError.
        """
        return any(self._add(piece) for piece in self._decoder.feed(raw))

    def finish(self) -> None:
        """Keep what the decoder still holds once the raw body has ended."""
        for piece in self._decoder.finish():
            if self._add(piece):
                return

    def _add(self, piece: bytes) -> bool:
        room = self._max_bytes - self._size
        if len(piece) > room:
            if not self._truncate:
                raise ResponseTooLarge(self._max_bytes)
            self._parts.append(piece[:room])
            self._size = self._max_bytes
            self.truncated = True
            return True
        self._parts.append(piece)
        self._size += len(piece)
        return False

    def content(self) -> bytes:
        return b"".join(self._parts)


def _next_hop(hop: _Hop, response: httpx.Response, policy: OutboundPolicy) -> _Hop | None:
    """The request a redirect asks for (checked), or None when `response` is not a redirect.

    Raises DestinationNotAllowed for a refused or malformed target.
    """
    location = response.headers.get("location")
    if response.status_code not in _REDIRECT_STATUSES or not location:
        return None
    try:
        target = policy.check_url(hop.url.join(location))
    except httpx.InvalidURL as exc:
        raise DestinationNotAllowed("invalid redirect URL") from exc
    method, content, headers = hop.method, hop.content, hop.headers.copy()
    # What browsers (and httpx) do: 303 becomes GET, and so do 301/302 answers to a POST.
    if (response.status_code == 303 and method != "HEAD") or (response.status_code in (301, 302) and method == "POST"):
        method, content = "GET", None
        for name in ("content-type", "content-length", "content-encoding", "transfer-encoding"):
            headers.pop(name, None)
    if target.scheme != hop.url.scheme or target.host != hop.url.host or target.port != hop.url.port:
        # Credentials meant for one origin must not travel to another.
        for name in ("authorization", "cookie", "proxy-authorization"):
            headers.pop(name, None)
    return _Hop(method=method, url=target, headers=headers, content=content)


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT_SECONDS, seconds))


@contextmanager
def _translated_errors(timeout_seconds: float) -> Iterator[None]:
    """Turn httpx's and asyncio's errors into the job errors above."""
    try:
        yield
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise OutboundTimeout(f"no complete answer within {timeout_seconds:g} s") from exc
    except httpx.RequestError as exc:
        raise OutboundNetworkError(f"{type(exc).__name__}: {exc}") from exc


class OutboundClient:
    """Sends outbound HTTP requests under the outbound rules; see the module docstring.

    `resolver` replaces the system resolver (tests use it to play DNS); `ssl_context` replaces the
    default CA bundle (tests trust their own CA with it). One client per machine is enough: it keeps
    a connection pool, and each new connection is checked when it is opened.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._policy = OutboundPolicy.from_settings(settings)
        self._guard = AddressGuard(self._policy, resolver or system_resolver)
        self._ssl_context = ssl_context
        self._async_client: httpx.AsyncClient | None = None
        self._sync_client: httpx.Client | None = None
        self._sync_lock = threading.Lock()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        timeout_seconds: float = 10.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        follow_redirects: bool = True,
        max_redirects: int = 5,
        truncate: bool = False,
    ) -> OutboundResponse:
        """Send one request, following checked redirects, and read the body under the caps.

        Any status is returned as a response (a 3xx too when `follow_redirects` is False). Raises
        DestinationNotAllowed, ResponseTooLarge, UnsupportedContentEncoding, TooManyRedirects
        (permanent), OutboundTimeout and OutboundNetworkError (retryable; also for a corrupt
        compressed body).
        """
        client = self._async()
        hop = _Hop(
            method=method.upper(),
            url=self._policy.check_url(url),
            headers=httpx.Headers(headers or {}),
            content=content,
        )
        started = time.monotonic()
        with _translated_errors(timeout_seconds):
            async with asyncio.timeout(timeout_seconds):
                for _ in range(max_redirects + 1):
                    request = client.build_request(
                        hop.method, hop.url, headers=hop.headers, content=hop.content, timeout=_timeout(timeout_seconds)
                    )
                    async with _sent(client, request) as response:
                        next_hop = _next_hop(hop, response, self._policy) if follow_redirects else None
                        if next_hop is None:
                            body = _Body(response, max_bytes=max_bytes, truncate=truncate)
                            # Raw bytes: httpx's own decoding would inflate each chunk whole.
                            async for chunk in response.aiter_raw():
                                if body.feed(chunk):
                                    break
                            else:
                                body.finish()
                            return _response(response, body, started)
                    hop = next_hop
                raise TooManyRedirects(max_redirects)

    def request_sync(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        timeout_seconds: float = 10.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        follow_redirects: bool = True,
        max_redirects: int = 5,
        truncate: bool = False,
    ) -> OutboundResponse:
        """The blocking twin of `request` (for WeasyPrint's URL fetcher, which runs in a thread).

        Same rules, caps and errors. The total timeout is a deadline checked before each hop and
        after each chunk; each hop's socket operations are bounded by the time left when it starts.
        """
        client = self._sync()
        hop = _Hop(
            method=method.upper(),
            url=self._policy.check_url(url),
            headers=httpx.Headers(headers or {}),
            content=content,
        )
        started = time.monotonic()
        deadline = started + timeout_seconds
        with _translated_errors(timeout_seconds):
            for _ in range(max_redirects + 1):
                request = client.build_request(
                    hop.method, hop.url, headers=hop.headers, content=hop.content, timeout=_timeout(_left(deadline))
                )
                with _sent_sync(client, request) as response:
                    next_hop = _next_hop(hop, response, self._policy) if follow_redirects else None
                    if next_hop is None:
                        body = _Body(response, max_bytes=max_bytes, truncate=truncate)
                        for chunk in response.iter_raw():  # raw: see `request`
                            if body.feed(chunk):
                                break
                            _left(deadline)
                        else:
                            body.finish()
                        return _response(response, body, started)
                hop = next_hop
            raise TooManyRedirects(max_redirects)

    async def aclose(self) -> None:
        """Close both underlying clients (whichever were used)."""
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None
        self.close()

    def close(self) -> None:
        """Close the sync client (the async one needs `aclose`)."""
        with self._sync_lock:
            if self._sync_client is not None:
                self._sync_client.close()
                self._sync_client = None

    def _async(self) -> httpx.AsyncClient:
        if self._async_client is None:
            transport = GuardedAsyncTransport(self._guard, ssl_context=self._ssl(), limits=_LIMITS)
            self._async_client = httpx.AsyncClient(
                transport=transport, trust_env=False, follow_redirects=False, headers=_DEFAULT_HEADERS
            )
        return self._async_client

    def _sync(self) -> httpx.Client:
        with self._sync_lock:  # WeasyPrint may fetch from several threads
            if self._sync_client is None:
                transport = GuardedSyncTransport(self._guard, ssl_context=self._ssl(), limits=_LIMITS)
                self._sync_client = httpx.Client(
                    transport=transport,
                    trust_env=False,
                    follow_redirects=False,
                    headers=_DEFAULT_HEADERS,
                )
            return self._sync_client

    def _ssl(self) -> ssl.SSLContext:
        # Loading the CA bundle costs milliseconds of cold start: once per client, on first use.
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(trust_env=False)
        return self._ssl_context


@asynccontextmanager
async def _sent(client: httpx.AsyncClient, request: httpx.Request) -> AsyncIterator[httpx.Response]:
    response = await client.send(request, stream=True)
    try:
        yield response
    finally:
        await response.aclose()


@contextmanager
def _sent_sync(client: httpx.Client, request: httpx.Request) -> Iterator[httpx.Response]:
    response = client.send(request, stream=True)
    try:
        yield response
    finally:
        response.close()


def _left(deadline: float) -> float:
    """Seconds left before `deadline`. Raises TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _response(response: httpx.Response, body: _Body, started: float) -> OutboundResponse:
    return OutboundResponse(
        status_code=response.status_code,
        headers=response.headers,
        content=body.content(),
        url=str(response.url),
        elapsed_seconds=time.monotonic() - started,
        truncated=body.truncated,
    )


def shared_client(resources: MutableMapping[str, Any], settings: Settings) -> OutboundClient:
    """The machine's OutboundClient, kept in a HandlerContext's `resources` under RESOURCE_KEY.

    Created on first use; whoever owns `resources` closes it (`aclose`) when the machine exits.
    """
    client = resources.get(RESOURCE_KEY)
    if not isinstance(client, OutboundClient):
        client = OutboundClient(settings)
        resources[RESOURCE_KEY] = client
    return client
