"""The emulator's recorder: a call is on record before its caller can see any of the answer.

Tests read `emu.requests` and `emu.rate_report()` right after their calls return; a record
written only after the answer went out raced them (a create counted 3 times for 4 calls).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from infra.fly_emulator.answers import DropConnection, DroppedConnection
from infra.fly_emulator.recorder import Recorder

MACHINES = "/v1/apps/app/machines"


def http_scope(method: str, path: str) -> Scope:
    return {"type": "http", "method": method, "path": path, "query_string": b"", "headers": []}


async def answer_ok(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def call(recorder: Recorder, app: Any, seen: list[list[Any]]) -> None:
    """Run one request through the recorder; at each message the client gets, note what is on record."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b'{"region": "iad"}', "more_body": False}

    async def send(message: Message) -> None:
        seen.append([message["type"], [(r.action, r.status, r.json) for r in recorder.requests]])

    await recorder.wrap(app)(http_scope("POST", MACHINES), receive, send)


def test_a_call_is_on_record_when_its_status_line_reaches_the_client() -> None:
    recorder, seen = Recorder(), list[list[Any]]()
    asyncio.run(call(recorder, answer_ok, seen))
    record = [("create", 201, {"region": "iad"})]
    assert seen == [["http.response.start", record], ["http.response.body", record]]
    assert len(recorder.requests) == 1  # recorded once, not again when the app returns


def test_a_dropped_answer_is_on_record_as_status_zero_before_the_reset() -> None:
    recorder, seen = Recorder(), list[list[Any]]()

    async def drop(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await DropConnection()(scope, receive, send)

    try:
        asyncio.run(call(recorder, drop, seen))
    except DroppedConnection:
        pass
    else:
        raise AssertionError("the drop should reach the server as an exception")
    assert seen == [["http.response.start", [("create", 0, {"region": "iad"})]]]
    assert [r.status for r in recorder.requests] == [0]


def test_an_app_that_fails_before_answering_is_still_on_record() -> None:
    recorder, seen = Recorder(), list[list[Any]]()

    async def fail(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("boom")

    try:
        asyncio.run(call(recorder, fail, seen))
    except RuntimeError:
        pass
    assert seen == []
    assert [(r.action, r.status) for r in recorder.requests] == [("create", 0)]
