"""Canned answers of a Machines API having a bad day, and the dropped connection.

Error bodies follow fly-go's `errorResponse` (`{"error", "status"}`, flaps/flaps_error.go); texts
are those seen in fly-go tests, flyctl code or production reports where one exists (cited), and
marked unverified otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .faults import RESET

DROPPING = "emulator.dropping"  # marks a status line that a reset follows: the recorder notes status 0


class DroppedConnection(Exception):
    """Raised after the status line went out: the server closes the connection mid-answer."""


class DropConnection(Response):
    """Promise a body, then drop the connection: the client sees a reset, never an answer."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"64")]
        await send({"type": "http.response.start", "status": 200, "headers": headers, DROPPING: True})
        raise DroppedConnection("emulated connection reset")


class _QuietDrops(logging.Filter):
    """uvicorn logs every exception of an app; a deliberate drop is not one worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


def silence_dropped_connections() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


def error(status: int, text: str, *, code: str | None = None) -> JSONResponse:
    """`{"error": …}` (plus `status` for capacity and name errors), as reference 2.2 recommends."""
    body: dict[str, Any] = {"error": text}
    if code:
        body["status"] = code
    return JSONResponse(body, status_code=status)


def capacity_error(region: str) -> JSONResponse:
    # fly-go flaps/flaps_error_test.go: {"error":"out of capacity","status":"insufficient_capacity"} (503)
    return error(503, f"out of capacity in region {region}", code="insufficient_capacity")


def quota_error(region: str) -> JSONResponse:
    # Observed in production (Kilo-Org/cloud#516).
    return error(
        403,
        f'organization "emulator" is using 65536 MB of memory in {region} which is over the allowed quota. '
        "please consider other regions",
    )


def precondition_error(state: str) -> JSONResponse:
    # Observed verbatim (hexclave/hexclave#2060): "412 unable to start machine from current state: 'created'".
    return error(412, f"unable to start machine from current state: '{state}'")


def fault_answer(action: str, status: int) -> Response:
    """What an injected fault of `status` on `action` looks like on the wire."""
    if status == RESET:
        return DropConnection()
    if status == 429:
        return error(429, "rate limit exceeded")  # body unverified (reference 2.4)
    if status == 408:
        return error(408, "request timed out")
    if status == 412:
        return precondition_error("created")
    if status == 409:
        # A full host on start/update (Fly staff, community.fly.io/t/409-conflict-error-from-machines-api/15555).
        return error(409, "insufficient memory available to fulfill request", code="insufficient_capacity")
    if status == 503 and action == "create":
        return capacity_error("iad")
    if status == 401:
        return error(401, "unauthorized")
    return error(status, "internal error" if status >= 500 else "request failed")  # text unverified
