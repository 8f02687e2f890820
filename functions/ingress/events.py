"""Live job events over Server-Sent Events, and waiting for a job to end.

GET /events streams the caller's tenant's job events (every tenant's, or one named by `tenantId`,
for admins), filtered by queue, state, batch and tag. GET /jobs/{id}/events streams one job's
events, starting with its current state, and ends once the job is final. Both resume after the
`Last-Event-ID` header (or `lastEventId` in the query, for clients that cannot set headers) while
that event is among the last EVENTS_REPLAY_SIZE the instance saw; otherwise the stream starts with
an `event: reset`, meaning "events may have been missed: read the state afresh".

GET /jobs/{id}?wait=N answers as soon as the job is final, or after N seconds with its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any, Final

import orjson
import psycopg
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.db import job_store
from shared.db.models import Job, JobState
from shared.db.pool import Pool
from shared.errors import Forbidden, NotFound
from shared.schemas.common import CamelModel
from shared.tokens import Principal
from shared.vocabulary import FINAL_STATES

from .auth import authenticate, reading_tenant
from .event_hub import EventFilter, EventHub, KeepAlive, LiveEvent, Reset, Subscriber, Subscription, shutting_down
from .http import INTEGER_TEXT, parse_query, single_params

MAX_WAIT_SECONDS: Final = 60
# While waiting, the row is read again at least this often: a missed notification (the hub was
# reconnecting) delays the answer by this much at most, never past the wait.
_RECHECK_SECONDS: Final = 5.0
# A dropped stream whose response is still writing gets this long to finish; then it is cut off
# (its client stopped reading, so the write would block for ever).
_DROP_GRACE_SECONDS: Final = 1.0
RESET_FRAME: Final = b'event: reset\ndata: {"reason": "events may have been missed; read the current state"}\n\n'
HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_ID_PATTERN: Final = r"^[0-9]{1,20}$"


class EventsQuery(CamelModel):
    queue: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(None, max_length=20)
    state: list[JobState] | None = None
    batch_id: str | None = Field(None, min_length=1, max_length=64)
    tag: str | None = Field(None, min_length=1, max_length=64)
    tenant_id: str | None = Field(None, min_length=1, max_length=128, description="admins only: one tenant's events")
    last_event_id: str | None = Field(
        None, pattern=_ID_PATTERN, description="resume after this event (as the Last-Event-ID header)"
    )


class JobEventsQuery(CamelModel):
    last_event_id: str | None = Field(None, pattern=_ID_PATTERN)


class WaitQuery(CamelModel):
    wait: Annotated[int, Field(ge=0, le=MAX_WAIT_SECONDS), INTEGER_TEXT] | None = Field(
        None, description="answer once the job is final, or after this many seconds"
    )


def hub_of(request: Request) -> EventHub:
    hub: EventHub = request.app.state.event_hub
    return hub


def events_filter(principal: Principal, query: EventsQuery) -> EventFilter:
    if query.tenant_id is not None and not principal.is_admin and query.tenant_id != principal.tenant_id:
        raise Forbidden("only admins may watch another tenant's events")
    tenant = query.tenant_id if query.tenant_id is not None else reading_tenant(principal)
    return EventFilter(
        tenant_id=tenant,
        queues=frozenset(query.queue) if query.queue else None,
        states=frozenset(s.value for s in query.state) if query.state else None,
        batch_id=query.batch_id,
        tag=query.tag,
    )


def last_event_id(request: Request, from_query: str | None) -> str | None:
    header = request.headers.get("last-event-id", "").strip()
    return header or from_query


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response that ends when its subscriber is dropped, even while a write
    to a client that stopped reading is blocked (uvicorn then closes the connection)."""

    def __init__(self, frames: AsyncIterator[bytes], subscriber: Subscriber | None) -> None:
        super().__init__(frames, media_type="text/event-stream", headers=HEADERS)
        self.subscriber = subscriber

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def client_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pumping = asyncio.create_task(pump())
        watchers: list[asyncio.Task[Any]] = [asyncio.create_task(client_gone())]
        if self.subscriber is not None:
            watchers.append(asyncio.create_task(self.subscriber.gone.wait()))
        try:
            await asyncio.wait([pumping, *watchers], return_when=asyncio.FIRST_COMPLETED)
            if not pumping.done() and self.subscriber is not None and self.subscriber.gone.is_set():
                await asyncio.wait([pumping], timeout=_DROP_GRACE_SECONDS)
        finally:
            for task in (pumping, *watchers):
                task.cancel()
            results = await asyncio.gather(pumping, *watchers, return_exceptions=True)
            with contextlib.suppress(AttributeError):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
        error = results[0]
        if isinstance(error, Exception) and not isinstance(error, OSError):
            raise error  # a bug, not a client that went away


