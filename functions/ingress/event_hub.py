"""One LISTEN connection per API process, fanned out to every live event stream.

The insert trigger of migrations/0006 NOTIFYs `cp_events` as jobs are inserted; since 0012 the
other triggers append every state change (and progress) to the `job_event_log` table, committed
with it. The hub of each API process:

- moves logged events to `cp_events` every EVENTS_FLUSH_SECONDS (`job_events_flush`: one flush
  at a time across all processes, each a transaction that deletes what it notifies). A NOTIFY in
  the writer's transaction would hold a database-wide lock through its commit and line up every
  claim and completion of the fleet behind it (see migrations/0012);
- listens on a connection of its own (reconnecting with backoff), and hands each notification's
  events to a publisher task through a bounded inbox, so the connection is always read promptly:
  an unread notification queue in Postgres would end by refusing every NOTIFY, that is every
  write to `jobs`;
- keeps the last EVENTS_REPLAY_SIZE events in delivery order, so a client reconnecting with
  Last-Event-ID resumes without a gap while its id is still there. Every process reads the one
  notification queue of Postgres in the same (commit) order and event ids come from one sequence,
  so a client may resume on any instance that saw its last event. When the hub itself may have
  missed events (its connection dropped, its inbox overflowed) it forgets the buffer and tells
  every stream to `reset`: resuming across that gap would silently skip events;
- reads from the row what a notification leaves out (the error of a failed attempt, the tags
  when a stream filters by tag), once for all events of a batch;
- gives each stream a bounded queue: a stream whose client does not keep up is dropped when its
  queue is full, never allowed to grow memory (the client reconnects and resumes).

Other routes (the dashboard) use it from Python:

    async with hub.subscription(EventFilter(tenant_id="acme", queues=frozenset({"images"}))) as events:
        async for item in events:  # LiveEvent, or RESET: events may have been missed
            ...

The iterator ends when the hub drops the subscriber (it did not keep up) or stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row

from functions.dispatcher.lease import keepalive_params
from shared.db import event_log
from shared.db.pool import Pool
from shared.errors import RateLimited, ServiceUnavailable
from shared.notify import EVENTS_CHANNEL, JobEventNote, job_events, listen
from shared.settings import Settings
from shared.vocabulary import FAILURE_EVENTS, JobEvent

from .sql import QUERIES

logger = logging.getLogger("functions.ingress.events")

# Events parsed but not yet published; past this the publisher cannot keep up and the hub resets.
INBOX_LIMIT: Final = 100_000
_DETAILS_TIMEOUT_SECONDS: Final = 2.0
_BACKOFF_MAX_SECONDS: Final = 10.0
# A listening connection whose server vanished is noticed (and replaced) within about this.
_DEAD_PEER_SECONDS: Final = 30.0
# How often the hub sends logged events: often while someone here watches (a flush sends to every
# instance, so one watched instance keeps all of them live), rarely otherwise (it only keeps the
# resume window filled). At most _FLUSH_MAX events per flush, then it flushes again at once.
EVENTS_FLUSH_SECONDS: Final = 0.005
EVENTS_FLUSH_UNWATCHED_SECONDS: Final = 0.1
_FLUSH_MAX: Final = 5_000
_FLUSH_BACKOFF_MAX_SECONDS: Final = 1.0
# How long `stop` waits for the listener to notice it between its steps before cancelling it (a
# step that does not end, a connection that hangs, must not hold the app's shutdown).
_STOP_GRACE_SECONDS: Final = 2.0


@dataclass(slots=True, eq=False)
class LiveEvent:
    """One job event as streams send it; built once, shared by every stream that sends it."""

    note: JobEventNote
    error: dict[str, Any] | None = None
    tags: tuple[str, ...] | None = None  # None: not read from the row (yet)
    progress: dict[str, Any] | None = None  # of a `progress` event: carried by it (0016), else read from the row
    _frame: bytes | None = None

    def __post_init__(self) -> None:
        if self.progress is None:
            self.progress = self.note.progress

    @property
    def needs_error(self) -> bool:
        return self.error is None and self.note.type in FAILURE_EVENTS

    @property
    def needs_progress(self) -> bool:
        return self.progress is None and self.note.type == JobEvent.PROGRESS

    @property
    def needs_details(self) -> bool:
        return self.needs_error or self.needs_progress

    def json(self) -> dict[str, Any]:
        note = self.note
        body: dict[str, Any] = {
            "id": str(note.event_id),
            "type": note.type,
            "jobId": note.job_id,
            "state": note.state,
            "queue": note.queue,
            "tenantId": note.tenant_id,
            "attempt": note.attempt,
            "batchId": note.batch_id,
        }
        if note.type in FAILURE_EVENTS:
            body["error"] = self.error
        elif note.type == JobEvent.PROGRESS:
            body["progress"] = self.progress  # {"done", "total", "message"}
        return body

    def frame(self) -> bytes:
        """The Server-Sent Events frame (the default `message` type, so `onmessage` gets it)."""
        if self._frame is None:
            self._frame = b"id: %d\ndata: %s\n\n" % (self.note.event_id, orjson.dumps(self.json()))
        return self._frame


def _own_error(errors: Any, note: JobEventNote, row_attempt: int) -> dict[str, Any] | None:
    """The error a failure event announces, from the row's list of errors, which may have grown
    since (another attempt failed). Since 0016 the event names its entry (the list only grows);
    an event without the number takes the last entry of its attempt, or an entry without an
    attempt while the row is still at it."""
    if not isinstance(errors, list):
        return None
    if note.error_number is not None:
        entry = errors[note.error_number - 1] if note.error_number <= len(errors) else None
        return entry if isinstance(entry, dict) else None
    for entry in reversed(errors):
        if isinstance(entry, dict) and entry.get("attempt") == note.attempt:
            return entry
    last = errors[-1] if errors else None
    if isinstance(last, dict) and "attempt" not in last and row_attempt == note.attempt:
        return last
    return None


class Reset:
    """Sent to every stream when the hub may have missed events: clients should read state afresh."""


RESET: Final = Reset()


class KeepAlive:
    """Put in a stream's queue when nothing else was for EVENTS_KEEPALIVE_SECONDS (SSE writes a
    comment line, so proxies keep the connection): one hub task for every stream, rather than a
    timer around every wait of every stream."""


KEEPALIVE: Final = KeepAlive()


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which events a stream wants. None means any; `tenant_id` None is every tenant (admins)."""

    tenant_id: str | None
    queues: frozenset[str] | None = None
    states: frozenset[str] | None = None
    batch_id: str | None = None
    tag: str | None = None
    job_id: int | None = None

    def matches(self, event: LiveEvent) -> bool:
        return self.tag_free_match(event.note) and (
            self.tag is None or (event.tags is not None and self.tag in event.tags)
        )

    def tag_free_match(self, note: JobEventNote) -> bool:
        return (
            (self.tenant_id is None or note.tenant_id == self.tenant_id)
            and (self.job_id is None or note.job_id == self.job_id)
            and (self.queues is None or note.queue in self.queues)
            and (self.states is None or note.state in self.states)
            and (self.batch_id is None or note.batch_id == self.batch_id)
        )


