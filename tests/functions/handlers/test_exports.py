"""The exports handler end to end: real Postgres rows in, objects in the moto S3 server out."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import openpyxl
import openpyxl.worksheet._writer as openpyxl_writer
import pytest
from botocore.exceptions import ClientError
from psycopg import AsyncConnection, sql

from functions.handlers import exports
from functions.handlers.base import HandlerContext
from functions.handlers.exports import ExportOptions
from functions.handlers.lib.multipart_upload import MIN_PART_BYTES
from shared.datasets import JOBS
from shared.db.pool import Pool, open_pool
from shared.errors import PermanentJobError
from shared.schemas.exports import ExportsRequest
from shared.settings import Settings
from tests.support.jobs import run_handler, stored_bytes

from .exports_support import BASE_AT, add_job, add_many_jobs, export_job

ALL_COLUMNS = list(JOBS.column_names)
NASTY = ["=cmd|' /C calc'!A0", "+1", "-2", "@x", "\tx", "\rx", "\nx"]


@pytest.fixture
def ctx(settings: Settings, pool: Pool) -> HandlerContext:
    context = HandlerContext(settings=settings, machine_id="m", pool=pool)
    context.bucket.ensure_bucket()
    return context


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(database_url, autocommit=True) as connection:
        yield connection


def args(**fields: Any) -> dict[str, Any]:
    """What the API stores as job.args for an export request."""
    return ExportsRequest.model_validate({"dataset": "jobs", **fields}).function_args()


async def run_export(ctx: HandlerContext, tenant: str, **fields: Any) -> tuple[dict[str, Any], bytes]:
    result = await run_handler(exports, export_job(tenant, args(**fields)), ctx)
    return result, stored_bytes(ctx, result["outputs"][0]["key"])


def csv_rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))


def head(ctx: HandlerContext, key: str) -> dict[str, Any]:
    return dict(ctx.bucket.client.head_object(Bucket=ctx.bucket.bucket, Key=key))


def pending_uploads(ctx: HandlerContext) -> list[Any]:
    return list(ctx.bucket.client.list_multipart_uploads(Bucket=ctx.bucket.bucket).get("Uploads", []))


async def test_csv_holds_only_the_tenants_rows_with_their_values(ctx: HandlerContext, conn: AsyncConnection[Any]):
    first = await add_job(conn, tenant="acme", state="completed", tags=["a", "b"], priority=3)
    failed = await add_job(
        conn,
        tenant="acme",
        queue="webhooks",
        worker="DeliverWebhook",
        state="discarded",
        errors=["timeout", 'boom, "quoted"\nsecond line'],
    )
    await add_job(conn, tenant="other", state="completed", tags=["secret"])
    await add_job(conn, tenant="other", state="available")

    result, body = await run_export(ctx, "acme")

    rows = csv_rows(body)
    assert list(rows[0]) == ALL_COLUMNS
    assert [int(r["id"]) for r in rows] == [first, failed]
    assert result["rows"] == 2
    done, discarded = rows
    assert done["queue"] == "images" and done["worker"] == "ProcessImage" and done["state"] == "completed"
    assert (done["attempt"], done["max_attempts"], done["priority"]) == ("1", "5", "3")
    assert done["tags"] == "a,b"
    assert done["inserted_at"] == "2025-03-01 12:00:00.123456"
    assert done["completed_at"] == "2025-03-01 12:00:02.123456"
    assert done["discarded_at"] == done["cancelled_at"] == done["last_error"] == ""
    assert discarded["last_error"] == 'boom, "quoted"\nsecond line'  # the latest attempt's error
    assert discarded["discarded_at"] == "2025-03-01 12:00:02.123456"
    assert b"secret" not in body


async def test_result_describes_the_stored_object(ctx: HandlerContext, conn: AsyncConnection[Any]):
    await add_job(conn, tenant="acme")
    job = export_job("acme", args(filename="history.csv"))

    result = await run_handler(exports, job, ctx)

    assert job.claim_token is not None
    key = f"tenants/acme/jobs/{job.id}/{job.claim_token.hex}/history.csv"
    meta = head(ctx, key)
    assert result["outputs"] == [
        {"name": "history.csv", "key": key, "contentType": "text/csv; charset=utf-8", "size": meta["ContentLength"]}
    ]
    assert result["bytes"] == meta["ContentLength"] == len(stored_bytes(ctx, key))
    assert meta["ContentType"] == "text/csv; charset=utf-8"
    assert meta["ContentDisposition"] == 'attachment; filename="history.csv"'


async def test_csv_neutralises_formula_triggers_and_quotes_every_text_cell(
    ctx: HandlerContext, conn: AsyncConnection[Any]
):
    for tag in NASTY:
        await add_job(conn, tenant="acme", state="retryable", tags=[tag], errors=[f"{tag} failed"])
    await add_job(conn, tenant="acme", tags=["a;=1+2"], errors=["-5"])

    _, body = await run_export(ctx, "acme", columns=["id", "tags", "last_error", "priority"])

    rows = csv_rows(body)
    assert [r["tags"] for r in rows] == [*("'" + tag for tag in NASTY), "a;=1+2"]
    assert [r["last_error"] for r in rows] == [*(f"'{tag} failed" for tag in NASTY), "'-5"]
    lines = body.decode().split("\n")
    assert lines[0] == "id,tags,last_error,priority"
    # Text cells are quoted even without a comma, so a ";" cannot split them; numbers are not.
    last = lines[-2]
    assert last.endswith(',"a;=1+2","\'-5",0')
    assert last.split(",")[0].isdigit()


async def test_xlsx_has_the_rows_as_typed_string_cells(ctx: HandlerContext, conn: AsyncConnection[Any]):
    ids = [await add_job(conn, tenant="acme", state="retryable", tags=[tag], errors=["x\x01y"]) for tag in NASTY]
    ids.append(await add_job(conn, tenant="acme", state="completed", tags=["#N/A"], priority=7))
    await add_job(conn, tenant="other", tags=["secret"])

    result, body = await run_export(ctx, "acme", format="xlsx")

    assert result["rows"] == len(ids)
    assert result["outputs"][0]["name"] == "jobs.xlsx"
    book = openpyxl.load_workbook(io.BytesIO(body))
    assert book.sheetnames == ["jobs"]
    sheet = book["jobs"]
    header, *rows = list(sheet.iter_rows())
    assert [c.value for c in header] == ALL_COLUMNS
    assert [row[0].value for row in rows] == ids
    col = {name: i for i, name in enumerate(ALL_COLUMNS)}
    # XML parsers (Excel's too) read a CR inside text as LF; the quote in front is what matters.
    expected_tags = ["'" + tag.replace("\r", "\n") for tag in NASTY]
    assert [row[col["tags"]].value for row in rows] == [*expected_tags, "#N/A"]
    assert all(cell.data_type != "f" for row in sheet.iter_rows() for cell in row)
    assert {row[col["tags"]].data_type for row in rows} == {"s"}
    assert rows[0][col["last_error"]].value == "x\ufffdy"  # control character replaced, export not failed
    last = rows[-1]
    assert last[col["priority"]].value == 7 and last[col["priority"]].data_type == "n"
    # Excel keeps times as fractional days: millisecond precision, UTC wall time.
    inserted, completed = last[col["inserted_at"]].value, last[col["completed_at"]].value
    assert isinstance(inserted, datetime) and isinstance(completed, datetime)
    to_ms = timedelta(milliseconds=1)
    assert abs(inserted - BASE_AT.replace(tzinfo=None)) < to_ms
    assert abs(completed - (BASE_AT + timedelta(seconds=2)).replace(tzinfo=None)) < to_ms
    assert last[col["discarded_at"]].value is None


async def test_xlsx_starts_a_new_sheet_when_one_is_full(ctx: HandlerContext, conn: AsyncConnection[Any]):
    ids = [await add_job(conn, tenant="acme") for _ in range(5)]
    request = ExportsRequest.model_validate({"dataset": "jobs", "format": "xlsx", "columns": ["id"]})
    job = export_job("acme", request.function_args())

    job_ctx = ctx.for_job(job)
    facts = await exports.export(request, tenant_id="acme", ctx=job_ctx, options=ExportOptions(xlsx_rows_per_sheet=2))
    result = job_ctx.recorded_result(facts)

    book = openpyxl.load_workbook(io.BytesIO(stored_bytes(ctx, result["outputs"][0]["key"])))
    assert book.sheetnames == ["jobs", "jobs (2)", "jobs (3)"]
    sheets = [[row[0] for row in book[name].iter_rows(values_only=True)] for name in book.sheetnames]
    assert sheets == [["id", *ids[:2]], ["id", *ids[2:4]], ["id", ids[4]]]
    assert result["rows"] == 5


async def test_json_is_one_array_of_typed_objects(ctx: HandlerContext, conn: AsyncConnection[Any]):
    first = await add_job(conn, tenant="acme", state="completed", tags=["=a", "b"])
    second = await add_job(conn, tenant="acme", state="retryable", errors=['=raw \u2603 \\ "q" \x01'])

    result, body = await run_export(ctx, "acme", format="json")

    assert result["outputs"][0]["contentType"] == "application/json"
    objects = json.loads(body)
    assert [o["id"] for o in objects] == [first, second]
    assert list(objects[0]) == ALL_COLUMNS
    assert objects[0]["tags"] == ["=a", "b"]  # JSON carries no formula risk: values stay as stored
    assert objects[1]["last_error"] == '=raw \u2603 \\ "q" \x01'
    assert objects[0]["attempt"] == 1 and objects[0]["attempted_at"] is not None
    assert datetime.fromisoformat(objects[0]["inserted_at"]) == BASE_AT
    assert objects[0]["cancelled_at"] is None


async def test_ndjson_has_one_object_per_line(ctx: HandlerContext, conn: AsyncConnection[Any]):
    ids = [await add_job(conn, tenant="acme", errors=["line\nbreak"]) for _ in range(3)]

    result, body = await run_export(ctx, "acme", format="ndjson", columns=["last_error", "id"])

    lines = body.decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"last_error": "line\nbreak", "id": i} for i in ids]
    assert body.endswith(b"\n")
    assert result["rows"] == 3 and result["outputs"][0]["contentType"] == "application/x-ndjson"


@pytest.mark.parametrize(("fmt", "expected"), [("json", []), ("ndjson", None), ("csv", None)])
async def test_an_empty_export_is_a_valid_file(ctx: HandlerContext, fmt: str, expected: Any):
    result, body = await run_export(ctx, "nobody", format=fmt)

    assert result["rows"] == 0
    if fmt == "json":
        assert json.loads(body) == expected
    elif fmt == "ndjson":
        assert body == b""
    else:
        assert body.decode().strip() == ",".join(ALL_COLUMNS)


async def test_filters_select_rows(ctx: HandlerContext, conn: AsyncConnection[Any]):
    later = BASE_AT + timedelta(days=2)
    a = await add_job(conn, tenant="acme", queue="images", state="completed", tags=["=cmd|' /C calc'!A0"])
    b = await add_job(
        conn, tenant="acme", queue="emails", worker="SendEmail", state="discarded", errors=["x"], inserted_at=later
    )
    c = await add_job(conn, tenant="acme", queue="emails", worker="SendEmail", state="available", inserted_at=later)
    await add_job(
        conn,
        tenant="other",
        queue="emails",
        worker="SendEmail",
        state="available",
        inserted_at=later,
        tags=["=cmd|' /C calc'!A0"],
    )
    cases: list[tuple[dict[str, Any], list[int]]] = [
        ({"queue": "emails"}, [b, c]),
        ({"state": ["completed", "discarded"]}, [a, b]),
        ({"worker": "SendEmail", "state": ["available"]}, [c]),
        ({"from": later.isoformat()}, [b, c]),
        ({"to": later.isoformat()}, [a]),  # `to` is exclusive
        ({"from": BASE_AT.isoformat(), "to": (later + timedelta(seconds=1)).isoformat()}, [a, b, c]),
        ({"tag": "=cmd|' /C calc'!A0"}, [a]),  # quotes travel as a bound value, never as SQL
        ({"queue": "x' OR '1'='1"}, []),
    ]
    for filters, expected in cases:
        _, body = await run_export(ctx, "acme", filters=filters, columns=["id"])
        assert [int(r["id"]) for r in csv_rows(body)] == expected, filters


async def test_columns_choose_and_order_the_output(ctx: HandlerContext, conn: AsyncConnection[Any]):
    job_id = await add_job(conn, tenant="acme", state="completed")

    _, body = await run_export(ctx, "acme", columns=["state", "id"])

    assert body.decode() == f'state,id\n"completed",{job_id}\n'


def test_an_unknown_column_is_a_validation_error():
    with pytest.raises(ValueError, match="unknown column"):
        ExportsRequest.model_validate({"dataset": "jobs", "columns": ["id", "password"]})


async def test_arguments_that_do_not_validate_discard_the_job(ctx: HandlerContext):
    job = export_job("acme", {"dataset": "jobs", "columns": ["tenant_id"], "format": "csv"})

    with pytest.raises(PermanentJobError) as caught:
        await run_handler(exports, job, ctx)

    assert caught.value.kind == "invalid-args"
    assert "columns" in str(caught.value)


async def test_a_large_export_goes_up_in_several_parts(ctx: HandlerContext, conn: AsyncConnection[Any]):
    await add_many_jobs(conn, tenant="acme", count=50_000)
    request = ExportsRequest.model_validate({"dataset": "jobs"})
    job = export_job("acme", request.function_args())

    job_ctx = ctx.for_job(job)
    facts = await exports.export(
        request, tenant_id="acme", ctx=job_ctx, options=ExportOptions(part_bytes=MIN_PART_BYTES)
    )
    result = job_ctx.recorded_result(facts)

    key = result["outputs"][0]["key"]
    meta = head(ctx, key)
    parts = int(meta["ETag"].strip('"').rsplit("-", 1)[1])  # a multipart object's ETag ends in -<parts>
    assert parts == -(-result["bytes"] // MIN_PART_BYTES) > 1
    rows = csv_rows(stored_bytes(ctx, key))
    assert len(rows) == result["rows"] == 50_000
    assert rows[-1]["tags"] == "batch-0,-x" and rows[-1]["last_error"] == "'=bad response 50000"
    assert pending_uploads(ctx) == []


class CancelWhen(asyncio.Event):
    """A cancellation event that becomes set the first time the handler looks at it while
    `condition()` holds: a cancel that arrives at a chosen point mid-export."""

    def __init__(self, condition: Callable[[], bool]) -> None:
        super().__init__()
        self.condition = condition
        self.checks = 0

    def is_set(self) -> bool:
        self.checks += 1
        if not super().is_set() and self.condition():
            self.set()
        return super().is_set()


@pytest.mark.parametrize(("fmt", "how"), [("csv", "event"), ("json", "event"), ("csv", "task")])
async def test_a_cancel_mid_upload_stops_the_query_and_aborts_the_upload(
    ctx: HandlerContext, conn: AsyncConnection[Any], fmt: str, how: str
):
    """A cancel arrives once a multipart upload is under way: as the job's cancellation event,
    or as the machine cancelling the handler's task (timeout, job lost)."""
    await add_many_jobs(conn, tenant="acme", count=100_000)  # > 20 MiB of CSV: several parts
    request = ExportsRequest.model_validate({"dataset": "jobs", "format": fmt})
    job = export_job("acme", request.function_args())
    cancels: list[str] = []

    def upload_under_way() -> bool:
        if cancels or not pending_uploads(ctx):
            return bool(cancels)
        cancels.append(how)
        if how == "task":
            running.cancel()
            return False
        return True

    job_ctx = ctx.for_job(job)
    job_ctx.cancelled = CancelWhen(upload_under_way)
    options = ExportOptions(part_bytes=MIN_PART_BYTES)
    running = asyncio.create_task(exports.export(request, tenant_id="acme", ctx=job_ctx, options=options))

    with pytest.raises(asyncio.CancelledError):
        await running

    assert cancels == [how]  # it stopped because of the cancel, with an upload under way
    listed = ctx.bucket.client.list_objects_v2(Bucket=ctx.bucket.bucket, Prefix=f"tenants/acme/jobs/{job.id}/")
    assert listed.get("KeyCount", 0) == 0
    assert pending_uploads(ctx) == []
    copies = await conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE state = 'active' AND query LIKE 'COPY (%%' AND pid <> pg_backend_pid()"
    )
    assert await copies.fetchone() == (0,)  # the export's query is no longer running


