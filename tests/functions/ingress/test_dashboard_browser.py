"""The dashboard in a real browser (playwright driving the system Chromium, never a downloaded one).

Signs in, filters, reads a failed job's error, retries it and watches it complete without a
reload, pauses and resumes a queue, bulk-cancels scheduled jobs, and checks that one tenant's
session never shows another tenant's jobs. Screenshots of every page go to
test-artifacts/dashboard/ (git-ignored).
"""

from __future__ import annotations

import io
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from psycopg.types.json import Jsonb

from shared.keys import claim_prefix
from shared.storage import Storage
from tests.support.dashboard import seed_completed_with_one_output, seed_completed_with_outputs, seed_job
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
    field.blur()  # typed, not submitted, not being edited (while it is, the part waits: below)
    available = page.locator("tr[data-queue='images'] td.num").nth(2)
    before = int(available.inner_text())
    seed_job(app, "tenant-a", "available", queue="images", worker="ProcessImage")
    _refresh(page)
    assert int(available.inner_text()) == before + 1  # the part was swapped
    assert field.input_value() == "7"
    # Submitting it scales the queue to what was typed.
    page.locator("tr[data-queue='images']").get_by_role("button", name="Scale").click()
    page.get_by_role("button", name="Yes, change the limit of images").click()
    page.wait_for_url(re.compile(r"/dashboard/queues"))
    assert app.sql("SELECT \"limit\" FROM queues WHERE name = 'images'") == [(7,)]


def test_a_number_half_typed_is_not_wiped_by_a_refresh(browser: Any, app: LiveApp):
    # "1e" on its way to "1e1" reads as "" in a number field: restoring the value would wipe it.
    # The field being typed in goes back into the swapped part as it is, focused, and the rest of
    # the part is fresh (adversarial reviews: wiped; then the whole page frozen while typing).
    page = sign_in(browser, app, None, "admin")
    page.goto(f"{app.url}/dashboard/queues")
    field = page.get_by_label("Limit of images")
    available = page.locator("tr[data-queue='images'] td.num").nth(2)
    before = int(available.inner_text())
    field.click()
    field.press("Control+a")
    page.keyboard.type("1e")
    seed_job(app, "tenant-a", "available", queue="images", worker="ProcessImage")
    _refresh(page)
    assert int(available.inner_text()) == before + 1  # the part was swapped
    assert page.evaluate("document.activeElement.id") == "limit-images"
    assert page.evaluate("document.getElementById('limit-images').validity.badInput")  # "1e" kept
    page.keyboard.type("1")  # goes on typing: 1e1
    assert field.input_value() == "1e1"


def test_keyboard_focus_stays_on_a_button_of_a_swapped_part(browser: Any, app: LiveApp):
    # Focus went back only to an element with an id; the job page's buttons have none, so a
    # keyboard user on "Cancel job" lost their place at each progress report (adversarial review).
    job = seed_job(app, "tenant-a", "executing")
    page = sign_in(browser, app, "tenant-a")
    page.goto(f"{app.url}/dashboard/jobs/{job}")
    page.get_by_role("button", name="Cancel job").focus()
    app.sql("UPDATE jobs SET progress = %s WHERE id = %s", (Jsonb({"done": 1, "total": 5}), job))
    _refresh(page)
    assert page.locator("[data-progress]").count() == 1  # swapped
    assert page.evaluate("document.activeElement.textContent") == "Cancel job"


def test_focus_never_moves_to_another_action_after_a_swap(browser: Any, app: LiveApp):
    # Focus went back by position when its element had no id: on "Cancel job" of a job that was
    # then discarded, it landed on "Retry job", and Enter retried it (adversarial review).
    job = seed_job(app, "tenant-a", "executing")
    page = sign_in(browser, app, "tenant-a")
    page.goto(f"{app.url}/dashboard/jobs/{job}")
    page.get_by_role("button", name="Cancel job").focus()
    app.sql("UPDATE jobs SET state = 'discarded', discarded_at = now() WHERE id = %s", (job,))
    _refresh(page)
    assert page.locator("[data-state]").inner_text() == "discarded"
    assert page.evaluate("document.activeElement.textContent") != "Retry job"
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    assert app.sql("SELECT state FROM jobs WHERE id = %s", (job,)) == [("discarded",)]


def test_focus_never_moves_to_another_job_in_the_list(browser: Any, app: LiveApp):
    # A job's checkbox whose row left the filtered list handed focus to the next job's, which
    # Space then ticked; a new job arriving above moved focus to its link (adversarial review).
    jobs = [seed_job(app, "tenant-a", "available") for _ in range(3)]
    page = sign_in(browser, app, "tenant-a")
    page.goto(f"{app.url}/dashboard/jobs?state=available")
    page.locator(f"#sel-{jobs[1]}").focus()
    app.sql(
        "UPDATE jobs SET state = 'executing', attempted_at = now(), heartbeat_at = now(), attempt = 1,"
        " attempted_by = 'm' WHERE id = %s",
        (jobs[1],),
    )
    _refresh(page)
    assert page.locator(f"#sel-{jobs[1]}").count() == 0
    page.keyboard.press("Space")
    assert page.locator("input[name=ids]:checked").count() == 0
    page.get_by_role("link", name=str(jobs[0]), exact=True).focus()
    later = seed_job(app, "tenant-a", "available")
    _refresh(page)
    assert page.locator(f"tr[data-job='{later}']").count() == 1
    assert page.evaluate("document.activeElement.getAttribute('href')") == f"/dashboard/jobs/{jobs[0]}"


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
    refused: list[str] = []
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )
    with page.expect_request(lambda r: "report.pdf" in r.url and "X-Amz-Signature" in r.url):  # the frame's
        page.goto(f"{app.url}/dashboard/jobs/{job}")
        _thumbnail_width(page)
    # Loaded through the page's own links, which send the browser to a presigned URL: the CSP
    # allows both origins for images and frames (the review found the frame blocked).
    assert _thumbnail_width(page) == 320
    assert page.locator("iframe.pdf").count() == 1 and not refused
    shot(page, "job-outputs")


def _thumbnail_width(page: Any) -> int:
    thumb = page.locator("img.thumb")
    thumb.scroll_into_view_if_needed()
    thumb.evaluate("img => new Promise(loaded => img.complete ? loaded(null) : img.addEventListener('load', loaded))")
    return int(thumb.evaluate("img => img.complete ? img.naturalWidth : 0"))


def _refresh(page: Any) -> None:
    """Have the live parts re-fetched now and wait until the script has dealt with the answer."""
    with page.expect_response(lambda r: r.request.headers.get("x-dashboard-fragment") == "1") as answered:
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # refreshes at once
    assert answered.value.ok
    page.wait_for_timeout(300)  # the script compares and swaps right after the answer


def test_refreshing_a_job_page_keeps_its_previews_loaded(browser: Any, app: LiveApp):
    # A presigned URL differs every second; when the page carried them, every refresh (every 10 s,
    # every 2 s without the event stream) swapped the part of the page for a new one: the
    # thumbnail and the PDF loaded again, the PDF back at its first page, a text selection lost.
    # Nor is the result part swapped when another part changes (its batch's counts).
    job, _ = seed_completed_with_outputs(app, "tenant-a")
    app.sql("UPDATE jobs SET batch_id = 'b1' WHERE id = %s", (job,))
    page = sign_in(browser, app, "tenant-a")
    loads: list[str] = []  # each load of a preview goes through the page's own link first
    page.on("request", lambda r: loads.append(r.url) if f"/dashboard/jobs/{job}/outputs/" in r.url else None)
    page.goto(f"{app.url}/dashboard/jobs/{job}")
    assert _thumbnail_width(page) == 320
    page.evaluate("document.querySelector('img.thumb').dataset.seen = 'yes'")
    for _ in range(2):
        page.wait_for_timeout(1100)  # the next second: a presigned URL signed now differs
        _refresh(page)
        assert page.evaluate("document.querySelector('img.thumb').dataset.seen") == "yes"
    counts = page.locator("[data-part='state']").inner_text()
    seed_job(app, "tenant-a", "available", batch_id="b1")  # a sibling joins the batch
    _refresh(page)
    assert page.locator("[data-part='state']").inner_text() != counts  # that part was swapped
    assert page.evaluate("document.querySelector('img.thumb').dataset.seen") == "yes"
    assert len(loads) == 2, loads  # the thumbnail's and the PDF's, once each


def test_outputs_that_appear_or_change_under_an_open_page_are_shown(browser: Any, app: LiveApp):
    # The CSP named the storage only when the job had outputs as the page loaded, so a job that
    # completed under an open page showed no thumbnail; and a link naming an index showed the
    # browser's cached picture for a new one (adversarial review).
    job, _ = seed_completed_with_outputs(app, "tenant-a")
    ((result,),) = app.sql("SELECT result FROM jobs WHERE id = %s", (job,))
    app.sql("UPDATE jobs SET result = NULL WHERE id = %s", (job,))
    page = sign_in(browser, app, "tenant-a")
    page.goto(f"{app.url}/dashboard/jobs/{job}")
    app.sql("UPDATE jobs SET result = %s WHERE id = %s", (Jsonb(result), job))
    _refresh(page)
    assert _thumbnail_width(page) == 320
    # Another claim completes it with another picture first.
    claim = uuid.uuid4()
    key = claim_prefix("tenant-a", job, claim) + "other.png"
    png = io.BytesIO()
    Image.new("RGB", (100, 50), "red").save(png, "PNG")
    Storage(app.settings).for_tenant("tenant-a").put_bytes(key, png.getvalue(), "image/png")
    outputs = [{"name": "other.png", "key": key, "contentType": "image/png", "size": len(png.getvalue())}]
    app.sql(
        "UPDATE jobs SET claim_token = %s, result = %s WHERE id = %s", (str(claim), Jsonb({"outputs": outputs}), job)
    )
    _refresh(page)
    assert "other.png" in page.locator("[data-part='result']").inner_text()
    assert _thumbnail_width(page) == 100


def test_html_recorded_as_a_pdf_does_not_run_in_the_preview_frame(browser: Any, app: LiveApp):
    # The frame showed what the store answered with, the type the object was stored under: HTML
    # ran inside the page an admin trusts, a form of its own with it (adversarial review).
    job = seed_completed_with_one_output(app, "report.pdf", "application/pdf", "text/html")
    page = sign_in(browser, app, None, "admin")
    with page.expect_response(lambda r: "report.pdf" in r.url and "X-Amz-Signature" in r.url) as framed:
        page.goto(f"{app.url}/dashboard/jobs/{job}")
    assert framed.value.headers["content-type"] == "application/pdf"
    framed_pages = [f for f in page.frames if "report.pdf" in f.url]
    assert framed_pages
    for frame in framed_pages:  # the PDF viewer's, never the HTML's
        frame.wait_for_load_state()
        assert frame.evaluate("document.contentType") != "text/html"


def test_a_download_link_saves_the_file(browser: Any, app: LiveApp):
    # It redirects to the storage's origin, where `download` does not hold: an HTML output opened
    # in the tab instead (adversarial review). The store now answers with an attachment.
    job = seed_completed_with_one_output(app, "report.html", "text/html", "text/html")
    page = sign_in(browser, app, None, "admin", accept_downloads=True)
    page.goto(f"{app.url}/dashboard/jobs/{job}")
    with page.expect_download() as saved:
        page.get_by_role("link", name="report.html").click()
    assert saved.value.suggested_filename == "report.html"
    assert page.url == f"{app.url}/dashboard/jobs/{job}" and page.title() != "ran"
