"""Helpers of the dashboard tests: a signed-in HTTP client, and job rows seeded in a given state."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from psycopg.types.json import Jsonb

from tests.support.live import LiveApp

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


@contextlib.contextmanager
def signed_in(
    app: LiveApp, tenant: str | None = "tenant-a", scopes: str = "jobs:read jobs:write"
) -> Iterator[httpx.Client]:
    """A client that signed in through the sign-in form, as a browser does (cookie jar, same Origin)."""
    with httpx.Client(base_url=app.url, trust_env=False, timeout=30, headers={"Origin": app.url}) as client:
        form = client.get("/dashboard/login")
        assert form.status_code == 200, form.text
        answer = client.post(
            "/dashboard/login",
            data={"csrf": csrf_of(form.text), "token": app.token(tenant, scopes), "next": "/dashboard"},
        )
        assert answer.status_code == 303, answer.text
        yield client


def seed_job(
    app: LiveApp,
    tenant: str,
    state: str,
    *,
    queue: str = "default",
    worker: str = "echo",
    args: dict[str, Any] | None = None,
    errors: list[dict[str, Any]] | None = None,
    result: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    batch_id: str | None = None,
    meta: dict[str, Any] | None = None,
    claim_token: str | None = None,
) -> int:
    """Insert one job directly in `state` with the timestamps its constraints require; its id."""
    attempted = state in ("executing", "completed", "discarded", "retryable")
    rows = app.sql(
        """INSERT INTO jobs (queue, worker, tenant_id, args, meta, tags, state, attempt, max_attempts, errors,
                             result, batch_id, attempted_by, attempted_at, heartbeat_at, claim_token, scheduled_at,
                             completed_at, discarded_at, cancelled_at)
           VALUES (%(queue)s, %(worker)s, %(tenant)s, %(args)s, %(meta)s, %(tags)s, %(state)s, %(attempt)s, 3,
                   %(errors)s, %(result)s, %(batch)s, %(machine)s, %(attempted_at)s, %(heartbeat)s,
                   coalesce(%(claim)s::uuid, gen_random_uuid()),
                   now() + CASE WHEN %(state)s = 'scheduled' THEN interval '1 hour' ELSE interval '0' END,
                   CASE WHEN %(state)s = 'completed' THEN now() END, CASE WHEN %(state)s = 'discarded' THEN now() END,
                   CASE WHEN %(state)s = 'cancelled' THEN now() END)
           RETURNING id""",
        {
            "queue": queue,
            "worker": worker,
            "tenant": tenant,
            "args": Jsonb(args or {}),
            "meta": Jsonb(meta or {}),
            "tags": tags or [],
            "state": state,
            "attempt": 1 if attempted else 0,
            "errors": Jsonb(errors or []),
            "result": Jsonb(result) if result is not None else None,
            "batch": batch_id,
            "machine": "machine-seeded" if attempted else None,
            "attempted_at": datetime.now(UTC) - timedelta(seconds=2) if attempted else None,
            "heartbeat": datetime.now(UTC) if state == "executing" else None,
            "claim": claim_token,
        },
    )
    return int(rows[0][0])


def seed_completed_with_outputs(app: LiveApp, tenant: str) -> tuple[int, dict[str, str]]:
    """A completed job whose result names a PNG and a PDF stored under its completing claim, and
    one object of an earlier claim (which must never get a link). Returns (job id, name -> key)."""
    import io
    import uuid

    from PIL import Image
    from pypdf import PdfWriter

    from shared.keys import claim_prefix
    from shared.storage import Storage

    storage = Storage(app.settings)
    storage.ensure_bucket()
    claim, earlier = uuid.uuid4(), uuid.uuid4()
    job_id = seed_job(app, tenant, "completed", queue="images", worker="ProcessImage", claim_token=str(claim))
    png = io.BytesIO()
    Image.new("RGB", (320, 200), "teal").save(png, "PNG")
    pdf = io.BytesIO()
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    writer.write(pdf)
    keys = {
        "thumb.png": claim_prefix(tenant, job_id, claim) + "thumb.png",
        "report.pdf": claim_prefix(tenant, job_id, claim) + "report.pdf",
        "stale.png": claim_prefix(tenant, job_id, earlier) + "stale.png",
    }
    objects = {"thumb.png": (png.getvalue(), "image/png"), "report.pdf": (pdf.getvalue(), "application/pdf")}
    objects["stale.png"] = objects["thumb.png"]
    outputs = []
    for name, key in keys.items():
        data, content_type = objects[name]
        storage.for_tenant(tenant).put_bytes(key, data, content_type)
        outputs.append({"name": name, "key": key, "contentType": content_type, "size": len(data)})
    app.sql("UPDATE jobs SET result = %s WHERE id = %s", (Jsonb({"outputs": outputs, "width": 320}), job_id))
    return job_id, keys


# An HTML page that would run a script and show a form of its own, if a browser ever rendered it.
HOSTILE_HTML = b"<!doctype html><title>t</title><script>document.title = 'ran'</script><form><input name=token></form>"


def seed_completed_with_one_output(
    app: LiveApp, name: str, recorded_type: str, stored_type: str, data: bytes = HOSTILE_HTML
) -> int:
    """A completed job of tenant-a with one output `name`, recorded as `recorded_type` and stored
    (in the completing claim's prefix) as `stored_type`; returns its id."""
    import uuid

    from shared.keys import claim_prefix
    from shared.storage import Storage

    claim = uuid.uuid4()
    job = seed_job(app, "tenant-a", "completed", claim_token=str(claim))
    key = claim_prefix("tenant-a", job, claim) + name
    storage = Storage(app.settings)
    storage.ensure_bucket()
    storage.for_tenant("tenant-a").put_bytes(key, data, stored_type)
    outputs = [{"name": name, "key": key, "contentType": recorded_type, "size": len(data)}]
    app.sql("UPDATE jobs SET result = %s WHERE id = %s", (Jsonb({"outputs": outputs}), job))
    return job
