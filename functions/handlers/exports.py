"""The `exports` function: stream one tenant-scoped dataset into one object in storage.

CSV, NDJSON and JSON are rendered by Postgres itself (`COPY (SELECT ...) TO STDOUT`, with
formula triggers neutralised in the SELECT, see shared/datasets.py). This handler only moves
bytes: a worker thread reads the COPY in 1 MiB blocks (export_copy.py) and the event loop feeds
them to a multipart upload that sends one part while the next fills. That keeps an export close
to the speed of a bare COPY, and its memory flat whatever the row count. XLSX needs typed cells,
so its rows come through a server-side cursor on the context's pool into openpyxl (in a thread,
so heartbeats keep flowing) and the finished file is then streamed up the same way.

Cancellation is checked between blocks; a cancelled or failed export stops its query, aborts its
upload and leaves no object behind.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow, tuple_row

from shared.datasets import DatasetQuery, QueryShape, copy_csv, copy_json_lines, get_dataset, select_rows
from shared.db.models import Job
from shared.db.pool import Pool
from shared.db.sql import QUERIES
from shared.functions import FunctionSpec, Guest
from shared.schemas.exports import ExportsRequest

from .base import HandlerContext, HandlerResult, parse_args
from .lib.export_copy import CopyReader
from .lib.export_writers import FORMATS, XLSX_MAX_DATA_ROWS, JsonArrayFramer, XlsxFile
from .lib.multipart_upload import DEFAULT_PART_BYTES, MultipartUpload, run_in_thread

ProgressReport = Callable[[int, int | None, str | None], None]  # ctx.progress
CURSOR_ROWS: Final = 5_000  # rows per FETCH of the XLSX cursor
FUNCTION: Final = FunctionSpec(
    queue="exports",
    worker="ExportData",
    summary="Export a tenant-scoped dataset to CSV, JSON, NDJSON or XLSX",
    request=ExportsRequest,
    limit=5,
    timeout_seconds=600,
    max_attempts=3,
    guest=Guest(cpu_kind="shared", cpus=2, memory_mb=1024),  # XLSX builds its sheets on disk
)
_SHAPES: Final = {
    "csv": QueryShape.CSV_CELLS,
    "json": QueryShape.JSON_OBJECT,
    "ndjson": QueryShape.JSON_OBJECT,
    "xlsx": QueryShape.VALUES,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportOptions:
    """Tuning knobs (tests shrink them to exercise multipart uploads and sheet roll-over)."""

    part_bytes: int = DEFAULT_PART_BYTES
    xlsx_rows_per_sheet: int = XLSX_MAX_DATA_ROWS


async def run(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Export the dataset `job.args` names for `job.tenant_id`.

    Raises PermanentJobError (kind "invalid-args") for arguments that do not validate, and
    asyncio.CancelledError once `ctx.cancelled` is set.
    """
    return await export(parse_request(job.args), tenant_id=job.tenant_id, ctx=ctx)


async def warm(ctx: HandlerContext) -> None:
    """Build the storage client before the first job, in a thread: boto3 takes a while to load and
    would otherwise block the machine's event loop (and its heartbeats) on the first job."""
    await asyncio.to_thread(lambda: ctx.bucket)


def parse_request(args: dict[str, object]) -> ExportsRequest:
    """The validated export request stored in a job's args. Raises PermanentJobError when invalid."""
    return parse_args(ExportsRequest, dict(args))