async def test_a_part_that_fails_mid_way_fails_the_export_and_aborts_the_upload(
    ctx: HandlerContext, conn: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
):
    await add_many_jobs(conn, tenant="acme", count=100_000)  # > 20 MiB of CSV: several parts
    request = ExportsRequest.model_validate({"dataset": "jobs"})
    job = export_job("acme", request.function_args())
    upload_part = ctx.bucket.client.upload_part
    tried: list[int] = []

    def failing_second_part(**kwargs: Any) -> Any:
        tried.append(kwargs["PartNumber"])
        if kwargs["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "store failed"}}, "UploadPart")
        return upload_part(**kwargs)

    monkeypatch.setattr(ctx.bucket.client, "upload_part", failing_second_part)
    options = ExportOptions(part_bytes=MIN_PART_BYTES)

    with pytest.raises(ClientError, match="store failed"):
        await exports.export(request, tenant_id="acme", ctx=ctx.for_job(job), options=options)

    assert 2 in tried
    listed = ctx.bucket.client.list_objects_v2(Bucket=ctx.bucket.bucket, Prefix=f"tenants/acme/jobs/{job.id}/")
    assert listed.get("KeyCount", 0) == 0
    assert pending_uploads(ctx) == []  # aborted: no orphaned parts
    copies = await conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE state = 'active' AND query LIKE 'COPY (%%' AND pid <> pg_backend_pid()"
    )
    assert await copies.fetchone() == (0,)


