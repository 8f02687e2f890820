"""Records every request the emulator answers, for assertions in tests."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]  # lower-cased names; a test double may keep the Authorization value
    json: Any  # the decoded body, or None
    status: int

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.query if k == name), None)


class Recorder:
    """ASGI middleware factory and the thread-safe list of what it saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            chunks: list[bytes] = []
            status = 0

            async def receive_and_keep() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    chunks.append(message.get("body", b""))
                return message

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await app(scope, receive_and_keep, send_and_note)
            finally:
                self._record(scope, b"".join(chunks), status)

        return recording

    def _record(self, scope: Scope, body: bytes, status: int) -> None:
        try:
            decoded = json.loads(body) if body else None
        except ValueError:
            decoded = None
        record = RecordedRequest(
            method=str(scope["method"]),
            path=str(scope["path"]),
            query=tuple(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)),
            headers={k.decode().lower(): v.decode() for k, v in scope.get("headers", [])},
            json=decoded,
            status=status,
        )
        with self._lock:
            self._requests.append(record)
