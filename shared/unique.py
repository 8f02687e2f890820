"""Unique-job keys: a hash of the chosen fields, the tenant and the period bucket."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson

from shared.schemas.common import UniqueOptions


def unique_key(
    options: UniqueOptions, *, tenant_id: str, queue: str, worker: str, args: dict[str, Any], now: datetime
) -> str:
    """The key two inserts share exactly when they are 'the same job' under `options`.

    The period is folded in as a time bucket (as River does), so a new period starts a new key.
    The tenant is always part of the key: one tenant's job never blocks another's.
    """
    parts: dict[str, Any] = {"tenant": tenant_id}
    if "queue" in options.fields:
        parts["queue"] = queue
    if "worker" in options.fields:
        parts["worker"] = worker
    if "args" in options.fields:
        parts["args"] = {k: args.get(k) for k in options.keys} if options.keys else args
    if options.period != "infinity":
        parts["bucket"] = int(now.timestamp()) // int(options.period)
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest
