"""The dashboard in a real browser (playwright driving the system Chromium, never a downloaded one).

Signs in, filters, reads a failed job's error, retries it and watches it complete without a
reload, pauses and resumes a queue, bulk-cancels scheduled jobs, and checks that one tenant's
session never shows another tenant's jobs. Screenshots of every page go to
test-artifacts/dashboard/ (git-ignored).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dashboard import seed_completed_with_outputs, seed_job
from tests.support.live import LiveApp

from .conftest import OpenApp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "dashboard"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make system-deps)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def engine(open_app: OpenApp, tmp_path: Path) -> Iterator[LiveApp]:
    with open_app(
        run_dispatcher=True,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
    ) as live:
        yield live


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(browser: Any, app: LiveApp, tenant: str | None, scopes: str = "jobs:read jobs:write", **context: Any):
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{app.url}/dashboard")
    page.get_by_label("API token").fill(app.token(tenant, scopes))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{app.url}/dashboard")
    return page


def job_ids_shown(page: Any) -> set[int]:
    return {int(i) for i in re.findall(r"/dashboard/jobs/(\d+)", page.content())}


def test_sign_in_filter_read_a_failed_job_retry_it_and_watch_it_complete(browser: Any, engine: LiveApp, tmp_path: Path):
    with engine.client("tenant-a") as client:
        failing = client.post(
            "/jobs/default",
            json={"function": "fail_once", "args": {"marker_dir": str(tmp_path)}, "options": {"maxAttempts": 1}},
        ).json()["id"]
        done = client.post("/jobs/default", json={"function": "echo", "args": {"hello": "world"}}).json()["id"]
    engine.wait_for_job(failing, {"discarded"})
    engine.wait_for_job(done, {"completed"})

    page = sign_in(browser, engine, "tenant-a")
    assert page.get_by_role("heading", name="Overview").is_visible()
    page.wait_for_selector("svg[role=img]")
    shot(page, "overview")

    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_label("State").select_option("discarded")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"state=discarded"))
    assert job_ids_shown(page) == {failing}
    shot(page, "jobs-filtered")

    page.get_by_role("link", name=str(failing), exact=True).click()
    page.wait_for_url(f"{engine.url}/dashboard/jobs/{failing}")
    assert page.locator(".error-text").inner_text() == "the first run always fails"
    assert page.locator(".kind").first.inner_text() == "first-run"
    shot(page, "job-failed")

    page.get_by_role("button", name="Retry job").click()
    page.wait_for_url(re.compile(rf"/dashboard/jobs/{failing}\?"))
    page.evaluate("window.notReloaded = true")  # gone if the page were loaded again
    # The live refresh swaps the state in (no string-evaluated JS here: the page's CSP forbids eval).
    page.locator("[data-state]", has_text="completed").wait_for(timeout=60_000)
    assert page.evaluate("window.notReloaded") is True
    assert engine.sql("SELECT state FROM jobs WHERE id = %s", (failing,)) == [("completed",)]
    # The timeline: the failed first run and the completed one after the retry, each with its machine.
    attempts = page.locator(".timeline li")
    assert attempts.count() == 2
    failed, completed = attempts.nth(0).inner_text(), attempts.nth(1).inner_text()
    assert "failed (first-run)" in failed and "machine local-" in failed and "took" in failed
    assert "completed" in completed and "machine local-" in completed
    shot(page, "job-completed-after-retry")


def test_new_jobs_appear_in_the_list_without_reloading(browser: Any, app: LiveApp):
    first = seed_job(app, "tenant-a", "available")
    page = sign_in(browser, app, "tenant-a")
    page.goto(f"{app.url}/dashboard/jobs")
    assert job_ids_shown(page) == {first}
    page.evaluate("window.notReloaded = true")
    later = seed_job(app, "tenant-a", "scheduled")
    page.wait_for_selector(f"tr[data-job='{later}']")
    app.sql("UPDATE jobs SET state = 'cancelled', cancelled_at = now() WHERE id = %s", (first,))
    page.wait_for_selector(f"tr[data-job='{first}'] .badge.cancelled")
    assert page.evaluate("window.notReloaded") is True


def test_pause_and_resume_a_queue(browser: Any, app: LiveApp):
    page = sign_in(browser, app, None, "admin")
    page.get_by_role("link", name="Queues").click()
    shot(page, "queues")
    page.get_by_role("button", name="Pause images").click()
    assert page.get_by_role("heading", name="Pause queue images?").is_visible()
    shot(page, "queue-confirm")
    page.get_by_role("button", name="Yes, pause images").click()
    page.wait_for_selector("tr[data-queue='images'] .badge.paused")
    assert app.sql("SELECT paused FROM queues WHERE name = 'images'") == [(True,)]
    page.get_by_role("button", name="Resume images").click()
    page.get_by_role("button", name="Yes, resume images").click()
    page.wait_for_selector("tr[data-queue='images'] .badge.running")
    assert app.sql("SELECT paused FROM queues WHERE name = 'images'") == [(False,)]
    page.get_by_label("Limit of images").fill("3")
    page.locator("tr[data-queue='images']").get_by_role("button", name="Scale").click()
    page.get_by_role("button", name="Yes, change the limit of images").click()
    page.wait_for_url(re.compile(r"/dashboard/queues"))
    assert app.sql("SELECT \"limit\" FROM queues WHERE name = 'images'") == [(3,)]
    page.get_by_role("link", name="Machines").click()
    shot(page, "machines")


def test_a_limit_being_typed_survives_the_queues_page_refreshing(browser: Any, app: LiveApp):
    # The queues part is swapped whenever a job of any queue changes (a busy fleet: every quarter
    # of a second); what an admin had typed into a limit field went with it.
    page = sign_in(browser, app, None, "admin")
    page.goto(f"{app.url}/dashboard/queues")
    field = page.get_by_label("Limit of images")
    field.fill("7")
    available = page.locator("tr[data-queue='images'] td.num").nth(2)
    before = int(available.inner_text())
    seed_job(app, "tenant-a", "available", queue="images", worker="ProcessImage")
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # refresh now, event or not
    page.wait_for_function(
        f"document.querySelector(\"tr[data-queue='images']\").querySelectorAll('td.num')[2].textContent == '{before + 1}'"
    )
    assert field.input_value() == "7"
    # Submitting it scales the queue to what was typed.
    page.locator("tr[data-queue='images']").get_by_role("button", name="Scale").click()
    page.get_by_role("button", name="Yes, change the limit of images").click()
    page.wait_for_url(re.compile(r"/dashboard/queues"))
    assert app.sql("SELECT \"limit\" FROM queues WHERE name = 'images'") == [(7,)]


def test_bulk_cancel_of_scheduled_jobs(browser: Any, app: LiveApp):
    scheduled = [seed_job(app, "tenant-a", "scheduled") for _ in range(4)]
    running = seed_job(app, "tenant-a", "available")
    page = sign_in(browser, app, "tenant-a")
    page.goto(f"{app.url}/dashboard/jobs?state=scheduled")
    assert job_ids_shown(page) == set(scheduled)
    page.get_by_label("Select every job on this page").check()
    assert page.locator("input[name=ids]:checked").count() == 4
    shot(page, "jobs-selected")
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.wait_for_selector("text=4 job(s) cancelled.")
    states = dict(app.sql("SELECT id, state FROM jobs WHERE id = ANY(%s)", ([*scheduled, running],)))
    assert {states[i] for i in scheduled} == {"cancelled"} and states[running] == "available"


def test_tenant_a_never_sees_tenant_b(browser: Any, app: LiveApp):
    mine = seed_job(app, "tenant-a", "discarded", tags=["tag-of-a"])
    theirs = [
        seed_job(app, "tenant-b", state, tags=["tag-of-b"], args={"secret": "b-only"})
        for state in ("available", "scheduled", "discarded", "completed")
    ]
    page = sign_in(browser, app, "tenant-a")
    for path in [
        "/dashboard",
        "/dashboard/jobs",
        "/dashboard/jobs?tenant=tenant-b",
        "/dashboard/queues",
        "/dashboard/webhook-secret",
        f"/dashboard/jobs/{mine}",
    ]:
        page.goto(app.url + path)
        page.wait_for_timeout(2500)  # one live refresh, too
        html = page.content()
        assert (
            "tag-of-b" not in html and "b-only" not in html and "tenant-b" not in html.replace("tenant=tenant-b", "")
        ), path
        assert not job_ids_shown(page) & set(theirs), path
    page.goto(f"{app.url}/dashboard/jobs/{theirs[0]}")
    assert page.get_by_role("heading", name="Not found").is_visible()
    shot(page, "not-found")
    page.goto(f"{app.url}/dashboard/webhook-secret")
    page.get_by_text("Show the secret").click()
    shot(page, "webhook-secret")


def test_pages_on_a_phone(browser: Any, app: LiveApp):
    job = seed_job(
        app,
        "tenant-a",
        "discarded",
        errors=[{"attempt": 1, "at": "2026-12-02T10:00:00+00:00", "kind": "timeout", "error": "took too long"}],
    )
    page = sign_in(browser, app, "tenant-a", viewport={"width": 390, "height": 844}, is_mobile=True)
    shot(page, "phone-overview")
    page.goto(f"{app.url}/dashboard/jobs")
    shot(page, "phone-jobs")
    page.goto(f"{app.url}/dashboard/jobs/{job}")
    shot(page, "phone-job")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Sign in").wait_for()  # the sign-out's redirect (CI under load)
    assert page.get_by_role("heading", name="Sign in").is_visible()
    shot(page, "signed-out")
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert "invalid token" in page.get_by_role("alert").inner_text()
    shot(page, "sign-in-refused")


def test_a_job_with_outputs_shows_a_thumbnail_and_the_pdf(browser: Any, app: LiveApp):
    job, _ = seed_completed_with_outputs(app, "tenant-a")
    page = sign_in(browser, app, "tenant-a")
    page.goto(f"{app.url}/dashboard/jobs/{job}")
    thumb = page.locator("img.thumb")
    thumb.scroll_into_view_if_needed()
    thumb.evaluate("img => new Promise(loaded => img.complete ? loaded(null) : img.addEventListener('load', loaded))")
    # Loaded through the page's own link, which sends the browser to the storage's presigned URL;
    # the page's CSP allows that origin for images.
    assert thumb.evaluate("img => img.complete && img.naturalWidth") == 320
    assert page.locator("iframe.pdf").count() == 1
    shot(page, "job-outputs")


def test_refreshing_a_job_page_keeps_its_previews_loaded(browser: Any, app: LiveApp):
    # A presigned URL differs every second; when the page carried them, every refresh (every 10 s,
    # every 2 s without the event stream) swapped the part of the page for a new one: the
    # thumbnail and the PDF loaded again, the PDF back at its first page, a text selection lost.
    job, _ = seed_completed_with_outputs(app, "tenant-a")
    page = sign_in(browser, app, "tenant-a")
    loads: list[str] = []
    page.on("request", lambda request: loads.append(request.url) if "thumb.png" in request.url else None)
    page.goto(f"{app.url}/dashboard/jobs/{job}")
    page.locator("img.thumb").scroll_into_view_if_needed()
    page.evaluate("document.querySelector('img.thumb').dataset.seen = 'yes'")
    for _ in range(2):
        page.wait_for_timeout(1100)  # the next second: a presigned URL signed now differs
        with page.expect_response(lambda r: r.request.headers.get("x-dashboard-fragment") == "1") as refreshed:
            page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # refreshes at once
        assert refreshed.value.ok
        page.wait_for_timeout(300)  # the script compares and would swap right after the answer
        assert page.evaluate("document.querySelector('img.thumb').dataset.seen") == "yes"
    assert len([url for url in loads if "X-Amz-Signature" in url]) == 1
