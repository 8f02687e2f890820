"""Dispatcher leadership as a lease row with an expiry (the `dispatcher_lease` table).

Why a lease and not a session advisory lock: an advisory lock lives as long as its session, and
Postgres only ends the session of a leader whose host vanished once TCP gives up (about two hours
with Linux defaults). A *frozen* leader (SIGSTOP, a stuck VM, a long GC-like pause) is worse:
its kernel still ACKs TCP keepalives, so no keepalive or `tcp_user_timeout` ever frees the lock.
A lease bounds both: the leader renews the row every third of DISPATCHER_LEASE_SECONDS; a standby
takes it over once it has expired; the old leader, if it wakes up, finds its term replaced and
steps down. River leads the same way (riverqueue/river internal/leadership: `river_leader` with
`expires_at`, renewal scoped to the term, and a local "trust window").

Acting only while the lease is valid. The leader does not ask the database before every duty;
it trusts its last successful renewal for `ttl - margin`, measured on the monotonic clock from
the moment that renewal was *sent* (so a slow answer cannot stretch it, and a frozen process's
clock keeps running). The database grants the lease until `now() + ttl` with its `now()` taken
after that moment, so the local trust window ends at least `margin` before any standby can take
over. Every duty checks `valid()` before it runs, and the scaler before each launch. What this
cannot stop is a duty already past its check when the process freezes: on waking it finishes
that one step. Every duty is safe to overlap for one step (the stager, lifeline, pruner and
reconciler are idempotent row updates under row locks; claims enforce queue limits in the
database, so an extra launch is at worst an idle machine that exits).

The leader's connection also gets TCP keepalives and `tcp_user_timeout`, client side (libpq
parameters) and server side (session GUCs), so a vanished peer's connection and its slot are
freed in seconds rather than hours, on both ends. They do not decide leadership: the lease does.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row

from shared.db.pool import utc_session
from shared.db.sql import QUERIES

logger = logging.getLogger("functions.dispatcher.lease")

KEEPALIVE_IDLE_SECONDS = 5
KEEPALIVE_INTERVAL_SECONDS = 2
KEEPALIVE_COUNT = 3


def new_holder_id() -> str:
    """Names one dispatcher instance: host and pid for people reading the row, a nonce for uniqueness."""
    return f"{socket.gethostname()[:100]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def keepalive_params(ttl_seconds: float) -> dict[str, Any]:
    """libpq connection parameters: detect a dead peer within about one lease period."""
    return {
        "connect_timeout": max(2, int(ttl_seconds)),
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": int(ttl_seconds * 1000),
    }


async def connect_leader(database_url: str, ttl_seconds: float) -> AsyncConnection[DictRow]:
    """The dispatcher's own connection (lease, LISTEN) with keepalives on both ends."""
    conn = await AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row, **keepalive_params(ttl_seconds)
    )
    await utc_session(conn)  # the lease's times are read back
    # Server side too, so Postgres frees this session soon after our host vanishes. Set after
    # connecting (not as startup `options`, which some poolers refuse); no-ops on Unix sockets.
    try:
        await conn.execute(
            QUERIES["server_keepalives"],
            {
                "idle": str(KEEPALIVE_IDLE_SECONDS),
                "interval": str(KEEPALIVE_INTERVAL_SECONDS),
                "count": str(KEEPALIVE_COUNT),
                "user_timeout_ms": str(int(ttl_seconds * 1000)),
            },
        )
    except psycopg.errors.UndefinedObject:
        # tcp_user_timeout is Postgres 12+; the lease does not depend on any of these.
        logger.warning("could not set server-side keepalives on the dispatcher connection", exc_info=True)
    return conn


@dataclass
class Lease:
    """This instance's view of the dispatcher lease: which term it holds and until when it trusts it."""

    holder: str
    ttl_seconds: float
    term: int | None = None
    trusted_until: float = 0.0  # time.monotonic()
    renewed_at: float = 0.0  # time.monotonic() when the last successful acquire/renew was sent
    _clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    @property
    def margin_seconds(self) -> float:
        return max(1.0, self.ttl_seconds / 10)

    @property
    def renew_every_seconds(self) -> float:
        return self.ttl_seconds / 3

    @property
    def standby_retry_seconds(self) -> float:
        """How often a standby tries to take the lease over."""
        return max(0.5, self.ttl_seconds / 5)

    def valid(self) -> bool:
        """True while this instance may act as the leader."""
        return self.term is not None and self._clock() < self.trusted_until

    def renew_due(self) -> float:
        """Seconds until the next renewal is due (<= 0: now)."""
        return self.renewed_at + self.renew_every_seconds - self._clock()

    def _trust(self, term: int, sent_at: float) -> None:
        self.term = term
        self.renewed_at = sent_at
        self.trusted_until = sent_at + self.ttl_seconds - self.margin_seconds

    def drop(self) -> None:
        """Stop trusting the lease (lost, or the connection that renews it is gone)."""
        self.term = None
        self.trusted_until = 0.0

    async def acquire(self, conn: AsyncConnection[DictRow]) -> bool:
        """Take the lease if it is free, expired, or already ours; True when we now hold it."""
        sent_at = self._clock()
        cur = await conn.execute(QUERIES["lease_acquire"], {"holder": self.holder, "ttl_seconds": self.ttl_seconds})
        row = await cur.fetchone()
        if row is None:
            return False
        self._trust(int(row["term"]), sent_at)
        return True

    async def renew(self, conn: AsyncConnection[DictRow]) -> bool:
        """Extend our term; False (and dropped) when another holder took it over."""
        if self.term is None:
            return False
        sent_at = self._clock()
        cur = await conn.execute(
            QUERIES["lease_renew"], {"holder": self.holder, "term": self.term, "ttl_seconds": self.ttl_seconds}
        )
        if await cur.fetchone() is None:
            self.drop()
            return False
        self._trust(self.term, sent_at)
        return True

    async def resign(self, conn: AsyncConnection[DictRow], term: int) -> None:
        """Give up `term` so a standby need not wait for it to expire (a clean shutdown)."""
        self.drop()
        await conn.execute(QUERIES["lease_resign"], {"holder": self.holder, "term": term})
