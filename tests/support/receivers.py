"""Real HTTP receivers on loopback for outbound tests (webhooks, image sources, callbacks).

    with http_receiver([(500, {}, 0.0), (200, {}, 0.0)]) as receiver:
        ...  # send to receiver.url; receiver.requests lists what arrived

Each request gets the next scripted reply; the last one repeats. A reply is a tuple
`(status, headers, delay_seconds)` or a `Reply` (which can also carry a body or stream a large
one). Delays wait on a stop event, so leaving the block never waits for a slow reply, and every
server thread is joined before it returns.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `stream_bytes` > 0 streams that many bytes without a Content-Length."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    body: bytes = b""
    stream_bytes: int = 0


@dataclass(frozen=True)
class ReceivedRequest:
    """What arrived: header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


ReplySpec = Reply | tuple[int, dict[str, str], float]


class Receiver:
    """A running receiver: `url`, and what it has seen so far."""

    def __init__(self, replies: Sequence[ReplySpec], *, host: str, scheme: str) -> None:
        self._replies = [r if isinstance(r, Reply) else Reply(r[0], dict(r[1]), r[2]) for r in replies] or [Reply()]
        self._lock = threading.Lock()
        self.host = host
        self.scheme = scheme
        self.port = 0
        self.requests: list[ReceivedRequest] = []
        self.server_names: list[str | None] = []  # TLS SNI names seen in handshakes
        self.bytes_streamed = 0
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def _next_reply(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            index = len(self.requests)
            self.requests.append(request)
            return self._replies[min(index, len(self._replies) - 1)]


def _handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that connects and never sends cannot keep the server from stopping

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            request = ReceivedRequest(
                method=self.command,
                path=self.path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
            )
            reply = receiver._next_reply(request)
            if reply.delay_seconds and receiver.stop.wait(reply.delay_seconds):
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.stream_bytes:
                self.send_header("connection", "close")
                self.end_headers()
                self._stream(reply.stream_bytes)
                return
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def _stream(self, total: int) -> None:
            chunk = b"x" * 16384
            try:
                while receiver.bytes_streamed < total and not receiver.stop.is_set():
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    with receiver._lock:
                        receiver.bytes_streamed += len(chunk)
            except OSError:
                pass  # the client hung up: that is what the size-cap tests want to see

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread


@contextmanager
def http_receiver(
    responses: Sequence[ReplySpec] = ((200, {}, 0.0),),
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
) -> Iterator[Receiver]:
    """Run a receiver on `host`:`port` (0: a free port) until the block ends; `tls` serves https."""
    receiver = Receiver(responses, host=host, scheme="https" if tls else "http")
    server_class: type[_Server] = _Server
    if ":" in host:
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = server_class((host, port), _handler_for(receiver))
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: receiver.server_names.append(name)  # type: ignore[assignment]
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()
