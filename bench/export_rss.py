"""Export benchmark: rows/s and peak RSS of the exports handler against a bare COPY.

Starts a throwaway durable PostgreSQL (infra/local/postgres.py) and a moto S3 server, inserts
N rows (default 1,000,000) of job history for one tenant (plus rows of another tenant, which the
export must skip), then in separate child processes, one after the other:

- reference: `COPY (SELECT <the dataset's columns> ... ORDER BY id) TO STDOUT WITH CSV` of the same
  rows, read with psycopg and thrown away (the floor: no neutralising, no upload);
- ours: the exports handler (`functions.handlers.exports.run`) writing the file to moto S3.

Each child times only its own work (connections are opened before the clock starts) and its
peak RSS is read with os.wait4 when it exits. Prints the table and, with --json, one JSON line.

    .venv/bin/python -m bench.export_rss [--rows N] [--format csv|json|ndjson|xlsx] [--repeat K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script as well as with -m
    sys.path.insert(0, str(REPO_ROOT))

from bench.cpu import cpu_seconds, postmaster_pid  # noqa: E402
from infra.local.postgres import LocalPostgres  # noqa: E402
from infra.local.s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalS3  # noqa: E402

TENANT = "bench-tenant"
OTHER_TENANT = "someone-else"
DATABASE = "export_bench"
TARGET_RATIO = 0.5
TARGET_RSS_MB = 200

# A realistic mix: every state, tags (some starting with formula triggers), failed attempts.
SEED_SQL = """
INSERT INTO jobs (queue, worker, state, tenant_id, tags, priority, attempt, max_attempts, errors,
                  attempted_by, claim_token, inserted_at, scheduled_at, attempted_at, completed_at, cancelled_at,
                  discarded_at)
SELECT (ARRAY['images', 'documents', 'emails', 'webhooks', 'exports'])[1 + i %% 5],
       (ARRAY['ProcessImage', 'RenderDocument', 'SendEmail', 'DeliverWebhook', 'ExportData'])[1 + i %% 5],
       st, %(tenant)s,
       CASE i %% 4 WHEN 0 THEN '{}'::text[] WHEN 1 THEN ARRAY['batch-' || (i %% 100)]
                   WHEN 2 THEN ARRAY['=cmd|'' /C calc''!A0', 'x'] ELSE ARRAY['+1', 'a,b;c'] END,
       i %% 10,
       CASE WHEN st IN ('available', 'scheduled') THEN 0 ELSE 1 END, 5,
       CASE WHEN st IN ('discarded', 'retryable') THEN jsonb_build_array(jsonb_build_object(
            'attempt', 1, 'at', t, 'kind', 'error', 'error', '-connection "reset", step ' || i))
            ELSE '[]'::jsonb END,
       CASE WHEN st = 'executing' THEN 'machine-1' END,
       CASE WHEN st = 'executing' THEN gen_random_uuid() END,
       t, t, CASE WHEN st IN ('available', 'scheduled') THEN NULL ELSE t + interval '1 second' END,
       CASE WHEN st = 'completed' THEN t + interval '2 seconds' END,
       CASE WHEN st = 'cancelled' THEN t + interval '2 seconds' END,
       CASE WHEN st = 'discarded' THEN t + interval '2 seconds' END
  FROM generate_series(1, %(count)s) AS i,
       LATERAL (SELECT (ARRAY['available', 'completed', 'discarded', 'retryable', 'cancelled',
                              'executing', 'scheduled'])[1 + i %% 7] AS st,
                       timestamptz '2025-01-01 00:00:00+00' + i * interval '1 millisecond' AS t) AS x
"""

# The same rows and columns as the `jobs` dataset, rendered the plainest way Postgres can.
REFERENCE_SQL = """
COPY (SELECT id, queue, worker, state, attempt, max_attempts, priority, tags, inserted_at, scheduled_at,
             attempted_at, completed_at, discarded_at, cancelled_at, errors -> -1 ->> 'error'
        FROM jobs WHERE tenant_id = 'bench-tenant' ORDER BY id) TO STDOUT WITH CSV HEADER
