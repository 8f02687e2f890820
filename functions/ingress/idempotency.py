"""`Idempotency-Key` on `POST /jobs/*` (Stripe's semantics, the IETF draft's header).

The same key and body within 24 hours replays the first answer (same job, same status); the
same key with another body is 422; a request arriving while the first one with that key is
still running is 409. Keys are per tenant.

The table's primary key decides who owns a key (`INSERT ... ON CONFLICT`), never a read
followed by a write. The owner inserts its jobs and records the answer in one transaction, so
a key with an answer always has its jobs, and jobs created under a key always leave an answer
to replay. A request that fails before answering frees its key, so the client can retry it.
Validation failures never reach here, so they are not remembered (as at Stripe).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from psycopg.types.json import Jsonb
from starlette.requests import Request
from starlette.responses import Response

from shared.db.job_store import Conn
from shared.db.pool import Pool
from shared.errors import BadRequest, Conflict, ValidationFailed

from .http import JSONResponse
from .sql import QUERIES

HEADER: Final = "idempotency-key"
TTL_SECONDS: Final = 24 * 3600
# An unanswered key this old belongs to a request whose process died; anyone may take it over.
ABANDONED_SECONDS: Final = 600
PRUNE_INTERVAL_SECONDS: Final = 600
PRUNE_BATCH: Final = 5000
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

logger = logging.getLogger("functions.ingress.idempotency")

# What a create endpoint does once it may: insert on `conn`, return (status, JSON body).
Create = Callable[[Conn], Awaitable[tuple[int, Any]]]


def idempotency_key(request: Request) -> str | None:
    """The request's key, if any. 400 when it is not 1-255 visible ASCII characters."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters")
    return key


def request_hash(method: str, path: str, body: bytes) -> str:
    """What the key promises: method, path and the body's JSON (key order and spacing ignored)."""
    canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def respond(request: Request, pool: Pool, *, tenant_id: str, body: bytes, create: Create) -> Response:
    """Run `create` at most once per (tenant, key); without a key, simply run it."""
    key = idempotency_key(request)
    if key is None:
        async with pool.connection() as conn:
            status, payload = await create(conn)
        return JSONResponse(payload, status_code=status)
    params = {"tenant_id": tenant_id, "key": key, "request_hash": request_hash(request.method, request.url.path, body)}
    replay = await _claim(pool, params)
    if replay is not None:
        return replay
    try:
        async with pool.connection() as conn, conn.transaction():
            status, payload = await create(conn)
            await conn.execute(
                QUERIES["complete_idempotency_key"], {**params, "status": status, "response": Jsonb(payload)}
            )
    except BaseException:
        await _release(pool, params)
        raise
    return JSONResponse(payload, status_code=status)


async def _claim(pool: Pool, params: dict[str, Any]) -> Response | None:
    """Own the key (None) or answer from its holder: replay, 409 in flight, 422 other body."""
    # Two rounds: the holder may release its key between our INSERT and our SELECT.
    for _ in range(2):
        async with pool.connection() as conn:
            cur = await conn.execute(
                QUERIES["claim_idempotency_key"],
                {**params, "ttl_seconds": TTL_SECONDS, "abandoned_seconds": ABANDONED_SECONDS},
            )
            if await cur.fetchone() is not None:
                return None
            cur = await conn.execute(QUERIES["get_idempotency_key"], params)
            holder = await cur.fetchone()
        if holder is None:
            continue
        if holder["request_hash"] != params["request_hash"]:
            raise ValidationFailed(
                "this Idempotency-Key was used with a different request",
                errors=[{"path": "Idempotency-Key", "message": "already used for another request body"}],
            )
        if holder["status"] is None:
            raise Conflict("a request with this Idempotency-Key is still in flight; retry later")
        return JSONResponse(holder["response"], status_code=holder["status"], headers={"Idempotent-Replayed": "true"})
    raise Conflict("this Idempotency-Key is changing hands; retry later")


async def _release(pool: Pool, params: dict[str, Any]) -> None:
    try:
        async with pool.connection() as conn:
            await conn.execute(QUERIES["release_idempotency_key"], params)
    except Exception:
        # It stays "in flight" until ABANDONED_SECONDS pass; then any retry takes it over.
        logger.warning("could not release an idempotency key", exc_info=True)


async def prune_expired(pool: Pool) -> int:
    """Delete keys past their 24 hours; returns how many."""
    total = 0
    async with pool.connection() as conn:
        while True:
            cur = await conn.execute(
                QUERIES["prune_idempotency_keys"], {"ttl_seconds": TTL_SECONDS, "limit": PRUNE_BATCH}
            )
            total += cur.rowcount
            if cur.rowcount < PRUNE_BATCH:
                return total


async def run_pruner(pool: Pool, stop: asyncio.Event) -> None:
    """Prune expired keys every PRUNE_INTERVAL_SECONDS until `stop` (every API instance does it;
    the deletes are idempotent, so that costs a few cheap statements and nothing else)."""
    while not stop.is_set():
        try:
            pruned = await prune_expired(pool)
            if pruned:
                logger.info("idempotency keys pruned", extra={"count": pruned})
        except Exception:
            logger.warning("idempotency key pruning failed; retrying later", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=PRUNE_INTERVAL_SECONDS)
