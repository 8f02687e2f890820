"""The `default` queue: small named functions, including the built-ins `echo` and `sleep`.

Other modules register more with `@register("name", ArgsModel)`; the API and the machines import
the modules named in DEFAULT_FUNCTION_MODULES so both know the same functions. A job naming a
function that is not registered fails visibly (discarded with kind `unknown-function`).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import Job
from shared.errors import PermanentJobError
from shared.functions import FunctionSpec
from shared.schemas.default import DefaultRequest

from .base import HandlerContext, HandlerResult, parse_args

FunctionBody = Callable[[Job, HandlerContext], Awaitable[HandlerResult]]


@dataclass(frozen=True, slots=True)
class DefaultFunction:
    name: str
    args_model: type[BaseModel]
    run: FunctionBody


FUNCTIONS: dict[str, DefaultFunction] = {}

FUNCTION: Final = FunctionSpec(
    queue="default",
    worker="",  # each job names its function: echo, sleep, or one registered by a module
    summary="Run a function registered on the default queue",
    request=DefaultRequest,
    limit=10,
    timeout_seconds=600,
    max_attempts=5,
    preload=True,
)


def register(name: str, args_model: type[BaseModel]) -> Callable[[FunctionBody], FunctionBody]:
    """Register `run` as the default-queue function `name`, its args validated by `args_model`."""

    def decorator(run: FunctionBody) -> FunctionBody:
        FUNCTIONS[name] = DefaultFunction(name, args_model, run)
        return run

    return decorator


def load_function_modules(modules: Iterable[str]) -> None:
    """Import modules that register default-queue functions."""
    for module in modules:
        importlib.import_module(module)


class EchoArgs(BaseModel):
    """Any JSON object; the result is the same object."""

    model_config = ConfigDict(extra="allow")


class SleepArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(..., ge=0, le=600)


@register("echo", EchoArgs)
async def echo(job: Job, ctx: HandlerContext) -> HandlerResult:
    return dict(job.args)


@register("sleep", SleepArgs)
async def sleep(job: Job, ctx: HandlerContext) -> HandlerResult:
    args = parse_args(SleepArgs, job.args)
    # Wake on cancellation rather than sleeping through it.
    try:
        await asyncio.wait_for(ctx.cancelled.wait(), timeout=args.seconds)
    except TimeoutError:
        return {"slept": args.seconds}
    raise asyncio.CancelledError


async def run(job: Job, ctx: HandlerContext) -> HandlerResult:
    function = FUNCTIONS.get(job.worker)
    if function is None:
        raise PermanentJobError(
            f"no function {job.worker!r} is registered on the default queue", kind="unknown-function"
        )
    return await function.run(job, ctx)


def validate_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Validate `args` for function `name`. Raises KeyError for an unknown function."""
    function = FUNCTIONS[name]
    return function.args_model.model_validate(args).model_dump(mode="json")
