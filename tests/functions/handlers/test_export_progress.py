"""Exports report the rows they have written as they stream, rising to the exact row count."""

from __future__ import annotations

import pytest
from psycopg import AsyncConnection

from functions.handlers import exports
from functions.handlers.base import HandlerContext
from shared.db.pool import Pool
from shared.schemas.exports import ExportsRequest
from shared.settings import Settings

from .exports_support import add_many_jobs, export_job

ROWS = 60_000  # about 10 MB of CSV: several 1 MiB COPY blocks, so several reports


@pytest.fixture
def ctx(settings: Settings, pool: Pool) -> HandlerContext:
    context = HandlerContext(settings=settings, machine_id="m", pool=pool)
    context.bucket.ensure_bucket()
    return context


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json", "xlsx"])
async def test_progress_rises_monotonically_to_the_row_count(ctx: HandlerContext, database_url: str, fmt: str):
    rows = ROWS if fmt != "xlsx" else 12_000  # XLSX reports per cursor page of 5,000 rows
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        await add_many_jobs(conn, tenant="acme", count=rows)
    args = ExportsRequest.model_validate({"dataset": "jobs", "format": fmt}).function_args()
    job = export_job("acme", args)
    job_ctx = ctx.for_job(job)
    reports: list[tuple[int, int | None]] = []
    report = job_ctx.progress

    def recording(done: int, total: int | None = None, message: str | None = None) -> None:
        reports.append((done, total))
        report(done, total, message)

    job_ctx.progress = recording  # type: ignore[method-assign]
    result = await exports.run(job, job_ctx)

    assert result["rows"] == rows
    done = [d for d, _ in reports]
    assert done == sorted(done), "progress went backwards"
    assert len(set(done)) >= 3, f"expected reports while streaming, got {sorted(set(done))}"
    assert all(d <= rows for d in done)
    assert reports[-1] == (rows, rows)
    assert job_ctx.reported_progress == {"done": rows, "total": rows, "message": "rows written"}
