"""The dashboard's pages (GET): overview, jobs, one job, queues, machines, webhook secret, sign-in.

Every page is whole HTML that works without JavaScript; the refresh script asks for the same URL
with the fragment header and gets only the part of the page that changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from shared.db import job_store
from shared.db.job_store import JobFilter
from shared.db.models import Job, JobState
from shared.errors import Forbidden, NotFound, ProblemError, ValidationFailed
from shared.keys import claim_prefix
from shared.outputs import completing_key
from shared.settings import Settings

from ..http import parse_query
from ..jobs import ListQuery
from . import overview as overview_data
from . import session as sessions
from .render import html, wants_fragment
from .session import Session, SignInRequired
from .sql import QUERIES

Page = Callable[[Request, Session], Awaitable[Response]]
PAGE_SIZE: Final = 50
_TENANT: Final = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path only (never another site)."""
    if value and value.startswith("/dashboard") and "\\" not in value and value.isprintable() and " " not in value:
        return value
    return "/dashboard"


def sign_in_page(request: Request, reason: str | None, *, status: int = 401, next_url: str | None = None) -> Response:
    nonce = sessions.login_nonce(request)
    response = html(
        request,
        "login.html",
        status=status,
        error=reason,
        next_url=safe_next(next_url or str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")),
        csrf=sessions.login_csrf(request.app.state.settings, nonce),
    )
    sessions.remember_login_nonce(request, response, nonce)
    if reason and request.cookies.get(sessions.COOKIE):
        sessions.end(request, response)  # the refused token goes with its cookie
    return response


def error_page(request: Request, session: Session | None, exc: ProblemError) -> Response:
    errors = getattr(exc, "errors", None) or []
    return html(
        request,
        "error.html",
        status=exc.status,
        headers=exc.headers,  # Retry-After of a 429 or 503
        session=session,
        title=exc.title,
        detail=exc.detail,
        errors=errors,
    )


def page(handler: Page) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in user: the sign-in form otherwise; problems become HTML error pages."""

    async def endpoint(request: Request) -> Response:
        try:
            session = sessions.current(request)
        except SignInRequired as refused:
            return sign_in_page(request, refused.reason)
        try:
            return await handler(request, session)
        except ProblemError as exc:
            return error_page(request, session, exc)

    return endpoint


def require_admin(session: Session) -> None:
    if not session.principal.is_admin:
        raise Forbidden("only admins can see this page")


async def login_form(request: Request) -> Response:
    try:
        sessions.current(request)
    except SignInRequired:
        return sign_in_page(request, None, status=200, next_url=request.query_params.get("next"))
    return Response(status_code=303, headers={"Location": safe_next(request.query_params.get("next"))})


def viewed_tenant(request: Request, session: Session) -> str | None:
    """Whose jobs a page counts: the session's tenant; an admin's choice (?tenant=) or everyone's."""
    if not session.principal.is_admin:
        return session.tenant
    chosen = request.query_params.get("tenant", "").strip()
    if not chosen:
        return None
    if not _TENANT.fullmatch(chosen):
        raise ValidationFailed("not a tenant id", errors=[{"path": "tenant", "message": "letters, digits, . _ -"}])
    return chosen


async def overview(request: Request, session: Session) -> Response:
    tenant = viewed_tenant(request, session)
    async with request.app.state.pool.connection() as conn:
        data = await overview_data.load(conn, tenant)
    template = "overview_live.html" if wants_fragment(request) else "overview.html"
    return html(request, template, session=session, data=data, tenant=tenant)


@dataclass
class Filters:
    queue: str = ""
    state: str = ""
    worker: str = ""
    tag: str = ""
    batch: str = ""
    tenant: str = ""
    id: str = ""
    cursor: str = ""

    def query(self, **changes: str) -> str:
        """This filter set as a query string (for pagination links), with `changes` applied."""
        from urllib.parse import urlencode

        values = {**self.__dict__, **changes}
        return urlencode({k: v for k, v in values.items() if v})


def _filters(request: Request, session: Session) -> Filters:
    raw = {k: v.strip() for k, v in request.query_params.items() if k in Filters.__dataclass_fields__}
    filters = Filters(**raw)
    if filters.tenant and not session.principal.is_admin:
        filters.tenant = ""  # a tenant sees its own jobs whatever the URL says
    return filters


def _job_filter(filters: Filters, session: Session) -> tuple[JobFilter, ListQuery]:
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    for name, alias in (
        ("queue", "queue"),
        ("worker", "worker"),
        ("tag", "tag"),
        ("batch", "batchId"),
        ("cursor", "cursor"),
    ):
        if value := getattr(filters, name):
            params[alias] = value
    if filters.state:
        params["state"] = [filters.state]
    query = parse_query(ListQuery, params)
    if filters.tenant and not _TENANT.fullmatch(filters.tenant):
        raise ValidationFailed("not a tenant id", errors=[{"path": "tenant", "message": "letters, digits, . _ -"}])
    tenant = filters.tenant or session.tenant
    criteria = JobFilter(
        tenant_id=tenant,
        queue=query.queue,
        states=[s.value for s in query.state] if query.state else None,
        worker=query.worker,
        batch_id=query.batch_id,
        tag=query.tag,
    )
    return criteria, query


def job_id_of(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise NotFound("no such job")
    return int(raw)


async def jobs_list(request: Request, session: Session) -> Response:
    filters = _filters(request, session)
    criteria, query = _job_filter(filters, session)
    async with request.app.state.pool.connection() as conn:
        if filters.id:
            if not filters.id.isdigit() or len(filters.id) > 18:
                raise ValidationFailed("not a job id", errors=[{"path": "id", "message": "digits only"}])
            one = await job_store.get_job(conn, int(filters.id), tenant_id=criteria.tenant_id)
            jobs = [one] if one is not None else []
        else:
            jobs = await job_store.list_jobs(conn, criteria, limit=PAGE_SIZE, before_id=query.cursor)
    next_cursor = str(jobs[-1].id) if len(jobs) == PAGE_SIZE else None
    context: dict[str, Any] = {
        "session": session,
        "jobs": jobs,
        "filters": filters,
        "next_cursor": next_cursor,
        "queues": sorted(request.app.state.registry),
        "states": [s.value for s in JobState],
        "notice": _notice(request),
    }
    template = "jobs_live.html" if wants_fragment(request) else "jobs.html"
    return html(request, template, **context)


_NOTICES: Final = {
    "retried": "{n} job(s) retried.",
    "cancelled": "{n} job(s) cancelled.",
    "skipped": "{n} job(s) could not be retried: only discarded or cancelled jobs can.",
    "paused": "Queue paused.",
    "resumed": "Queue resumed.",
    "scaled": "Queue limit changed.",
}


def _notice(request: Request) -> list[str]:
    """Messages after an action, from codes (never text taken from the URL)."""
    out = []
    for code in request.query_params.getlist("done"):
        template = _NOTICES.get(code)
        count = request.query_params.get(f"n_{code}", "")
        if template:
            out.append(template.format(n=count if count.isdigit() else "Some"))
    return out


@dataclass
class Attempt:
    number: int | None
    machine: str | None
    started: datetime | str | None
    ended: datetime | str | None
    duration: float | None
    outcome: str
    kind: str | None = None
    error: str | None = None


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def attempts_of(job: Job) -> list[Attempt]:
    """The attempts as the row records them: each failure (attempt, time, kind, error, and since
    error entries carry them, its machine and start), and the latest attempt's machine and start."""
    attempts = []
    for e in job.errors:
        if not isinstance(e, dict):
            continue
        started, ended = _parse_time(e.get("startedAt")), _parse_time(e.get("at"))
        attempts.append(
            Attempt(
                number=e.get("attempt"),
                machine=e.get("machine"),
                started=started,
                ended=e.get("at"),
                duration=(ended - started).total_seconds() if started and ended else None,
                outcome="failed",
                kind=e.get("kind"),
                error=e.get("error"),
            )
        )
    if job.attempt > 0 and job.attempted_at is not None:
        final_at = job.completed_at or job.discarded_at or job.cancelled_at
        latest = _entry_of_claim(attempts, job.attempt, job.attempted_at)
        if latest is not None:
            if latest.started is None:  # an entry written before entries named their machine and start
                latest.machine, latest.started = job.attempted_by, job.attempted_at
                ended = _parse_time(latest.ended)
                latest.duration = (ended - job.attempted_at).total_seconds() if ended else None
        else:
            running = job.state == JobState.EXECUTING
            attempts.append(
                Attempt(
                    number=job.attempt,
                    machine=job.attempted_by,
                    started=job.attempted_at,
                    ended=final_at,
                    duration=(final_at - job.attempted_at).total_seconds() if final_at else None,
                    outcome="running" if running else job.state.value,
                )
            )
    return attempts


def _entry_of_claim(attempts: list[Attempt], number: int, started: datetime) -> Attempt | None:
    """The failure entry of the attempt that started at `started`, if it failed; not an entry of
    the same number from before an explicit retry (which starts counting again)."""
    for attempt in reversed(attempts):
        if attempt.number != number:
            continue
        if isinstance(attempt.started, datetime):
            return attempt if attempt.started == started else None
        ended = _parse_time(attempt.ended)
        return attempt if ended is not None and ended >= started else None
    return None


_IMAGE_TYPE: Final = re.compile(r"^image/[a-z0-9.+-]{1,64}$")


def _previewed_type(recorded: object) -> str | None:
    """The type the page previews an output of this recorded type as (the store is told to answer
    with it): an image's (not SVG, which can carry script), a PDF's, or None: no preview."""
    media_type = recorded.split(";", 1)[0].strip().lower() if isinstance(recorded, str) else ""
    if _IMAGE_TYPE.fullmatch(media_type) and media_type != "image/svg+xml":
        return media_type
    return "application/pdf" if media_type == "application/pdf" else None


def _preview(content_type: str) -> str | None:
    previewed = _previewed_type(content_type)
    return None if previewed is None else "pdf" if previewed == "application/pdf" else "image"


def _output_ref(key: str) -> str:
    """What a job page's link names an output by: its key's digest, so a link always means one
    object (never "whatever is first now") and its URL changes only when the object does."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _completing_outputs(job: Job) -> list[tuple[dict[str, Any], str | None]]:
    """The job's recorded outputs, each with its key when the completing claim stored it (the
    rule of GET /jobs/{id}: only those get a link), else None."""
    stored = job.result.get("outputs") if isinstance(job.result, dict) else None
    if not isinstance(stored, list):
        return []
    prefix = claim_prefix(job.tenant_id, job.id, job.claim_token) if job.claim_token is not None else None
    return [(output, completing_key(output, prefix)) for output in stored if isinstance(output, dict)]


def _shown_output(job: Job, output: dict[str, Any], key: str | None) -> dict[str, Any]:
    """Only the fields the page shows, computed here; nothing else a stored entry holds."""
    content_type = output.get("contentType")
    content_type = content_type if isinstance(content_type, str) else ""
    name = output.get("name") if isinstance(output.get("name"), str) else output.get("key")
    return {
        "label": name if isinstance(name, str) else "output",
        "content_type": content_type,
        "size": output.get("size"),
        "link": f"/dashboard/jobs/{job.id}/outputs/{_output_ref(key)}" if key else None,
        "preview": _preview(content_type) if key else None,
    }


async def job_page(request: Request, session: Session) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    async with request.app.state.pool.connection() as conn:
        job = await job_store.get_job(conn, job_id, tenant_id=session.tenant)
        if job is None:
            raise NotFound("no such job")
        callbacks: list[dict[str, Any]] = []
        if job.meta.get("callbackUrl"):
            cur = await conn.execute(QUERIES["dashboard_callback_jobs"], {"job_id": job.id, "tenant_id": job.tenant_id})
            callbacks = list(await cur.fetchall())
        batch: list[dict[str, Any]] = []
        if job.batch_id:
            cur = await conn.execute(
                QUERIES["dashboard_batch_counts"], {"batch_id": job.batch_id, "tenant_id": job.tenant_id}
            )
            batch = sorted(await cur.fetchall(), key=lambda r: str(r["state"]))
    result = job.result
    outputs = [_shown_output(job, output, key) for output, key in _completing_outputs(job)]
    # What the machine recorded is an object; a row written otherwise is shown as it is.
    shown_result = {k: v for k, v in result.items() if k != "outputs"} if isinstance(result, dict) else result
    context: dict[str, Any] = {
        "session": session,
        "job": job,
        "attempts": attempts_of(job),
        "outputs": outputs,
        "result": shown_result,
        "callbacks": callbacks,
        "batch": batch,
        "notice": _notice(request),
    }
    template = "job_live.html" if wants_fragment(request) else "job.html"
    # Previews load through this page's own links, redirected to the storage: the CSP names
    # both, whether or not the job has outputs yet (it may complete while the page is open).
    return html(request, template, media_origins=[request.app.state.storage().download_source()], **context)


def _attachment(filename: str) -> str:
    """A Content-Disposition that saves the file under its name (RFC 6266: an ASCII fallback and
    the UTF-8 name)."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[-100:]
    encoded = quote(filename, safe="")
    # The URL carries it percent-encoded once more: a long non-ASCII name would near the 8 KiB
    # request lines servers accept, so such a name is saved under its ASCII fallback.
    return f'attachment; filename="{fallback}"' + (f"; filename*=UTF-8''{encoded}" if len(encoded) <= 600 else "")


async def job_output(request: Request, session: Session) -> Response:
    """A job page's link to one output: to a URL presigned now. The page itself carries only
    these links, which do not change, so refreshing it does not load its previews again and a
    page left open does not end up with links that expired."""
    job_id = job_id_of(request.path_params["job_id"])
    ref = request.path_params["ref"]
    async with request.app.state.pool.connection() as conn:
        job = await job_store.get_job(conn, job_id, tenant_id=session.tenant)
    if job is None:
        raise NotFound("no such job")
    found = [(output, key) for output, key in _completing_outputs(job) if key is not None and _output_ref(key) == ref]
    if not found:
        raise NotFound("no such output of the completing attempt")
    (output, key), storage = found[0], request.app.state.storage().for_tenant(job.tenant_id)
    # The store answers with the type and disposition asked for here, never what the object was
    # stored with: a preview is only ever the image or PDF the page chose to show (HTML recorded
    # as a PDF does not run in the page's frame), and a download is always saved, not shown.
    previewed = _previewed_type(output.get("contentType"))
    if request.query_params.get("view") == "preview" and previewed is not None:
        url, _ = storage.presign_get(key, content_type=previewed, disposition="inline")
    else:
        url, _ = storage.presign_get(key, disposition=_attachment(key.rsplit("/", 1)[-1]))
    return Response(status_code=303, headers={"Location": url, "Cache-Control": "no-store"})


async def queues_page(request: Request, session: Session) -> Response:
    async with request.app.state.pool.connection() as conn:
        data = await overview_data.load(conn, session.tenant)
    template = "queues_live.html" if wants_fragment(request) else "queues.html"
    return html(request, template, session=session, data=data, notice=_notice(request))


async def machines_page(request: Request, session: Session) -> Response:
    require_admin(session)
    async with request.app.state.pool.connection() as conn:
        recent = await job_store.recent_machines(conn, limit=200)
    # Live machines first, then the rest newest first (the query's order; sorted() is stable).
    machines = sorted(recent, key=lambda m: m.state not in ("launching", "running"))
    template = "machines_live.html" if wants_fragment(request) else "machines.html"
    return html(request, template, session=session, machines=machines)


async def webhook_secret_page(request: Request, session: Session) -> Response:
    from shared.webhook_signing import SigningSecretMissing, tenant_signing_secret

    settings: Settings = request.app.state.settings
    tenant = session.principal.tenant_id
    secret = problem = None
    if tenant is None:
        problem = "This admin token names no tenant, so it has no webhook signing secret."
    else:
        try:
            secret = tenant_signing_secret(settings, tenant)
        except SigningSecretMissing:
            problem = "This server has no WEBHOOK_SIGNING_SECRET configured."
    return html(request, "secret.html", session=session, tenant=tenant, secret=secret, problem=problem)
