"""The web dashboard at /dashboard: server-rendered pages (Jinja2) over the same logic as the API.

Reading works without JavaScript; static/dashboard/dashboard.js only refreshes the live parts of
a page and adds select-all. Not part of the API document (include_in_schema=False).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from . import actions, live, views

STATIC_DIR: Final = Path(__file__).resolve().parents[1] / "static" / "dashboard"


def routes() -> list[BaseRoute]:
    def get(path: str, endpoint: object) -> Route:
        return Route(path, endpoint, methods=["GET"], include_in_schema=False)  # type: ignore[arg-type]

    def post(path: str, endpoint: object) -> Route:
        return Route(path, endpoint, methods=["POST"], include_in_schema=False)  # type: ignore[arg-type]

    return [
        get("/dashboard", views.page(views.overview)),
        get("/dashboard/login", views.login_form),
        post("/dashboard/login", actions.login),
        post("/dashboard/logout", actions.action(actions.logout, scope="jobs:read")),
        get("/dashboard/jobs", views.page(views.jobs_list)),
        post("/dashboard/jobs/bulk", actions.action(actions.bulk)),
        get("/dashboard/jobs/{job_id}", views.page(views.job_page)),
        get("/dashboard/jobs/{job_id}/outputs/{ref}", views.page(views.job_output)),
        post("/dashboard/jobs/{job_id}/retry", actions.action(actions.retry_job)),
        post("/dashboard/jobs/{job_id}/cancel", actions.action(actions.cancel_job)),
        get("/dashboard/queues", views.page(views.queues_page)),
        post("/dashboard/queues/{name}/{what}", actions.admin_action(actions.queue_action)),
        get("/dashboard/machines", views.page(views.machines_page)),
        get("/dashboard/webhook-secret", views.page(views.webhook_secret_page)),
        get("/dashboard/events", live.events),
        Mount("/dashboard/static", StaticFiles(directory=STATIC_DIR, check_dir=True), name="dashboard-static"),
    ]
