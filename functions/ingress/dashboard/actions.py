"""The dashboard's actions (POST): sign in and out, retry and cancel jobs, pause/resume/scale queues.

Each checks the session, the Origin and the form's CSRF token before anything else, reuses the
logic of the API endpoints (jobs.retry_one, jobs.cancel_matching, admin.pause/resume/scale) and
answers with a redirect (303) to the page to show next.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response

from shared.db import job_store
from shared.db.job_store import JobFilter
from shared.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.settings import Settings

from .. import admin, jobs
from . import session as sessions
from .render import html
from .session import Session, SignInRequired
from .views import error_page, job_id_of, safe_next, sign_in_page

Action = Callable[[Request, Session, FormData], Awaitable[Response]]
MAX_FIELDS: Final = 1100  # a page of ids and a few more fields; more is not a form of ours
MAX_IDS: Final = 1000


def _redirect(location: str) -> Response:
    return Response(status_code=303, headers={"Location": location, "Cache-Control": "no-store"})


def action(handler: Action, *, scope: str = "jobs:write") -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            session = sessions.current(request)
        except SignInRequired as refused:
            return sign_in_page(request, refused.reason or "Please sign in.", next_url="/dashboard")
        try:
            if not sessions.same_origin(request):
                raise Forbidden("this form was sent from another site")
            form = await read_form(request, max_fields=MAX_FIELDS)
            if not sessions.csrf_ok(request, session, _text(form, "csrf")):
                raise Forbidden("this form has expired or did not come from this dashboard; reload the page")
            if scope not in session.principal.scopes and not session.principal.is_admin:
                raise Forbidden(f"this token lacks the {scope!r} scope")
            return await handler(request, session, form)
        except ProblemError as exc:
            return error_page(request, session, exc)

    return endpoint


async def read_form(request: Request, *, max_fields: int) -> FormData:
    """A urlencoded form body (all our forms are), bounded in size and fields; 400/413/415 otherwise.

    Parsed here rather than with python-multipart: no file uploads, so no extra dependency."""
    settings: Settings = request.app.state.settings
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > settings.max_body_bytes:
            raise PayloadTooLarge(f"the form is larger than {settings.max_body_bytes} bytes")
    if not body:
        return FormData()  # an empty form (then without its CSRF token: refused by the caller)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("send an application/x-www-form-urlencoded form")
    try:
        text = body.decode("utf-8")
        pairs: list[tuple[str, str | UploadFile]] = list(
            parse_qsl(text, keep_blank_values=True, max_num_fields=max_fields)
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the form could not be read") from exc
    return FormData(pairs)


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def login(request: Request) -> Response:
    """Sign in with a token: it must verify, carry jobs:read (or admin), and the form must be ours."""
    try:
        form = await read_form(request, max_fields=10)
    except ProblemError as exc:
        return sign_in_page(request, exc.detail, status=exc.status)
    next_url = safe_next(_text(form, "next"))
    if not sessions.same_origin(request) or not sessions.login_csrf_ok(request, _text(form, "csrf")):
        return sign_in_page(request, "The sign-in form expired; please try again.", status=403, next_url=next_url)
    token = (_text(form, "token") or "").strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if not token:
        return sign_in_page(request, "Paste a token to sign in.", status=400, next_url=next_url)
    try:
        sessions.principal_of(token, request.app.state.settings)
    except SignInRequired as refused:
        return sign_in_page(request, f"That token was refused: {refused.reason}", next_url=next_url)
    response = _redirect(next_url)
    sessions.start(request, response, token)
    return response


async def logout(request: Request, session: Session, form: FormData) -> Response:
    response = html(
        request,
        "login.html",
        error=None,
        signed_out=True,
        next_url="/dashboard",
        csrf=sessions.login_csrf(request.app.state.settings, nonce := sessions.login_nonce(request)),
    )
    sessions.remember_login_nonce(request, response, nonce)
    sessions.end(request, response)
    return response


def _back(form: FormData, default: str) -> str:
    return safe_next(_text(form, "back") or default)


def _with_notice(location: str, **counts: int) -> str:
    """`location` with notice codes added (the page words them; nothing free-form goes in a URL)."""
    params = []
    for code, n in counts.items():
        params += [("done", code), (f"n_{code}", str(n))]
    return location + ("&" if "?" in location else "?") + urlencode(params)


async def retry_job(request: Request, session: Session, form: FormData) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    await jobs.retry_one(request.app.state.pool, job_id, tenant=session.tenant)
    return _redirect(_with_notice(_back(form, f"/dashboard/jobs/{job_id}"), retried=1))


async def cancel_job(request: Request, session: Session, form: FormData) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    pool = request.app.state.pool
    cancelled = await jobs.cancel_matching(pool, JobFilter(tenant_id=session.tenant, ids=[job_id]))
    if not cancelled:
        async with pool.connection() as conn:
            job = await job_store.get_job(conn, job_id, tenant_id=session.tenant)
        if job is None:
            raise NotFound("no such job")  # another tenant's job, exactly like a missing one
        raise Conflict(f"only unfinished jobs can be cancelled; this one is {job.state.value}")
    return _redirect(_with_notice(_back(form, f"/dashboard/jobs/{job_id}"), cancelled=cancelled))


async def bulk(request: Request, session: Session, form: FormData) -> Response:
    """Retry or cancel the selected jobs; jobs of other tenants are simply not found."""
    raw = [v for v in form.getlist("ids") if isinstance(v, str)]
    if not raw or len(raw) > MAX_IDS or not all(v.isdigit() and len(v) <= 18 for v in raw):
        raise ValidationFailed("select at least one job", errors=[{"path": "ids", "message": "select 1 to 1000 jobs"}])
    ids = sorted({int(v) for v in raw})
    back = _back(form, "/dashboard/jobs")
    what = _text(form, "action")
    pool = request.app.state.pool
    if what == "cancel":
        cancelled = await jobs.cancel_matching(pool, JobFilter(tenant_id=session.tenant, ids=ids))
        return _redirect(_with_notice(back, cancelled=cancelled))
    if what == "retry":
        retried = skipped = 0
        for job_id in ids:
            try:
                await jobs.retry_one(pool, job_id, tenant=session.tenant)
                retried += 1
            except (Conflict, NotFound):
                skipped += 1
        counts = {"retried": retried, **({"skipped": skipped} if skipped else {})}
        return _redirect(_with_notice(back, **counts))
    raise ValidationFailed("choose retry or cancel", errors=[{"path": "action", "message": "retry or cancel"}])


_QUEUE_ACTIONS: Final = {"pause": "Pause", "resume": "Resume", "scale": "Change the limit of"}


async def queue_action(request: Request, session: Session, form: FormData) -> Response:
    """Pause, resume or scale: the first POST shows a confirmation page, the confirmed one acts."""
    name, what = request.path_params["name"], request.path_params["what"]
    if what not in _QUEUE_ACTIONS:
        raise NotFound("no such action")
    if name not in request.app.state.registry:
        raise NotFound(f"no queue {name!r}")
    limit: int | None = None
    if what == "scale":
        raw = (_text(form, "limit") or "").strip()
        if not raw.isdigit() or int(raw) > 1000:
            raise ValidationFailed(
                "the limit must be a whole number from 0 to 1000", errors=[{"path": "limit", "message": "0 to 1000"}]
            )
        limit = int(raw)
    if _text(form, "confirm") != "yes":
        return html(
            request, "confirm.html", session=session, queue=name, what=what, verb=_QUEUE_ACTIONS[what], limit=limit
        )
    pool = request.app.state.pool
    if what == "pause":
        await admin.pause(pool, name)
        return _redirect(_with_notice("/dashboard/queues", paused=1))
    if what == "resume":
        await admin.resume(pool, name)
        return _redirect(_with_notice("/dashboard/queues", resumed=1))
    assert limit is not None
    await admin.scale(pool, name, limit)
    return _redirect(_with_notice("/dashboard/queues", scaled=1))


def admin_action(handler: Action) -> Callable[[Request], Awaitable[Response]]:
    return action(handler, scope="admin")