def event_stream(
    subscription: Subscription,
    *,
    first: bytes = b"",
    ends: Callable[[LiveEvent], Awaitable[bool]] | None = None,
) -> EventStreamResponse:
    """An SSE response for `subscription` (the subscriber is removed whenever the stream ends:
    the client went away, or the hub dropped it). Events waiting together go out in one write."""

    async def frames_of(items: Sequence[LiveEvent | Reset | KeepAlive]) -> tuple[bytes, bool]:
        out = []
        for item in items:
            if isinstance(item, Reset):
                out.append(RESET_FRAME)
                continue
            if isinstance(item, KeepAlive):
                out.append(b": keep-alive\n\n")
                continue
            out.append(item.frame())
            if ends is not None and await ends(item):
                return b"".join(out), True
        return b"".join(out), False

    lifetime = subscription.hub.settings.events_max_stream_seconds
    loop = asyncio.get_running_loop()

    async def frames() -> AsyncIterator[bytes]:
        ends_at = loop.time() + lifetime
        try:
            # retry: how long a browser's EventSource waits before reconnecting.
            yield b"retry: 2000\n: connected\n\n"
            chunk, done = await frames_of(await subscription.backlog())
            if chunk:
                yield chunk
            if done:
                return
            if first:
                yield first
            while True:
                try:
                    async with asyncio.timeout_at(ends_at):
                        batch = await subscription.next_batch()
                except TimeoutError:
                    return  # long enough: the client reconnects (its credentials checked again) and resumes
                if batch is None:
                    return  # dropped: the client reconnects and resumes from the buffer
                chunk, done = await frames_of(batch)
                yield chunk
                if done:
                    return
        finally:
            subscription.hub.unsubscribe(subscription.subscriber)

    return EventStreamResponse(frames(), subscription.subscriber)


async def read_job(pool: Pool, job_id: int, tenant_id: str | None) -> Job | None:
    async with pool.connection() as conn:
        return await job_store.get_job(conn, job_id, tenant_id=tenant_id)


def current_state_frame(job: Job) -> bytes:
    """The first frame of a job's stream: where it stands now (no id: it resumes nothing)."""
    body: dict[str, Any] = {
        "type": "current",
        "jobId": job.id,
        "state": job.state.value,
        "queue": job.queue,
        "tenantId": job.tenant_id,
        "attempt": job.attempt,
        "batchId": job.batch_id,
    }
    if job.state in (JobState.RETRYABLE, JobState.DISCARDED) and job.errors:
        body["error"] = job.errors[-1]
    return b"data: %s\n\n" % orjson.dumps(body)


def ends_when_final(pool: Pool, job_id: int, tenant_id: str | None) -> Callable[[LiveEvent], Awaitable[bool]]:
    """Whether a job's stream ends after `event`: a final event, and the row still holds that very
    outcome (same state, same attempt). Events reach the hub a few milliseconds after their commit
    (migrations/0012), so a final event can arrive after the job was retried, or retried and
    finished otherwise: that stream goes on to the events that follow."""

    async def ends(event: LiveEvent) -> bool:
        if event.note.state not in FINAL_STATES:
            return False
        try:
            job = await read_job(pool, job_id, tenant_id)
        except (psycopg.Error, OSError):  # PoolTimeout and PoolClosed are psycopg errors
            return True  # unknown: end it; the client reconnects, reads the state and resumes
        return job is None or (job.state.value == event.note.state and job.attempt == event.note.attempt)

    return ends


