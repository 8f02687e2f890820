"""Which Machines API action a request is, and the identifier Fly's rate limits are scoped to.

Fly's docs ("Working with the Machines API", Rate Limits): "Machines API rate limits apply
_per-action_, _per-machine_ and are scoped per identifier. That might be Machine ID or App ID,
depending on the type of request. The limit is 1 request, per second, per action (i.e. Create
Machine, Start Machine etc.) — with a short-term burst limit up to 3 req/s, per action. This
applies to all actions except Get Machine which is 5 req/s, with a short-term burst limit up to
10 req/s." Requests without a machine id (create, list) are scoped to the app (inferred: they
have no other identifier).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_PATH = re.compile(r"/v1/apps/(?P<app>[^/]+)/machines(?:/(?P<machine>[^/]+)(?:/(?P<sub>[a-z_]+))?)?")


@dataclass(frozen=True, slots=True)
class Limit:
    """A token bucket: `rate` requests per second on average, `burst` at once."""

    rate: float
    burst: float


DEFAULT_LIMIT: Final = Limit(rate=1.0, burst=3.0)
LIMITS: Final = {"get": Limit(rate=5.0, burst=10.0)}


def limit_of(action: str) -> Limit:
    return LIMITS.get(action, DEFAULT_LIMIT)


def classify(method: str, path: str) -> tuple[str, str] | None:
    """(action, identifier) of a Machines API request, or None for other paths (e.g. `/_emu/`)."""
    match = _PATH.fullmatch(path)
    if match is None:
        return None
    app, machine, sub = match["app"], match["machine"], match["sub"]
    if machine is None:
        return ("create" if method == "POST" else "list"), app
    if sub is None:
        return {"GET": "get", "DELETE": "delete"}.get(method, "update"), machine
    return sub, machine  # start, stop, wait, events, lease, ...