@dataclass(eq=False)
class Subscriber:
    """One open stream: its filter and the events waiting for it (a bounded queue).

    `gone` is set when the hub ends the stream, so a response blocked writing to a client that
    stopped reading can be cut off (its queue is already emptied).
    """

    filter: EventFilter
    queue: asyncio.Queue[LiveEvent | Reset | KeepAlive | None]
    dropped: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    quiet: bool = True  # nothing was offered since the last keep-alive tick


@dataclass(frozen=True, slots=True)
class Subscription:
    hub: EventHub
    subscriber: Subscriber
    replay: list[LiveEvent]  # events after Last-Event-ID still in the buffer (not yet filtered by tag)
    gap: bool  # a Last-Event-ID was given but is no longer (or was never) in the buffer
    _iterator: list[AsyncIterator[LiveEvent | Reset]] = field(default_factory=list, repr=False, compare=False)

    def __aiter__(self) -> AsyncIterator[LiveEvent | Reset]:
        """One iterator per subscription: iterating again goes on where it was. A new one would
        replay the backlog again and lose what the last had taken in a batch but not yielded."""
        if not self._iterator:
            self._iterator.append(self._items())
        return self._iterator[0]

    async def _items(self) -> AsyncIterator[LiveEvent | Reset]:
        for item in await self.backlog():
            yield item
        while (batch := await self.next_batch()) is not None:
            for waiting in batch:
                if not isinstance(waiting, KeepAlive):
                    yield waiting

    async def backlog(self) -> list[LiveEvent | Reset]:
        """What comes before live events: RESET if resuming was impossible, then the replay."""
        subscriber = self.subscriber
        replay = self.replay
        if subscriber.filter.tag is not None or any(e.needs_details for e in replay):
            await self.hub.add_details(replay, tags=subscriber.filter.tag is not None)
        items: list[LiveEvent | Reset] = [RESET] if self.gap else []
        return items + [event for event in replay if subscriber.filter.matches(event)]

    async def next_batch(self, limit: int = 100) -> list[LiveEvent | Reset | KeepAlive] | None:
        """The items waiting (at least one, at most `limit`), None once the hub dropped this
        subscriber. No timer, no task: this runs once per event and stream."""
        queue = self.subscriber.queue
        first = await queue.get() if queue.empty() else queue.get_nowait()
        items = [first]
        while len(items) < limit and not queue.empty():
            items.append(queue.get_nowait())
        if None in items:
            return None  # dropped: its queue was emptied, so None comes alone
        return items  # type: ignore[return-value]


