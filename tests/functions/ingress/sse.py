"""A Server-Sent Events reader for the tests: a real HTTP stream read on a thread, parsed by hand."""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    event: str  # "message" unless the frame named another
    data: Any  # the data lines, parsed as JSON
    id: str | None


@dataclass
class SseStream:
    """GET `path` as an event stream; `next()` returns its events in order, `ended` once closed."""

    url: str
    path: str
    token: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    connected: threading.Event = field(default_factory=threading.Event)
    comments: list[str] = field(default_factory=list)
    _events: queue.Queue[SseEvent] = field(default_factory=queue.Queue)
    _client: httpx.Client | None = None

    def start(self) -> SseStream:
        threading.Thread(target=self._run, daemon=True).start()
        assert self.connected.wait(30), "the stream did not open"
        return self

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream", **self.headers}
        self._client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(30, read=None), trust_env=False)
        try:
            with self._client.stream("GET", self.path, headers=headers) as response:
                self.status = response.status_code
                if response.status_code != 200:
                    response.read()
                    self.body = response.text
                    return
                fields: dict[str, str] = {}
                data: list[str] = []
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line)
                        if line == ": connected":
                            self.connected.set()
                        continue
                    if line == "":
                        if data:
                            self._events.put(
                                SseEvent(fields.get("event", "message"), json.loads("\n".join(data)), fields.get("id"))
                            )
                        fields, data = {}, []
                        continue
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "data":
                        data.append(value)
                    else:
                        fields[name] = value
        except httpx.HTTPError:
            pass
        finally:
            self.connected.set()
            self.ended.set()
            self._client.close()

    def next(self, timeout: float = 30) -> SseEvent:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event on {self.path} within {timeout} s") from None

    def drain(self) -> list[SseEvent]:
        """The events received so far, without waiting."""
        events = []
        while not self._events.empty():
            events.append(self._events.get_nowait())
        return events

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