async def stream_events(request: Request) -> Response:
    """GET /events."""
    principal = authenticate(request, "jobs:read")
    query = parse_query(EventsQuery, single_params(request, "queue", "state"))
    event_filter = events_filter(principal, query)
    subscription = hub_of(request).subscribe(event_filter, last_event_id(request, query.last_event_id))
    return event_stream(subscription)


async def stream_job_events(request: Request, job_id: int) -> Response:
    """GET /jobs/{id}/events: subscribe first, then read the row, so nothing falls in between."""
    principal = authenticate(request, "jobs:read")
    query = parse_query(JobEventsQuery, single_params(request))
    pool: Pool = request.app.state.pool
    hub, tenant = hub_of(request), reading_tenant(principal)
    if hub.closing:  # a stopping server still tells where a job stands, once, when that is final
        return await final_job_stream(pool, job_id, tenant)
    subscription = hub.subscribe(
        EventFilter(tenant_id=tenant, job_id=job_id), last_event_id(request, query.last_event_id)
    )
    try:
        job = await read_job(pool, job_id, tenant)
    except BaseException:
        hub.unsubscribe(subscription.subscriber)
        raise
    if job is None:
        hub.unsubscribe(subscription.subscriber)
        raise NotFound("no such job")
    if job.state in FINAL_STATES and not subscription.replay:
        hub.unsubscribe(subscription.subscriber)
        return once(job)
    return event_stream(subscription, first=current_state_frame(job), ends=ends_when_final(pool, job_id, tenant))


def once(job: Job) -> EventStreamResponse:
    """The stream of a final job: its state, then the end."""

    async def frames() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n: connected\n\n" + current_state_frame(job)

    return EventStreamResponse(frames(), None)


async def final_job_stream(pool: Pool, job_id: int, tenant: str | None) -> EventStreamResponse:
    """On a stopping server: a final job's one-frame stream; 404 or 503 otherwise."""
    job = await read_job(pool, job_id, tenant)
    if job is None:
        raise NotFound("no such job")
    if job.state not in FINAL_STATES:
        raise shutting_down()
    return once(job)


def wait_seconds(request: Request) -> int | None:
    """The `wait` of GET /jobs/{id}?wait=N (None without one); 422 unless 0..60 in digits, given
    once, and for any other query parameter (the route has no other)."""
    return parse_query(WaitQuery, single_params(request)).wait


async def wait_for_final(hub: EventHub, pool: Pool, job_id: int, tenant: str | None, seconds: int) -> Job | None:
    """The job once it is final, or as it is after `seconds`; None when there is no such job.

    Subscribed before the first read, so an event committed in between is not missed; any event of
    the job (or a reset) is only a reason to read the row again, which is the answer's source.
    """
    if hub.closing:  # a stopping server answers with the state as it is now
        return await read_job(pool, job_id, tenant)
    deadline = time.monotonic() + seconds
    subscriber = hub.subscribe(EventFilter(tenant_id=tenant, job_id=job_id)).subscriber
    try:
        while True:
            job = await read_job(pool, job_id, tenant)
            remaining = deadline - time.monotonic()
            if job is None or job.state in FINAL_STATES or remaining <= 0 or hub.closing:
                return job  # a stopping server answers with the state as it is now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(subscriber.queue.get(), timeout=min(remaining, _RECHECK_SECONDS))
            if subscriber.dropped and not hub.closing:
                subscriber = hub.subscribe(EventFilter(tenant_id=tenant, job_id=job_id)).subscriber
    finally:
        hub.unsubscribe(subscriber)
