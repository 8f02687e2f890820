"""Records every request the emulator answers, for assertions in tests, and the call rate per action.

`rate_report()` replays what was recorded through Fly's documented limits (actions.py): per
action, how many calls, the busiest second of any one identifier, and how many calls a token
bucket with Fly's rate and burst would have refused. A connection the emulator dropped on
purpose is recorded with status 0.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .actions import classify, limit_of
from .answers import DROPPING, DroppedConnection
from .ratelimit import TokenBucket


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]  # lower-cased names; a test double may keep the Authorization value
    json: Any  # the decoded body, or None
    status: int  # 0: the connection was dropped on purpose
    at: float = 0.0  # time.monotonic() on arrival
    action: str | None = None  # create, list, get, start, stop, delete, wait, … (None: not the API)
    identifier: str | None = None  # what Fly scopes its rate limit to: the machine, else the app

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.query if k == name), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionRate:
    """Calls of one action over a run."""

    action: str
    calls: int
    per_second: float  # calls / seconds between the first and last call of the run (all identifiers)
    busiest_second: int  # most calls of one identifier within any one second
    over_limit: int  # calls a bucket with Fly's documented rate and burst would have refused


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

    def rate_report(self, since: float = 0.0) -> dict[str, ActionRate]:
        """Per action: calls, mean rate, busiest second per identifier, and calls over Fly's limits.

        Only requests that arrived at or after `since` (time.monotonic()) count.
        """
        calls: dict[str, list[RecordedRequest]] = defaultdict(list)
        for request in self.requests:
            if request.action is not None and request.at >= since:
                calls[request.action].append(request)
        report: dict[str, ActionRate] = {}
        for action, requests in sorted(calls.items()):
            arrivals = [r.at for r in requests]
            span = max(max(arrivals) - min(arrivals), 1.0)
            busiest, over = 0, 0
            by_identifier: dict[str, list[float]] = defaultdict(list)
            for request in requests:
                by_identifier[request.identifier or ""].append(request.at)
            for times in by_identifier.values():
                times.sort()
                window: deque[float] = deque()
                bucket = TokenBucket(limit_of(action), times[0])
                for at in times:
                    window.append(at)
                    while window[0] <= at - 1.0:
                        window.popleft()
                    busiest = max(busiest, len(window))
                    over += not bucket.take(at)
            report[action] = ActionRate(
                action=action,
                calls=len(requests),
                per_second=len(requests) / span,
                busiest_second=busiest,
                over_limit=over,
            )
        return report

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            chunks: list[bytes] = []
            status = 0
            recorded = False
            arrived = time.monotonic()

            async def receive_and_keep() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    chunks.append(message.get("body", b""))
                return message

            async def send_and_note(message: Message) -> None:
                nonlocal status, recorded
                if message["type"] == "http.response.start" and not recorded:
                    # On record before the client can see any of the answer: a test that
                    # reads the record right after its call returns must find the call.
                    status, recorded = (0 if message.get(DROPPING) else int(message["status"])), True
                    self._record(scope, b"".join(chunks), status, arrived)
                await send(message)

            try:
                await app(scope, receive_and_keep, send_and_note)
            except DroppedConnection:
                status = 0
                raise
            finally:
                if not recorded:
                    self._record(scope, b"".join(chunks), status, arrived)

        return recording

    def _record(self, scope: Scope, body: bytes, status: int, arrived: float) -> None:
        try:
            decoded = json.loads(body) if body else None
        except ValueError:
            decoded = None
        action = classify(str(scope["method"]), str(scope["path"]))
        record = RecordedRequest(
            method=str(scope["method"]),
            path=str(scope["path"]),
            query=tuple(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)),
            headers={k.decode().lower(): v.decode() for k, v in scope.get("headers", [])},
            json=decoded,
            status=status,
            at=arrived,
            action=action[0] if action else None,
            identifier=action[1] if action else None,
        )
        with self._lock:
            self._requests.append(record)