"""


# --- children -------------------------------------------------------------------------------


def child_reference(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        size = 0
        started, cpu = time.perf_counter(), time.process_time()
        with cur.copy(REFERENCE_SQL) as copy:
            for data in copy:
                size += len(data)
        seconds = time.perf_counter() - started
        return {"rows": cur.rowcount, "bytes": size, "seconds": seconds, "client_cpu": time.process_time() - cpu}


async def child_export(url: str, endpoint: str, bucket: str, fmt: str) -> dict[str, Any]:
    from functions.handlers import exports
    from functions.handlers.base import HandlerContext
    from shared.db.models import Job, JobState
    from shared.db.pool import open_pool
    from shared.schemas.exports import ExportsRequest
    from shared.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        database_url=url,
        aws_endpoint_url_s3=endpoint,
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,  # type: ignore[arg-type]
        aws_region="us-east-1",
        bucket_name=bucket,
    )
    pool = await open_pool(url, min_size=1, max_size=2)
    try:
        ctx = HandlerContext(settings=settings, machine_id="bench", pool=pool)
        ctx.bucket.ensure_bucket()
        now = datetime.now(UTC)
        args = ExportsRequest.model_validate({"dataset": "jobs", "format": fmt}).function_args()
        job = Job(
            id=1, queue="exports", worker="ExportData", state=JobState.EXECUTING, tenant_id=TENANT, args=args,
            meta={}, tags=[], priority=0, attempt=1, max_attempts=3, errors=[], result=None, batch_id=None,
            unique_key=None, claim_token=uuid.uuid4(), attempted_by="bench", heartbeat_at=now, inserted_at=now,
            scheduled_at=now, attempted_at=now, completed_at=None, cancelled_at=None, discarded_at=None,
        )  # fmt: skip
        started, cpu = time.perf_counter(), time.process_time()
        job_ctx = ctx.for_job(job)
        result = job_ctx.recorded_result(await exports.run(job, job_ctx))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        output = result["outputs"][0]
        head = ctx.bucket.client.head_object(Bucket=ctx.bucket.bucket, Key=output["key"])
        return {
            "rows": result["rows"],
            "bytes": result["bytes"],
            "seconds": seconds,
            "client_cpu": cpu,
            "stored_bytes": int(head["ContentLength"]),
            "etag": head["ETag"],
        }
    finally:
        await pool.close()


# --- parent ---------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds Postgres and the S3 server spend while a child runs (the child reports its own)."""

    def __init__(self, pg: LocalPostgres, s3: LocalS3) -> None:
        self.postmaster = postmaster_pid(pg.data_dir)
        if s3.process is None:
            raise RuntimeError("the S3 server is not running")
        self.s3_pid = s3.process.pid

    def sample(self) -> tuple[float, float]:
        return cpu_seconds(self.postmaster, with_children=True), cpu_seconds(self.s3_pid)

    def measured(self, argv: list[str]) -> dict[str, Any]:
        (pg_before, s3_before) = self.sample()
        report = run_child(argv)
        pg_after, s3_after = self.sample()
        report["postgres_cpu"], report["s3_cpu"] = pg_after - pg_before, s3_after - s3_before
        return report