async def export(
    request: ExportsRequest, *, tenant_id: str, ctx: HandlerContext, options: ExportOptions | None = None
) -> HandlerResult:
    """Write the export as the attempt's output `filename`; returns the job's facts.

    Raises asyncio.CancelledError when cancelled and RuntimeError for an XLSX export without a
    pool in `ctx`; on any error the upload is aborted.
    """
    options = options or ExportOptions()
    name, spec = request.output_name, FORMATS[request.format]
    key = ctx.outputs.key_for(name)
    upload = MultipartUpload(
        ctx.storage.client_for(key),
        bucket=ctx.storage.bucket,
        key=key,
        content_type=spec.content_type,
        # Downloads are saved, never rendered by the browser (the name is [A-Za-z0-9._-] only).
        content_disposition=f'attachment; filename="{name}"',
        part_bytes=options.part_bytes,
    )
    # COPY formats read on a connection of their own (see export_copy.py), to the pool's database.
    database_url = ctx.settings.database_url
    dataset = get_dataset(request.dataset)
    shape = _SHAPES[request.format]
    query = select_rows(dataset, tenant_id=tenant_id, columns=request.columns, filters=request.filters, shape=shape)
    try:
        if request.format == "xlsx":
            if ctx.pool is None:
                raise RuntimeError("an XLSX export reads through the context's pool, and it has none")
            rows = await _export_xlsx(
                query, ctx.pool, upload, ctx.cancelled, title=dataset.name, options=options, report=ctx.progress
            )
        elif request.format == "csv":
            rows = await _export_copy(
                copy_csv(query), query, database_url, upload, ctx.cancelled, header_rows=1, report=ctx.progress
            )
        else:
            framer = JsonArrayFramer() if request.format == "json" else None
            rows = await _export_copy(
                copy_json_lines(query), query, database_url, upload, ctx.cancelled, framer, report=ctx.progress
            )
        size = await upload.complete()
    except BaseException:
        await upload.abort()
        raise
    ctx.outputs.record(name=name, key=key, content_type=spec.content_type, size=size)
    ctx.progress(rows, rows, "rows written")
    return {"rows": rows, "bytes": size}


def _stop_if_cancelled(cancelled: asyncio.Event) -> None:
    if cancelled.is_set():
        raise asyncio.CancelledError("export cancelled")


@asynccontextmanager
async def _snapshot(pool: Pool) -> AsyncIterator[AsyncConnection[DictRow]]:
    """A read-only transaction: one consistent snapshot for the whole export."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(QUERIES["read_only_snapshot"])
        yield conn


async def _export_copy(
    statement: sql.Composed,
    query: DatasetQuery,
    database_url: str,
    upload: MultipartUpload,
    cancelled: asyncio.Event,
    framer: JsonArrayFramer | None = None,
    *,
    header_rows: int = 0,
    report: ProgressReport,
) -> int:
    """Stream a COPY TO STDOUT into `upload`, reporting the rows written (the COPY's rows past
    `header_rows`); returns the number of data rows."""
    reframe: Callable[[bytes], bytes] = framer.feed if framer else _same
    # COPY takes no server-side parameters: psycopg binds them client-side as quoted literals.
    async with CopyReader(database_url, statement, query.params) as reader, aclosing(reader.blocks()) as blocks:
        async for block in blocks:
            _stop_if_cancelled(cancelled)
            await upload.write(reframe(block))
            report(max(0, reader.lines - header_rows), None, "rows written")
    if framer is not None:
        await upload.write(framer.close())
    if reader.rows is None:
        raise RuntimeError("COPY ended without a row count")
    return reader.rows


def _same(block: bytes) -> bytes:
    return block


async def _export_xlsx(
    query: DatasetQuery,
    pool: Pool,
    upload: MultipartUpload,
    cancelled: asyncio.Event,
    *,
    title: str,
    options: ExportOptions,
    report: ProgressReport,
) -> int:
    """Build the workbook on disk from a server-side cursor, then stream the file up; returns rows."""
    with tempfile.TemporaryDirectory(prefix="cp-export-") as directory:
        path = Path(directory) / "export.xlsx"
        book = XlsxFile(path, title=title, columns=query.columns, rows_per_sheet=options.xlsx_rows_per_sheet)
        try:
            async with _snapshot(pool) as conn:
                async with conn.cursor(name="cp_export", row_factory=tuple_row) as cur:
                    await cur.execute(query.statement, query.params)
                    while rows := await cur.fetchmany(CURSOR_ROWS):
                        _stop_if_cancelled(cancelled)
                        await run_in_thread(book.write_rows, rows)
                        report(book.rows, None, "rows written")
            _stop_if_cancelled(cancelled)
            await run_in_thread(book.save)
        except BaseException:
            book.discard()
            raise
        with book.path.open("rb") as file:
            await _upload_file(file, upload, cancelled)
    return book.rows


async def _upload_file(file: IO[bytes], upload: MultipartUpload, cancelled: asyncio.Event) -> None:
    while chunk := await run_in_thread(file.read, upload.part_bytes):
        _stop_if_cancelled(cancelled)
        await upload.write(chunk)
