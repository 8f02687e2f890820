"""`POST /workflows`: jobs that wait for each other (a DAG), created in one transaction.

A step is the body `POST /jobs/{queue}` takes plus `name`, `queue`, `dependsOn` and
`runOnFailure`. Anywhere in its arguments, `{"$fromStep": "<step>", "output": "<output name>"}`
stands for the storage key of that output of a step it depends on, filled in when the step
becomes available.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import Field

from .common import CamelModel, TenantId

MAX_WORKFLOW_STEPS: Final = 100
STEP_NAME: Final = r"^[A-Za-z0-9_-]{1,64}$"
STEP_FIELDS: Final = ("name", "dependsOn", "runOnFailure")  # the step's own, besides `queue`
REFERENCE: Final = "$fromStep"


class WorkflowRequest(CamelModel):
    """Steps, each `{"name", "queue", "dependsOn"?, "runOnFailure"?, ...that function's body}`."""

    tenant_id: TenantId | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    steps: list[dict[str, Any]] = Field(
        ...,
        min_length=1,
        max_length=MAX_WORKFLOW_STEPS,
        description='each `{"name": "invoice", "queue": "documents", "dependsOn": [], '
        '"runOnFailure": false, ...the body of POST /jobs/{queue}}`; in args, '
        '`{"$fromStep": "invoice", "output": "INV-1.pdf"}` is the key of that step\'s output',
    )


@dataclass(frozen=True, slots=True)
class Reference:
    step: str
    output: str


def references(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Reference | str]]:
    """Every `{"$fromStep": ...}` object in `value`: (its path, the reference, or why it is malformed)."""
    if isinstance(value, dict):
        if REFERENCE in value:
            step, output = value.get(REFERENCE), value.get("output")
            if set(value) != {REFERENCE, "output"} or not isinstance(step, str) or not isinstance(output, str):
                yield path, 'a reference is exactly {"$fromStep": "<step name>", "output": "<output name>"}'
            else:
                yield path, Reference(step, output)
            return
        for name, item in value.items():
            yield from references(item, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from references(item, (*path, index))


def cycle(dependencies: dict[str, list[str]]) -> list[str] | None:
    """A cycle among the steps (names, first repeated at the end), or None for a DAG."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in dependencies.get(name, []):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        path.pop()
        state[name] = 2
        return None

    for name in dependencies:
        if name not in state and (found := visit(name)) is not None:
            return found
    return None
