"""What a function is: the declaration each function module makes, and the registry of them.

A function module under `functions/handlers/` declares one `FUNCTION = FunctionSpec(...)`: its
queue (which is also its route, `POST /jobs/{queue}`), the worker name on its rows, its
arguments schema, its OpenAPI summary, its queue limit, timeout and retry budget, and the size of
the machines that run it. Everything else reads the `Registry` built from those declarations
(functions/registry.py) and handed to it: the routes and the OpenAPI document, the queue rows
seeded at migration, the machine's timeout and handler, the Fly guest size, the local fork
server's pre-imports. Nothing in `shared/` names a function module; it is given the registry.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from shared.schemas.common import JobRequest
    from shared.settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Guest:
    """A Fly guest size (`fly.MachineGuest`). Shared memory must be a multiple of 256 MB."""

    cpu_kind: Literal["shared", "performance"]
    cpus: int
    memory_mb: int


# How a function's rate key may be derived (the same rule as queues.rate_key's CHECK, migration 0007).
RATE_KEY_RULE = re.compile(r"(host|domain):[A-Za-z_][A-Za-z0-9_]{0,63}")

SMALL_GUEST = Guest(cpu_kind="shared", cpus=1, memory_mb=512)


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionSpec:
    """Everything about one function, declared by its module."""

    queue: str  # its queue, and its route: POST /jobs/{queue}
    worker: str  # the worker name stored on its rows ("" on `default`: each function's own name)
    summary: str  # one line for the OpenAPI document
    request: type[JobRequest]  # the body of POST /jobs/{queue}; `function_args()` become job.args
    limit: int  # fleet-wide concurrency until changed at runtime (QUEUE_<NAME>_LIMIT overrides)
    timeout_seconds: float  # per job (WORKER_<NAME>_TIMEOUT, in milliseconds, overrides)
    max_attempts: int  # unless the job's options say otherwise
    guest: Guest = SMALL_GUEST  # the size of its machines on Fly
    # Light functions are pre-imported by the local fork server; heavy ones (Pillow, WeasyPrint,
    # openpyxl) load only on the machines that run them.
    preload: bool = False
    # What a rate limit keyed by "function" counts per key (PUT /admin/queues/{name}/limits):
    # "host:<arg>", the host of the URL in args.<arg>, or "domain:<arg>", the domain of the mailbox
    # in args.<arg>. Derived by the claim in SQL (migration 0007), so jobs the database inserts
    # itself (callbacks) are keyed like the rest. None: the function has no such key.
    rate_key: str | None = None
    description: str | None = None  # longer OpenAPI text
    module: str = ""  # set by the registry: the module that declared it (machines import it)

    def limit_for(self, settings: Settings) -> int:
        return settings.queue_limits.get(self.queue, self.limit)

    def timeout_for(self, settings: Settings) -> float:
        override_ms = settings.worker_timeouts_ms.get(self.queue)
        return override_ms / 1000 if override_ms is not None else self.timeout_seconds


class Registry(Mapping[str, FunctionSpec]):
    """The declared functions, by queue."""

    def __init__(self, specs: Mapping[str, FunctionSpec]) -> None:
        self._specs = dict(sorted(specs.items()))

    def __getitem__(self, queue: str) -> FunctionSpec:
        return self._specs[queue]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def guest(self, queue: str) -> Guest:
        """The guest size of `queue`'s machines (the small size for a queue nobody declared)."""
        spec = self._specs.get(queue)
        return spec.guest if spec is not None else SMALL_GUEST

    def preload_modules(self) -> tuple[str, ...]:
        return tuple(spec.module for spec in self._specs.values() if spec.preload and spec.module)

    def configuration_problems(self, settings: Settings) -> list[str]:
        """Per-queue settings that name no declared function (a typo would silently do nothing)."""
        problems = []
        for kind, names in (
            ("QUEUE_{}_LIMIT", settings.queue_limits),
            ("WORKER_{}_TIMEOUT", settings.worker_timeouts_ms),
        ):
            for name in sorted(set(names) - set(self._specs)):
                problems.append(f"{kind.format(name.upper())} names no function (known: {', '.join(self._specs)})")
        for queue, spec in self._specs.items():
            if spec.rate_key is not None and not RATE_KEY_RULE.fullmatch(spec.rate_key):
                problems.append(f"function {queue!r} declares rate_key {spec.rate_key!r} (host:<arg> or domain:<arg>)")
        return problems