async def test_a_cancel_mid_xlsx_removes_the_workbooks_temporary_files(ctx: HandlerContext, conn: AsyncConnection[Any]):
    await add_many_jobs(conn, tenant="acme", count=20_000)
    request = ExportsRequest.model_validate({"dataset": "jobs", "format": "xlsx"})
    job = export_job("acme", request.function_args())
    before = set(openpyxl_writer.ALL_TEMP_FILES)
    at_cancel: set[str] = set()

    def third_look() -> bool:  # after two 5,000-row batches went into the workbook
        at_cancel.update(path for path in openpyxl_writer.ALL_TEMP_FILES if os.path.exists(path))
        return cancel.checks >= 3

    job_ctx = ctx.for_job(job)
    job_ctx.cancelled = cancel = CancelWhen(third_look)

    with pytest.raises(asyncio.CancelledError):
        await exports.export(request, tenant_id="acme", ctx=job_ctx)

    sheet_files = at_cancel - before
    assert sheet_files, "the workbook had started writing its sheet to disk"
    assert not [path for path in sheet_files if os.path.exists(path)]
    assert ctx.bucket.client.list_objects_v2(Bucket=ctx.bucket.bucket).get("KeyCount", 0) == 0


async def test_a_cancel_before_the_start_sends_nothing(ctx: HandlerContext, conn: AsyncConnection[Any]):
    await add_job(conn, tenant="acme")
    job = export_job("acme", args())
    job_ctx = ctx.for_job(job)
    job_ctx.cancelled.set()

    with pytest.raises(asyncio.CancelledError):
        await exports.run(job, job_ctx)

    assert ctx.bucket.client.list_objects_v2(Bucket=ctx.bucket.bucket).get("KeyCount", 0) == 0