def shutting_down() -> ServiceUnavailable:
    """What a stopping instance answers a new stream: reconnect (to another instance)."""
    return ServiceUnavailable("this instance is shutting down; reconnect", headers={"Retry-After": "1"})


def _discard(index: dict[Any, set[Subscriber]], key: object, subscriber: Subscriber) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(subscriber)
        if not members:
            del index[key]


@dataclass
class EventHub:
    settings: Settings
    pool: Pool
    connected: bool = False
    _buffer: deque[tuple[int, LiveEvent]] = field(default_factory=deque)
    _position: dict[int, int] = field(default_factory=dict)  # event id -> delivery number
    _delivered: int = 0
    _subscribers: set[Subscriber] = field(default_factory=set)
    _by_job: dict[int, set[Subscriber]] = field(default_factory=dict)
    _by_tenant: dict[str | None, set[Subscriber]] = field(default_factory=dict)
    _inbox: deque[JobEventNote | Reset] = field(default_factory=deque)
    _inbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _watched: asyncio.Event = field(default_factory=asyncio.Event)  # a stream came: flush now
    _tag_streams: int = 0
    _per_tenant: dict[str | None, int] = field(default_factory=dict)  # None: admins watching everyone
    dropped_total: int = 0  # streams dropped for not keeping up (tests, metrics)
    received_total: int = 0  # job events received (metrics)
    closing: bool = False  # the server is stopping: streams were ended, new ones are refused

    # --- subscriptions (called from request handlers; never awaits, so nothing slips in between)

    @contextlib.asynccontextmanager
    async def subscription(
        self, event_filter: EventFilter, last_event_id: str | None = None
    ) -> AsyncIterator[Subscription]:
        """`subscribe`, unsubscribed when the block ends."""
        subscription = self.subscribe(event_filter, last_event_id)
        try:
            yield subscription
        finally:
            self.unsubscribe(subscription.subscriber)

    def subscribe(self, event_filter: EventFilter, last_event_id: str | None = None) -> Subscription:
        """Register a stream. Raises ServiceUnavailable when EVENTS_MAX_SUBSCRIBERS are open or
        the server is stopping."""
        if self.closing:
            raise shutting_down()
        if len(self._subscribers) >= self.settings.events_max_subscribers:
            raise ServiceUnavailable("too many event streams are open; retry shortly", headers={"Retry-After": "5"})
        tenant = event_filter.tenant_id
        if self._per_tenant.get(tenant, 0) >= self.settings.events_max_subscribers_per_tenant:
            raise RateLimited(
                "this tenant has too many event streams and waiting requests open; close some or retry shortly",
                headers={"Retry-After": "5"},
            )
        # Parsed before anything is registered: a subscription must never be left behind by a
        # request that fails. Only ASCII digits ("²".isdigit() holds, and int() refuses it).
        resume_after: int | None = None
        if (
            last_event_id is not None
            and len(last_event_id) <= 20
            and last_event_id.isascii()
            and last_event_id.isdigit()
        ):
            resume_after = int(last_event_id)
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        subscriber = Subscriber(event_filter, asyncio.Queue(maxsize=self.settings.events_client_buffer + 1))
        self._subscribers.add(subscriber)
        self._watched.set()
        if event_filter.job_id is not None:
            self._by_job.setdefault(event_filter.job_id, set()).add(subscriber)
        else:
            self._by_tenant.setdefault(event_filter.tenant_id, set()).add(subscriber)
        if event_filter.tag is not None:
            self._tag_streams += 1
        replay: list[LiveEvent] = []
        gap = False
        if last_event_id is not None:
            position = self._position.get(resume_after) if resume_after is not None else None
            if position is None:
                gap = True
            else:
                replay = [
                    event
                    for number, event in self._buffer
                    if number > position and event_filter.tag_free_match(event.note)
                ]
        return Subscription(self, subscriber, replay, gap)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber not in self._subscribers:
            return
        self._subscribers.discard(subscriber)
        job_id, tenant = subscriber.filter.job_id, subscriber.filter.tenant_id
        left = self._per_tenant.pop(tenant, 1) - 1
        if left:
            self._per_tenant[tenant] = left
        if job_id is not None:
            _discard(self._by_job, job_id, subscriber)
        else:
            _discard(self._by_tenant, tenant, subscriber)
        if subscriber.filter.tag is not None:
            self._tag_streams -= 1

    def close_streams(self) -> None:
        """The server is stopping: end every stream now (its client reconnects to another
        instance and resumes after its Last-Event-ID) and refuse new ones. A response never
        ends by itself, and uvicorn runs the lifespan's shutdown only after the last one did."""
        self.closing = True
        for subscriber in list(self._subscribers):
            self._end(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # --- details read from the rows

    async def add_details(self, events: list[LiveEvent], *, tags: bool) -> None:
        """Read the error of failure events (and, with `tags`, every event's tags) from the rows,
        one query for all; on any database trouble the events go out without them."""
        wanted = [e for e in events if e.needs_details or (tags and e.tags is None)]
        if not wanted:
            return
        ids = sorted({e.note.job_id for e in wanted})
        failed = sorted({e.note.job_id for e in wanted if e.needs_error})
        try:
            async with asyncio.timeout(_DETAILS_TIMEOUT_SECONDS), self.pool.connection() as conn:
                cur = await conn.execute(QUERIES["event_details"], {"ids": ids, "failed": failed}, prepare=True)
                rows = {row["id"]: row for row in await cur.fetchall()}
        except (TimeoutError, psycopg.Error, OSError) as exc:
            logger.warning("could not read event details", extra={"error": type(exc).__name__})
            return
        for event in wanted:
            row = rows.get(event.note.job_id)
            if row is None:
                continue  # pruned meanwhile
            if event.tags is None:
                event.tags = tuple(row["tags"])
            if event.needs_error:
                event.error = _own_error(row["errors"], event.note, row["attempt"])
            if event.needs_progress and isinstance(row["progress"], dict):
                event.progress = row["progress"]

    # --- the two tasks

    async def run(self, stop: asyncio.Event) -> None:
        """Listen and publish until `stop` is set (the app's lifespan runs this)."""
        helpers = [
            asyncio.create_task(self._publish_loop(), name="events-publisher"),
            asyncio.create_task(self._keepalive_loop(), name="events-keepalive"),
            asyncio.create_task(self._flush_loop(), name="events-flush"),
        ]
        listening = asyncio.create_task(self._listen_loop(stop), name="events-listener")
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({listening, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not listening.done():
                await asyncio.wait({listening}, timeout=_STOP_GRACE_SECONDS)
            if listening.done():
                listening.result()  # (a bug in the listener is raised here, as before)
        finally:
            stopping.cancel()
            for task in (listening, *helpers):
                task.cancel()
            # (bounded too: psycopg gives a cancelled query up to 5 s to end on the server)
            done, _ = await asyncio.wait({stopping, listening, *helpers}, timeout=2 * _STOP_GRACE_SECONDS)
            for finished in done:  # collected, as gather(return_exceptions=True) did: no "never retrieved"
                if not finished.cancelled():
                    finished.exception()
            for subscriber in list(self._subscribers):
                self._end(subscriber)

    async def _listen_loop(self, stop: asyncio.Event) -> None:
        delay = 0.5
        first = True
        while not stop.is_set():
            try:
                conn = await AsyncConnection.connect(
                    self.settings.session_database_url, autocommit=True, **keepalive_params(_DEAD_PEER_SECONDS)
                )
                async with conn:
                    await listen(conn, EVENTS_CHANNEL)
                    if not first:
                        self._receive(RESET)  # whatever committed while we were away is not in the buffer
                    first, delay, self.connected = False, 0.5, True
                    logger.info("listening for job events")
                    stopping = asyncio.create_task(stop.wait())
                    reading = asyncio.create_task(self._read(conn))
                    try:
                        done, _ = await asyncio.wait({stopping, reading}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stopping.cancel()
                        reading.cancel()
                        await asyncio.gather(stopping, reading, return_exceptions=True)
                    if reading in done and not reading.cancelled() and reading.exception() is not None:
                        raise reading.exception()  # type: ignore[misc]
            except (psycopg.Error, OSError) as exc:
                if not first:
                    logger.warning("job events connection lost; reconnecting", extra={"error": type(exc).__name__})
                first = False
            finally:
                self.connected = False
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, _BACKOFF_MAX_SECONDS)

    async def _flush_loop(self) -> None:
        """Send the logged events on `cp_events`, every EVENTS_FLUSH_SECONDS while this instance
        has streams (or waiters), EVENTS_FLUSH_UNWATCHED_SECONDS otherwise, and at once while a
        flush comes back full. A failed flush sent nothing and removed nothing: the next one sends
        those events."""
        # A connection of its own: a request pool whose connections are all busy (slow requests,
        # row locks) must not hold every stream's events back.
        conn: AsyncConnection[DictRow] | None = None
        delay = 0.0
        try:
            while True:
                if delay <= EVENTS_FLUSH_SECONDS:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._watched.wait(), timeout=delay)
                self._watched.clear()
                try:
                    if conn is None or conn.closed:
                        conn = await AsyncConnection.connect(
                            self.settings.session_database_url,
                            autocommit=True,
                            row_factory=dict_row,
                            **keepalive_params(_DEAD_PEER_SECONDS),
                        )
                    sent = await event_log.flush(conn, max_events=_FLUSH_MAX)
                except Exception:
                    # Anything, a bug included: a dead flush task would leave live events to the
                    # leader's once-a-second flush without a word.
                    logger.warning("sending logged job events failed; retrying", exc_info=True)
                    if conn is not None:
                        await conn.close()
                        conn = None
                    delay = min(max(delay * 2, 0.1), _FLUSH_BACKOFF_MAX_SECONDS)
                    continue
                if sent >= _FLUSH_MAX:
                    delay = 0.0
                else:
                    delay = EVENTS_FLUSH_SECONDS if self._subscribers else EVENTS_FLUSH_UNWATCHED_SECONDS
        finally:
            if conn is not None:
                await conn.close()

    async def _read(self, conn: AsyncConnection[Any]) -> None:
        async for note in conn.notifies():
            for event in job_events(note.payload):
                self._receive(event)

    def _receive(self, item: JobEventNote | Reset) -> None:
        if len(self._inbox) >= INBOX_LIMIT:
            logger.warning("job events arrive faster than they are published; streams reset")
            self._inbox.clear()
            item = RESET
        self._inbox.append(item)
        self._inbox_ready.set()

    async def _publish_loop(self) -> None:
        while True:
            await self._inbox_ready.wait()
            self._inbox_ready.clear()
            items = list(self._inbox)
            self._inbox.clear()
            try:
                await self.publish(items)
            except Exception:
                # A bug must not silence every stream for good: tell them, and carry on.
                logger.exception("publishing job events failed; streams reset")
                self._receive(RESET)

    async def publish(self, items: Iterable[JobEventNote | Reset]) -> None:
        """Buffer the events and hand each to the streams that want it (in order)."""
        batch: list[LiveEvent | Reset] = [RESET if isinstance(i, Reset) else LiveEvent(i) for i in items]
        if self._subscribers:
            events = [e for e in batch if isinstance(e, LiveEvent)]
            await self.add_details(events, tags=self._tag_streams > 0)
        for item in batch:
            if isinstance(item, Reset):
                self._forget()
                for subscriber in list(self._subscribers):
                    self._offer(subscriber, RESET)
                continue
            self.received_total += 1
            self._remember(item)
            for subscriber in self._interested(item.note):
                if subscriber.filter.matches(item):
                    self._offer(subscriber, item)

    def _interested(self, note: JobEventNote) -> list[Subscriber]:
        # A copy: offering may drop a subscriber, which changes these sets.
        return [
            *self._by_job.get(note.job_id, ()),
            *self._by_tenant.get(note.tenant_id, ()),
            *self._by_tenant.get(None, ()),
        ]

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.events_keepalive_seconds)
            for subscriber in list(self._subscribers):
                if subscriber.quiet and subscriber.queue.empty():
                    subscriber.queue.put_nowait(KEEPALIVE)
                subscriber.quiet = True

    def _offer(self, subscriber: Subscriber, item: LiveEvent | Reset) -> None:
        subscriber.quiet = False
        if subscriber.dropped:
            return
        if subscriber.queue.qsize() >= self.settings.events_client_buffer:
            # The client does not keep up: free what waits for it and end its stream.
            self.dropped_total += 1
            logger.info("event stream dropped: its client does not keep up")
            self._end(subscriber)
            return
        subscriber.queue.put_nowait(item)

    def _end(self, subscriber: Subscriber) -> None:
        subscriber.dropped = True
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(None)
        subscriber.gone.set()
        self.unsubscribe(subscriber)

    def _remember(self, event: LiveEvent) -> None:
        size = self.settings.events_replay_size
        if size == 0:
            return
        self._delivered += 1
        self._buffer.append((self._delivered, event))
        self._position[event.note.event_id] = self._delivered
        while len(self._buffer) > size:
            _, old = self._buffer.popleft()
            self._position.pop(old.note.event_id, None)

    def _forget(self) -> None:
        self._buffer.clear()
        self._position.clear()
