"""What every handler gets and returns.

A handler module exposes `async def run(job: Job, ctx: HandlerContext) -> dict` (the dict becomes
the job's `result`, its function facts). Files go through `ctx.outputs` (an OutputWriter under the
claim's own prefix), which records them: the machine sets `result["outputs"]` from that record and
ignores any `outputs` a handler returns. `ctx.storage` reads and writes only the job tenant's keys.
It may also expose
`backoff(attempt: int) -> float` (seconds before the next attempt) and `async def warm(ctx)`,
called once when the machine boots. It raises PermanentJobError for input that can never succeed,
RetryableJobError for passing failures, SnoozeJob to run later without using an attempt.
CPU-bound work runs in `asyncio.to_thread` so heartbeats keep flowing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.db.models import Job
from shared.errors import PermanentJobError
from shared.outputs import OutputWriter, final_result
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.db.pool import Pool
    from shared.storage import Storage, TenantStorage

HandlerResult = dict[str, Any]
PROGRESS_MESSAGE_MAX = 200
RunFunction = Callable[[Job, "HandlerContext"], Awaitable[HandlerResult]]


@dataclass(kw_only=True)
class HandlerContext:
    """Everything a handler may use. Heavy clients are created on first use."""

    settings: Settings
    machine_id: str
    pool: Pool | None = None  # read-only dataset queries (exports); handlers never write jobs
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("functions.handler"))
    # Per-machine reusable things (SMTP connection, storage client), shared by every job's context.
    resources: dict[str, Any] = field(default_factory=dict)

    tenant_id: str | None = None  # set on a job's context
    job_outputs: OutputWriter | None = None  # set on a job's context
    # The last progress report and whether the database has seen it: the machine writes it with
    # its next heartbeat (and with the completion), never once per report.
    reported_progress: dict[str, Any] | None = None
    progress_unsent: bool = False

    @property
    def bucket(self) -> Storage:
        """The machine's storage client (shared by every job; boto3 loads on first use)."""
        storage = self.resources.get("storage")
        if storage is None:
            from shared.storage import Storage

            storage = self.resources["storage"] = Storage(self.settings)
        return storage  # type: ignore[no-any-return]

    @property
    def storage(self) -> TenantStorage:
        """The job tenant's objects, and only those."""
        if self.tenant_id is None:
            raise RuntimeError("storage is per job: use the context made by for_job(job)")
        return self.bucket.for_tenant(self.tenant_id)

    @property
    def outputs(self) -> OutputWriter:
        """Where this attempt stores its outputs (under its claim's prefix)."""
        if self.job_outputs is None:
            raise RuntimeError("outputs are per job: use the context made by for_job(job)")
        return self.job_outputs

    def progress(self, done: int, total: int | None = None, message: str | None = None) -> None:
        """Report how far the job got: `done` of `total` (None: not known yet), and a short
        message. Cheap to call per item: only the latest report is kept, and the machine writes
        it with its heartbeat. Callable from worker threads."""
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise ValueError("done must be a non-negative integer")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise ValueError("total must be a non-negative integer or None")
        report: dict[str, Any] = {"done": done, "total": total}
        if message is not None:
            report["message"] = str(message)[:PROGRESS_MESSAGE_MAX]
        # One assignment each: a reader in another thread sees the old report or the new one.
        self.reported_progress = report
        self.progress_unsent = True

    def unsent_progress(self) -> dict[str, Any] | None:
        """The report the database has not seen yet (None: nothing new), marked as sent."""
        if not self.progress_unsent:
            return None
        self.progress_unsent = False
        return self.reported_progress

    def for_job(self, job: Job) -> HandlerContext:
        """A context for one claimed job: same resources, its own cancellation event, its tenant's
        storage and its claim's outputs."""
        if job.claim_token is None:
            raise ValueError(f"job {job.id} is not claimed")
        ctx = HandlerContext(
            settings=self.settings,
            machine_id=self.machine_id,
            pool=self.pool,
            logger=self.logger,
            resources=self.resources,
            tenant_id=job.tenant_id,
        )
        ctx.job_outputs = OutputWriter(
            lambda: ctx.storage, tenant_id=job.tenant_id, job_id=job.id, claim_token=job.claim_token
        )
        return ctx

    def recorded_result(self, result: HandlerResult) -> HandlerResult:
        """`result` as it is recorded: the handler's facts and the outputs this attempt recorded."""
        return final_result(result, self.job_outputs.outputs if self.job_outputs is not None else [])


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_args(model: type[ModelT], args: dict[str, Any], *, kinds: Mapping[str, str] | None = None) -> ModelT:
    """The job's args as `model`, or PermanentJobError kind "invalid-args" (one shape for every
    function): "invalid arguments: <path>: <message>; ..." for at most five problems.

    `kinds` maps a top-level field to a more precise kind (e.g. "to" -> "invalid-address").
    """
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(args)'}: {error['msg']}" for error in errors[:5]
        )
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        first = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else ""
        kind = (kinds or {}).get(first, "invalid-args")
        raise PermanentJobError(f"invalid arguments: {problems}{more}", kind=kind) from None