def run_child(argv: list[str]) -> dict[str, Any]:
    """Run this script as a child; returns its JSON report plus its peak RSS (from wait4)."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *argv], stdout=subprocess.PIPE, cwd=REPO_ROOT
    )
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv[:2]} failed with exit code {proc.returncode}")
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    report["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports kilobytes
    return report


def seed(url: str, rows: int, other_rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for tenant, count in ((TENANT, rows), (OTHER_TENANT, other_rows)):
            if count:
                conn.execute(SEED_SQL, {"tenant": tenant, "count": count})
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("CHECKPOINT")


def summarise(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = statistics.median(run["seconds"] for run in runs)
    rows = runs[0]["rows"]
    return {
        "label": label,
        "rows": rows,
        "bytes": runs[0]["bytes"],
        "seconds": seconds,
        "rows_per_second": rows / seconds,
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "cpu": {part: statistics.median(run[f"{part}_cpu"] for run in runs) for part in ("client", "postgres", "s3")},
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--other-rows", type=int, default=10_000, help="rows of another tenant (skipped)")
    parser.add_argument("--format", default="csv", choices=["csv", "json", "ndjson", "xlsx"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side; medians are reported")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    parser.add_argument("--child", choices=["reference", "export"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.child == "reference":
        print(json.dumps(child_reference(options.url)))
        return 0
    if options.child == "export":
        print(json.dumps(asyncio.run(child_export(options.url, options.endpoint, options.bucket, options.format))))
        return 0

    base = Path(tempfile.mkdtemp(prefix="cp-export-bench-"))
    pg = LocalPostgres(base / "pg", durable=True)
    s3 = LocalS3()
    try:
        pg.start()
        s3.start()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        url = pg.url_for(DATABASE)
        from shared.db.migrate import migrate

        migrate(url)
        started = time.perf_counter()
        seed(url, options.rows, options.other_rows)
        print(f"seeded {options.rows:,} + {options.other_rows:,} rows in {time.perf_counter() - started:.1f} s")

        references, exports = [], []
        meter = CpuMeter(pg, s3)
        for _ in range(options.repeat):
            references.append(meter.measured(["--child", "reference", "--url", url]))
            bucket = f"bench-{uuid.uuid4().hex[:8]}"  # a fresh bucket: moto keeps objects in memory
            argv = ["--child", "export", "--url", url, "--endpoint", s3.endpoint_url, "--bucket", bucket]
            exports.append(meter.measured([*argv, "--format", options.format]))
        for run in exports:
            if run["rows"] != options.rows or run["stored_bytes"] != run["bytes"]:
                raise RuntimeError(f"export wrote {run['rows']} rows / {run['stored_bytes']} bytes: {run}")
        reference = summarise("reference: COPY (...) TO STDOUT WITH CSV", references)
        ours = summarise(f"ours: exports handler, {options.format} -> moto S3", exports)
        ratio = ours["rows_per_second"] / reference["rows_per_second"]
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        print(f"exports: {options.rows:,} rows of `jobs`, PostgreSQL {version[0] if version else '?'}, "
              f"{os.cpu_count()} cores, median of {options.repeat}")  # fmt: skip
        for side in (reference, ours):
            print(
                f"  {side['label']:<45} {side['seconds']:7.2f} s {side['rows_per_second']:>12,.0f} rows/s "
                f"{side['bytes'] / 1e6:8.1f} MB   peak RSS {side['peak_rss_mb']:6.1f} MB"
            )
            cpu = side["cpu"]
            print(
                f"  {'':<45} CPU s: client {cpu['client']:.2f}, postgres {cpu['postgres']:.2f}, "
                f"S3 server {cpu['s3']:.2f}, total {sum(cpu.values()):.2f}"
            )
        ratio_ok = ratio >= TARGET_RATIO or options.format != "csv"
        rss_ok = ours["peak_rss_mb"] <= TARGET_RSS_MB
        if options.format == "csv":
            print(f"  ratio {ratio:.2f} (target >= {TARGET_RATIO}): {'met' if ratio_ok else 'MISSED'}")
        else:
            print(f"  ratio {ratio:.2f} (no rows/s target for {options.format}; memory only)")
        print(
            f"  peak RSS {ours['peak_rss_mb']:.1f} MB (target <= {TARGET_RSS_MB} MB): {'met' if rss_ok else 'MISSED'}"
        )
        if options.json:
            print(json.dumps({"format": options.format, "ratio": ratio, "reference": reference, "ours": ours}))
        return 0 if ratio_ok and rss_ok else 1
    finally:
        s3.stop()
        pg.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