async def test_times_are_utc_whatever_the_session_time_zone(
    settings: Settings, database_url: str, conn: AsyncConnection[Any]
):
    await add_job(conn, tenant="acme", inserted_at=datetime(2025, 6, 1, 23, 30, tzinfo=UTC))
    await conn.execute(
        sql.SQL("ALTER DATABASE {} SET TimeZone = 'Asia/Tokyo'").format(sql.Identifier(conn.info.dbname))
    )
    tokyo_pool = await open_pool(database_url, min_size=1, max_size=1)
    try:
        async with tokyo_pool.connection() as c:
            # The service's pools set UTC on connecting (shared.db.pool.utc_session); this one's only
            # connection is set back to the database's zone, to show exports do not depend on it.
            await c.execute("SET TimeZone TO DEFAULT")
            assert await (await c.execute("SHOW TimeZone")).fetchone() == {"TimeZone": "Asia/Tokyo"}
        tokyo = HandlerContext(settings=settings, machine_id="m", pool=tokyo_pool)
        tokyo.bucket.ensure_bucket()
        _, as_json = await run_export(tokyo, "acme", format="json", columns=["inserted_at"])
        _, as_csv = await run_export(tokyo, "acme", columns=["inserted_at"])
    finally:
        await tokyo_pool.close()
    assert json.loads(as_json) == [{"inserted_at": "2025-06-01T23:30:00+00:00"}]
    assert csv_rows(as_csv) == [{"inserted_at": "2025-06-01 23:30:00"}]
