"""The archives function: objects and jobs' outputs of the tenant bundled into one ZIP, streamed."""

from __future__ import annotations

import io
import os
import tracemalloc
import uuid
import zipfile
from typing import Any

import pydantic
import pytest
from psycopg.types.json import Jsonb

from functions.handlers import archives
from functions.handlers.base import HandlerContext
from shared.db.pool import Pool
from shared.errors import PermanentJobError
from shared.keys import claim_prefix
from shared.settings import Settings
from tests.support.jobs import held_job, run_handler, store_bytes, stored_bytes

TENANT = "t-arch"


@pytest.fixture
def ctx(settings: Settings, pool: Pool) -> HandlerContext:
    context = HandlerContext(settings=settings, machine_id="m", pool=pool)
    context.bucket.ensure_bucket()
    return context


def job(**args: Any) -> Any:
    body = archives.ArchivesRequest.model_validate(args, context={"tenant_id": TENANT})
    return held_job(queue="archives", tenant_id=TENANT, args=body.function_args())


def upload(ctx: HandlerContext, name: str, data: bytes, tenant: str = TENANT) -> str:
    key = f"tenants/{tenant}/uploads/{uuid.uuid4().hex}/{name}"
    store_bytes(ctx, key, data, "application/octet-stream")
    return key


async def completed_job(pool: Pool, ctx: HandlerContext, outputs: dict[str, bytes], tenant: str = TENANT) -> int:
    """A completed job of `tenant` whose outputs (stored under its claim) are `outputs`."""
    token = uuid.uuid4()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, state, attempt, attempted_by, attempted_at, claim_token,"
            " completed_at) VALUES ('documents', 'RenderDocument', %s, 'completed', 1, 'm', now(), %s, now())"
            " RETURNING id",
            (tenant, token),
        )
        row = await cur.fetchone()
        assert row is not None
        job_id = int(row["id"])
        result = []
        for name, data in outputs.items():
            key = f"{claim_prefix(tenant, job_id, token)}{name}"
            store_bytes(ctx, key, data, "application/pdf")
            result.append({"name": name, "key": key, "contentType": "application/pdf", "size": len(data)})
        await conn.execute("UPDATE jobs SET result = %s WHERE id = %s", (Jsonb({"outputs": result}), job_id))
    return job_id


def opened(ctx: HandlerContext, result: dict[str, Any]) -> zipfile.ZipFile:
    [output] = result["outputs"]
    assert output["contentType"] == "application/zip"
    data = stored_bytes(ctx, output["key"])
    assert output["size"] == len(data)
    return zipfile.ZipFile(io.BytesIO(data))


async def test_objects_and_job_outputs_are_bundled_with_unique_names(ctx: HandlerContext, pool: Pool) -> None:
    first = upload(ctx, "report.csv", b"a,b\n1,2\n")
    second = upload(ctx, "report.csv", b"other")
    source = await completed_job(pool, ctx, {"invoice.pdf": b"%PDF-1 invoice", "receipt.pdf": b"%PDF-1 receipt"})

    result = await run_handler(
        archives,
        job(entries=[{"key": first}, {"key": second}, {"jobId": source}, {"key": first, "path": "copies/r.csv"}]),
        ctx,
    )

    with opened(ctx, result) as archive:
        contents = {info.filename: archive.read(info) for info in archive.infolist()}
    assert contents == {
        "report.csv": b"a,b\n1,2\n",
        "report (2).csv": b"other",
        f"job-{source}/invoice.pdf": b"%PDF-1 invoice",
        f"job-{source}/receipt.pdf": b"%PDF-1 receipt",
        "copies/r.csv": b"a,b\n1,2\n",
    }
    assert result["entries"] == 5 and result["bytes"] == sum(len(v) for v in contents.values())


async def test_a_large_archive_streams_in_parts_with_bounded_memory(ctx: HandlerContext) -> None:
    big = os.urandom(6 * archives.PART_BYTES + 12345)  # incompressible: the ZIP is as large
    key = upload(ctx, "big.bin", big)
    tracemalloc.start()
    try:
        result = await run_handler(archives, job(entries=[{"key": key}], filename="big.zip"), ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    head = ctx.bucket.client.head_object(Bucket=ctx.bucket.bucket, Key=result["outputs"][0]["key"])
    assert head["ETag"].strip('"').endswith("-7"), "sent as a multipart upload while it was written"
    assert peak < 4 * archives.PART_BYTES < len(big) / 1.5, (
        f"peak {peak / archives.MiB:.0f} MiB for a {len(big) / archives.MiB:.0f} MiB file"
    )
    with opened(ctx, result) as archive:
        assert archive.read("big.bin") == big


@pytest.mark.parametrize(
    "entries",
    [
        [{"key": "tenants/t-arch/uploads/x/a.txt", "jobId": 1}],
        [{}],
        [{"key": "tenants/other/uploads/x/a.txt"}],
        [{"key": "tenants/t-arch/../other/a.txt"}],
        [{"key": "tenants/t-arch/uploads/a.txt", "path": "../../etc/passwd"}],
        [{"key": "tenants/t-arch/uploads/a.txt", "path": "/abs.txt"}],
        [{"key": "tenants/t-arch/uploads/a.txt", "path": "a\\..\\b"}],
        [],
    ],
)
def test_bad_entries_are_refused_at_submit(entries: list[dict[str, Any]]) -> None:
    with pytest.raises(pydantic.ValidationError):
        archives.ArchivesRequest.model_validate({"entries": entries}, context={"tenant_id": TENANT})


def test_the_filename_is_a_plain_zip_name() -> None:
    for bad in ("../a.zip", "a.tar", ".zip", "a b.zip"):
        with pytest.raises(pydantic.ValidationError):
            archives.ArchivesRequest.model_validate({"entries": [{"jobId": 1}], "filename": bad})


async def test_missing_objects_other_tenants_jobs_and_unfinished_jobs_fail_permanently(
    ctx: HandlerContext, pool: Pool
) -> None:
    theirs = await completed_job(pool, ctx, {"secret.pdf": b"theirs"}, tenant="t-other")
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id) VALUES ('default', 'echo', %s) RETURNING id", (TENANT,)
        )
        row = await cur.fetchone()
        assert row is not None
    cases = {
        "object-not-found": [{"key": f"tenants/{TENANT}/uploads/none/missing.txt"}],
        "job-not-found": [{"jobId": theirs}],
        "job-not-completed": [{"jobId": row["id"]}],
    }
    for kind, entries in cases.items():
        with pytest.raises(PermanentJobError) as caught:
            await run_handler(archives, job(entries=entries), ctx)
        assert caught.value.kind == kind


async def test_past_the_total_limit_nothing_is_left_behind(
    ctx: HandlerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archives, "MAX_TOTAL_BYTES", archives.PART_BYTES + 1)
    key = upload(ctx, "big.bin", os.urandom(archives.PART_BYTES + 2 * archives.READ_BYTES))
    archive_job = job(entries=[{"key": key}])
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(archives, archive_job, ctx)
    assert caught.value.kind == "archive-too-large"
    listed = ctx.bucket.client.list_objects_v2(
        Bucket=ctx.bucket.bucket, Prefix=f"tenants/{TENANT}/jobs/{archive_job.id}/"
    )
    assert listed.get("KeyCount", 0) == 0
    assert ctx.bucket.client.list_multipart_uploads(Bucket=ctx.bucket.bucket).get("Uploads", []) == []
