"""The functions this service runs: every module directly under functions/handlers/ that declares
`FUNCTION = FunctionSpec(...)`. Adding a function is adding such a module; nothing else lists it.

Function modules keep heavy libraries out of their top level (Pillow, WeasyPrint and openpyxl load
inside the handler), so the API and the dispatcher can read the registry without paying for them.
Their building blocks live in functions/handlers/lib/, which is not scanned.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import replace
from functools import cache
from types import ModuleType

from shared.db.migrate import ensure_queues
from shared.functions import FunctionSpec, Registry
from shared.launchers.base import MachineProgram
from shared.settings import Settings

HANDLERS_PACKAGE = "functions.handlers"
MACHINE_MODULE = "functions.machine"  # `python -m functions.machine`: what every function machine runs
_NOT_FUNCTIONS = frozenset({"base"})  # the handler contract, not a function


def function_modules() -> list[str]:
    """The modules that may declare a function (top-level modules of the handlers package)."""
    package = importlib.import_module(HANDLERS_PACKAGE)
    return [
        f"{HANDLERS_PACKAGE}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if not info.ispkg and info.name not in _NOT_FUNCTIONS
    ]


@cache
def load_registry() -> Registry:
    """Every declared function, by queue. Raises ValueError for a module that declares a queue
    already declared (two functions cannot share a route)."""
    specs: dict[str, FunctionSpec] = {}
    for name in function_modules():
        declared = getattr(importlib.import_module(name), "FUNCTION", None)
        if not isinstance(declared, FunctionSpec):
            continue
        if declared.queue in specs:
            raise ValueError(
                f"{name} declares queue {declared.queue!r}, already declared by {specs[declared.queue].module}"
            )
        specs[declared.queue] = replace(declared, module=name)
    return Registry(specs)


def handler_module(spec: FunctionSpec) -> ModuleType:
    """The module with the function's `run` (and optional `warm`, `backoff`, `close`)."""
    return importlib.import_module(spec.module)


def seed_queues(database_url: str, settings: Settings, registry: Registry | None = None) -> None:
    """Create the queue row of every function that has none, at its configured limit."""
    registry = registry or load_registry()
    ensure_queues(
        database_url,
        {queue: spec.limit_for(settings) for queue, spec in registry.items()},
        fair=settings.claim_fairness,
        tenant_limit=settings.tenant_concurrency_limit,
    )


def machine_program(registry: Registry | None = None) -> MachineProgram:
    """What the launchers start: the machine module, the light functions a local fork server
    imports ahead, and each queue's machine size on Fly."""
    registry = registry or load_registry()
    return MachineProgram(module=MACHINE_MODULE, preload=registry.preload_modules(), guests=registry.guest)
