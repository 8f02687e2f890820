"""The web dashboard over plain HTTP: sign-in, CSRF and Origin checks, tenant isolation of every
page and action, queue control for admins, output links, and its Content-Security-Policy."""

from __future__ import annotations

import hashlib
import html
import re
import urllib.parse
import uuid

import httpx
import pytest
from botocore.exceptions import NoCredentialsError
from botocore.signers import RequestSigner
from psycopg.types.json import Jsonb

from functions.ingress.app import routes
from shared.keys import claim_prefix
from shared.outputs import OutputWriter
from tests.support.dashboard import (
    HOSTILE_HTML,
    csrf_of,
    seed_completed_with_one_output,
    seed_completed_with_outputs,
    seed_job,
    signed_in,
)
from tests.support.live import LiveApp, wait_until

from .conftest import OpenApp

FAILED = [{"attempt": 1, "at": "2026-12-01T10:00:00+00:00", "kind": "bad-input", "error": "this can never work"}]
PAGES = ["/dashboard", "/dashboard/jobs", "/dashboard/queues", "/dashboard/webhook-secret"]


def _state(app: LiveApp, job_id: int) -> str:
    return str(app.sql("SELECT state FROM jobs WHERE id = %s", (job_id,))[0][0])


def test_sign_in_keeps_the_token_in_a_strict_http_only_cookie_and_sign_out_clears_it(app: LiveApp):
    with signed_in(app) as client:
        cookie = client.cookies.jar
        (stored,) = [c for c in cookie if c.name == "cp_dashboard"]
        assert stored.path == "/dashboard" and not stored.secure
        assert stored.has_nonstandard_attr("HttpOnly")
        assert stored.get_nonstandard_attr("SameSite") == "strict"
        page = client.get("/dashboard")
        assert page.status_code == 200 and "Tenant <strong>tenant-a</strong>" in page.text
        out = client.post("/dashboard/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 200 and "You are signed out" in out.text
        assert "cp_dashboard" not in client.cookies
        again = client.get("/dashboard")
        assert again.status_code == 401 and 'id="token"' in again.text


def test_the_cookie_is_secure_when_the_request_came_over_https(app: LiveApp):
    https = {"X-Forwarded-Proto": "https", "Origin": app.url.replace("http://", "https://")}
    with httpx.Client(base_url=app.url, trust_env=False, headers=https) as client:
        form = client.get("/dashboard/login")
        nonce_cookie = form.headers["set-cookie"]
        assert "Secure" in nonce_cookie
        # httpx keeps Secure cookies for https URLs only: send the sign-in nonce by hand.
        answer = client.post(
            "/dashboard/login",
            data={"csrf": csrf_of(form.text), "token": app.token("tenant-a"), "next": "/dashboard"},
            headers={"Cookie": nonce_cookie.split(";")[0]},
        )
    assert answer.status_code == 303, answer.text
    (session_cookie,) = [c for c in answer.headers.get_list("set-cookie") if c.startswith("cp_dashboard=")]
    assert "Secure" in session_cookie and "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie


def test_refused_tokens_get_the_sign_in_page_with_an_error_not_a_trace(app: LiveApp):
    with httpx.Client(base_url=app.url, trust_env=False, headers={"Origin": app.url}) as client:
        form = client.get("/dashboard/login")
        for token, why in [
            ("not-a-jwt", "invalid token"),
            (app.token("tenant-a", ttl=-10), "token expired"),
            (app.token("tenant-a", scopes="jobs:write"), "lacks the &#39;jobs:read&#39; scope"),
        ]:
            answer = client.post("/dashboard/login", data={"csrf": csrf_of(form.text), "token": token})
            assert answer.status_code == 401 and answer.headers["content-type"].startswith("text/html")
            assert why in answer.text and 'role="alert"' in answer.text
            assert "Traceback" not in answer.text and "cp_dashboard=" not in answer.headers.get("set-cookie", "")
        # A cookie whose token no longer verifies: the sign-in page again, and the cookie is dropped.
        client.cookies.set("cp_dashboard", app.token("tenant-a", ttl=-10), path="/dashboard")
        page = client.get("/dashboard/jobs")
        assert page.status_code == 401 and "token expired" in page.text
        assert 'cp_dashboard=""' in page.headers["set-cookie"] or "Max-Age=0" in page.headers["set-cookie"]


def test_every_page_needs_a_session(app: LiveApp):
    job = seed_job(app, "tenant-a", "discarded", errors=FAILED)
    with httpx.Client(base_url=app.url, trust_env=False) as client:
        for path in [*PAGES, f"/dashboard/jobs/{job}", "/dashboard/machines"]:
            page = client.get(path)
            assert page.status_code == 401 and 'action="/dashboard/login"' in page.text, path
            assert "this can never work" not in page.text


def test_posts_without_the_csrf_token_or_from_another_origin_change_nothing(app: LiveApp):
    discarded = seed_job(app, "tenant-a", "discarded", errors=FAILED)
    with signed_in(app) as client:
        csrf = csrf_of(client.get("/dashboard/jobs").text)
        attempts = [
            ({}, {}),
            ({"csrf": "0" * 64}, {}),
            ({"csrf": csrf}, {"Origin": "https://evil.example"}),
            ({"csrf": csrf}, {"Origin": "null"}),
            ({"csrf": csrf}, {"Origin": "", "Sec-Fetch-Site": "cross-site"}),
        ]
        for data, headers in attempts:
            if headers.get("Origin") == "":
                client.headers.pop("Origin", None)
                headers = {"Sec-Fetch-Site": "cross-site"}
            answer = client.post(f"/dashboard/jobs/{discarded}/retry", data=data, headers=headers)
            assert answer.status_code == 403, (data, headers)
            assert answer.headers["content-type"].startswith("text/html")
            assert _state(app, discarded) == "discarded"
            client.headers["Origin"] = app.url
        # Another session's token is no token for this one.
        with signed_in(app, "tenant-b") as other:
            foreign = csrf_of(other.get("/dashboard").text)
        assert client.post(f"/dashboard/jobs/{discarded}/retry", data={"csrf": foreign}).status_code == 403
        assert _state(app, discarded) == "discarded"
        # The sign-in form has its own token: a login POST from elsewhere does not sign anyone in.
    with httpx.Client(base_url=app.url, trust_env=False, headers={"Origin": "https://evil.example"}) as stranger:
        form = stranger.get("/dashboard/login")
        answer = stranger.post("/dashboard/login", data={"csrf": csrf_of(form.text), "token": app.token("tenant-a")})
        assert answer.status_code == 403 and "cp_dashboard=" not in answer.headers.get("set-cookie", "")


def test_a_tenant_sees_and_touches_only_its_own_jobs(app: LiveApp):
    mine = seed_job(app, "tenant-a", "discarded", errors=FAILED, tags=["mine"])
    theirs_failed = seed_job(app, "tenant-b", "discarded", errors=FAILED, tags=["theirs"], batch_id="batch-b")
    theirs_waiting = seed_job(app, "tenant-b", "scheduled", tags=["theirs"])
    with signed_in(app, "tenant-a") as client:
        listing = client.get("/dashboard/jobs")
        shown = set(map(int, re.findall(r'href="/dashboard/jobs/(\d+)"', listing.text)))
        assert shown == {mine}
        # Asking for the other tenant by URL changes nothing for a tenant.
        for query in ["tenant=tenant-b", f"id={theirs_failed}", "batch=batch-b", "tag=theirs"]:
            page = client.get(f"/dashboard/jobs?{query}")
            assert page.status_code == 200, query
            assert not set(map(int, re.findall(r'href="/dashboard/jobs/(\d+)"', page.text))) - {mine}, query
        assert client.get(f"/dashboard/jobs/{theirs_failed}").status_code == 404
        overview = client.get("/dashboard")
        assert overview.status_code == 200 and "jobs of tenant tenant-a" in overview.text.lower()
        # tenant-b's scheduled and discarded jobs count nowhere on tenant-a's overview or queues page
        assert _default_row(overview.text)[:6] == ["0", "0", "0", "0", "0", "1"]
        queues = client.get("/dashboard/queues").text
        assert "tenant-b" not in queues and "theirs" not in queues
        csrf = csrf_of(listing.text)
        assert client.post(f"/dashboard/jobs/{theirs_failed}/retry", data={"csrf": csrf}).status_code == 404
        assert client.post(f"/dashboard/jobs/{theirs_waiting}/cancel", data={"csrf": csrf}).status_code == 404
        bulk = client.post(
            "/dashboard/jobs/bulk", data={"csrf": csrf, "action": "cancel", "ids": [str(theirs_waiting)]}
        )
        assert bulk.status_code == 303
        bulk = client.post("/dashboard/jobs/bulk", data={"csrf": csrf, "action": "retry", "ids": [str(theirs_failed)]})
        assert bulk.status_code == 303 and "n_retried=0" in bulk.headers["location"]
        assert _state(app, theirs_failed) == "discarded" and _state(app, theirs_waiting) == "scheduled"
        assert client.get("/dashboard/machines").status_code == 403
        secret = client.get("/dashboard/webhook-secret").text
    from shared.webhook_signing import tenant_signing_secret

    assert tenant_signing_secret(app.settings, "tenant-a") in secret
    assert tenant_signing_secret(app.settings, "tenant-b") not in secret


def _default_row(page: str) -> list[str]:
    """The numbers of the overview's `default` row: available, scheduled, executing, retryable,
    completed and discarded in the last hour, ..."""
    row = page.split('href="/dashboard/jobs?queue=default">default</a></th>', 1)[1].split("</tr>", 1)[0]
    return re.findall(r'<td class="num">(?:<a [^>]+>)?(\d+)', row)


def test_an_admin_sees_every_tenant_and_can_filter_by_one(app: LiveApp):
    a = seed_job(app, "tenant-a", "available")
    b = seed_job(app, "tenant-b", "available")
    b_later = seed_job(app, "tenant-b", "scheduled")
    with signed_in(app, None, "admin jobs:read jobs:write") as admin:
        assert _default_row(admin.get("/dashboard").text)[:2] == ["2", "1"]
        assert _default_row(admin.get("/dashboard?tenant=tenant-a").text)[:2] == ["1", "0"]
        assert admin.get("/dashboard?tenant=a%20b").status_code == 422
        everyone = admin.get("/dashboard/jobs").text
        assert {a, b} <= set(map(int, re.findall(r'href="/dashboard/jobs/(\d+)"', everyone)))
        only_b = admin.get("/dashboard/jobs?tenant=tenant-b").text
        assert set(map(int, re.findall(r'href="/dashboard/jobs/(\d+)"', only_b))) == {b, b_later}
        assert admin.get(f"/dashboard/jobs/{a}").status_code == 200
        assert admin.get("/dashboard/machines").status_code == 200
        bad = admin.get("/dashboard/jobs?tenant=../x")
        assert bad.status_code == 422 and "not a tenant id" in bad.text


def test_retry_and_cancel_from_the_job_page_and_in_bulk(app: LiveApp):
    failed = seed_job(app, "tenant-a", "discarded", errors=FAILED)
    waiting = [seed_job(app, "tenant-a", "scheduled") for _ in range(3)]
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{failed}")
        assert "this can never work" in page.text and "bad-input" in page.text
        retried = client.post(f"/dashboard/jobs/{failed}/retry", data={"csrf": csrf_of(page.text)})
        assert retried.status_code == 303 and retried.headers["location"].startswith(f"/dashboard/jobs/{failed}")
        assert _state(app, failed) == "available"
        again = client.post(f"/dashboard/jobs/{failed}/retry", data={"csrf": csrf_of(page.text)})
        assert again.status_code == 409 and "only discarded or cancelled" in again.text
        listing = client.get("/dashboard/jobs?state=scheduled")
        answer = client.post(
            "/dashboard/jobs/bulk",
            data={
                "csrf": csrf_of(listing.text),
                "action": "cancel",
                "ids": [str(i) for i in waiting],
                "back": "/dashboard/jobs?state=scheduled",
            },
        )
        assert answer.status_code == 303 and "n_cancelled=3" in answer.headers["location"]
        assert {_state(app, i) for i in waiting} == {"cancelled"}
        shown = client.get(answer.headers["location"])
        assert "3 job(s) cancelled." in shown.text
        nothing = client.post("/dashboard/jobs/bulk", data={"csrf": csrf_of(listing.text), "action": "cancel"})
        assert nothing.status_code == 422


def test_queue_control_is_for_admins_and_asks_for_confirmation(app: LiveApp):
    def paused() -> bool:
        return bool(app.sql("SELECT paused FROM queues WHERE name = 'images'")[0][0])

    with signed_in(app) as tenant:
        csrf = csrf_of(tenant.get("/dashboard/queues").text)
        refused = tenant.post("/dashboard/queues/images/pause", data={"csrf": csrf, "confirm": "yes"})
        assert refused.status_code == 403 and not paused()
    with signed_in(app, None, "admin") as admin:
        csrf = csrf_of(admin.get("/dashboard/queues").text)
        asked = admin.post("/dashboard/queues/images/pause", data={"csrf": csrf})
        assert asked.status_code == 200 and "Pause queue images?" in asked.text and not paused()
        done = admin.post("/dashboard/queues/images/pause", data={"csrf": csrf, "confirm": "yes"})
        assert done.status_code == 303 and paused()
        admin.post("/dashboard/queues/images/resume", data={"csrf": csrf, "confirm": "yes"})
        assert not paused()
        scaled = admin.post("/dashboard/queues/images/scale", data={"csrf": csrf, "limit": "2", "confirm": "yes"})
        assert scaled.status_code == 303
        assert app.sql("SELECT \"limit\" FROM queues WHERE name = 'images'") == [(2,)]
        bad = admin.post("/dashboard/queues/images/scale", data={"csrf": csrf, "limit": "-1", "confirm": "yes"})
        assert bad.status_code == 422
        assert admin.post("/dashboard/queues/nope/pause", data={"csrf": csrf}).status_code == 404
        assert app.sql("SELECT \"limit\" FROM queues WHERE name = 'images'") == [(2,)]


def test_every_page_has_the_strict_csp_and_no_inline_script_or_style(app: LiveApp):
    job = seed_job(app, "tenant-a", "discarded", errors=FAILED)
    with signed_in(app, "tenant-a", "admin jobs:read jobs:write") as client:
        for path in [*PAGES, f"/dashboard/jobs/{job}", "/dashboard/machines", "/dashboard/login"]:
            page = client.get(path)
            assert page.status_code in (200, 303), path
            if page.status_code == 303:
                continue
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp, path
            assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
            assert page.headers["cache-control"] == "no-store"
            assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["referrer-policy"] == "same-origin"
            assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), path
            assert " style=" not in page.text and "<style" not in page.text, path
            assert not re.search(r"\son[a-z]+=", page.text), path  # no inline event handlers
        for asset in ["/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css"]:
            assert client.get(asset).status_code == 200


def test_the_dashboard_is_not_part_of_the_api_document():
    dashboard = [r for r in routes() if getattr(r, "path", "").startswith("/dashboard")]
    assert dashboard and all(not getattr(r, "include_in_schema", False) for r in dashboard)


@pytest.mark.parametrize("path", ["/dashboard/jobs/99999999999999999999", "/dashboard/jobs/abc"])
def test_absurd_job_ids_are_a_404_page(app: LiveApp, path: str):
    with signed_in(app) as client:
        page = client.get(path)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")


def test_the_job_page_links_only_the_completing_claims_outputs_and_previews_them(app: LiveApp):
    job, keys = seed_completed_with_outputs(app, "tenant-a")
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}")
        assert page.status_code == 200
        links = dict(re.findall(r'<a href="([^"]+)" download>([^<]+)</a>', page.text))
        by_name = {name: html.unescape(link) for link, name in links.items()}
        assert set(by_name) == {"thumb.png", "report.pdf"}  # stale.png is from an earlier claim: no link
        assert "stale.png" in page.text and "not from the completing attempt" in page.text
        # The page carries its own links, which do not change, and no presigned URL; each link
        # sends the browser to a URL signed at that moment.
        assert "X-Amz-" not in page.text
        assert all(re.fullmatch(rf"/dashboard/jobs/{job}/outputs/[0-9a-f]{{32}}", link) for link in by_name.values())
        urls = {}
        for name, link in by_name.items():
            sent = client.get(link)
            assert sent.status_code == 303 and sent.headers["cache-control"] == "no-store"
            urls[name] = sent.headers["location"]
            assert keys[name] in urllib.parse.unquote(urls[name]) and "X-Amz-Signature" in urls[name]
            fetched = httpx.get(urls[name], trust_env=False)
            assert fetched.status_code == 200 and fetched.content[:4] in (b"\x89PNG", b"%PDF")
            assert client.head(link).status_code == 303
        # The earlier claim's object (by its key's digest), an index, or not a digest at all: nothing.
        stale = hashlib.sha256(keys["stale.png"].encode()).hexdigest()[:32]
        for wrong in (
            stale,
            "0",
            "1",
            "f" * 32,
            "\u00b2",
            "9" * 300,
            by_name["thumb.png"].rsplit("/", 1)[1].upper(),
        ):
            refused = client.get(f"/dashboard/jobs/{job}/outputs/{urllib.parse.quote(wrong, safe='')}")
            assert refused.status_code == 404 and "location" not in refused.headers, wrong
    assert f'<img class="thumb" src="{by_name["thumb.png"]}?view=preview"' in page.text
    assert f'<iframe class="pdf" src="{by_name["report.pdf"]}?view=preview#page=1"' in page.text
    # The previews load through the page's own links from the storage origin, so the CSP names
    # both for images and frames, only on this page.
    # moto is path style: the bucket's path, not the whole host, which other buckets share.
    source = "{0.scheme}://{0.netloc}/{1}/".format(urllib.parse.urlsplit(urls["thumb.png"]), app.settings.bucket_name)
    assert urls["thumb.png"].startswith(source)
    csp = page.headers["content-security-policy"]
    assert f"img-src 'self' data: {source};" in csp and f"frame-src 'self' {source};" in csp
    with signed_in(app, "tenant-b") as other:
        assert other.get(f"/dashboard/jobs/{job}").status_code == 404
        assert other.get(by_name["thumb.png"]).status_code == 404
    with httpx.Client(base_url=app.url, trust_env=False) as stranger:
        assert stranger.get(by_name["thumb.png"]).status_code == 401  # the sign-in page
    with signed_in(app, None, "admin") as admin:  # an admin sees every tenant's jobs
        assert admin.get(by_name["thumb.png"]).status_code == 303


def test_a_link_shown_for_one_output_never_sends_another(app: LiveApp):
    # A link names its object: when the job's outputs change under an open page, an earlier link
    # answers 404, never another file (and a new object gets a new URL, so no cached image).
    job, _ = seed_completed_with_outputs(app, "tenant-a")
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}")
        links = {name: link for link, name in re.findall(r'<a href="([^"]+)" download>([^<]+)</a>', page.text)}
        claim = uuid.uuid4()
        swapped = [
            {
                "name": "other.pdf",
                "key": claim_prefix("tenant-a", job, claim) + "other.pdf",
                "contentType": "application/pdf",
                "size": 1,
            }
        ]
        app.sql(
            "UPDATE jobs SET claim_token = %s, result = %s WHERE id = %s",
            (str(claim), Jsonb({"outputs": swapped}), job),
        )
        assert client.get(links["thumb.png"]).status_code == 404
        assert client.get(links["report.pdf"]).status_code == 404


@pytest.mark.parametrize(
    "stored", [{"url": "https://evil.example/x.png"}, {"link": "https://evil.example/x.png", "preview": "image"}]
)
def test_what_a_stored_output_says_of_its_own_url_is_never_shown_or_followed(app: LiveApp, stored: dict[str, str]):
    # An output the page does not link (another claim's, another tenant's key) never gets a link,
    # a preview, a redirect or a place in the CSP from what its stored entry holds; nor does the
    # API present a stored URL as if it had signed it. (Adversarial review.)
    job = seed_job(app, "tenant-a", "completed", claim_token=str(uuid.uuid4()))
    outputs = [
        {"name": "x.png", "key": "tenants/tenant-b/x.png", "contentType": "image/png", "size": 1, **stored},
        1,
        None,
    ]
    app.sql("UPDATE jobs SET result = %s WHERE id = %s", (Jsonb({"outputs": outputs}), job))
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}")
        assert page.status_code == 200 and "x.png" in page.text
        assert "evil.example" not in page.text and "evil.example" not in page.headers["content-security-policy"]
        assert not re.search(rf"/dashboard/jobs/{job}/outputs/", page.text)
        digest = hashlib.sha256(b"tenants/tenant-b/x.png").hexdigest()[:32]
        assert client.get(f"/dashboard/jobs/{job}/outputs/{digest}").status_code == 404
    with app.client("tenant-a") as api:
        shown = api.get(f"/jobs/{job}").json()["result"]["outputs"][0]
    assert "url" not in shown and "expiresAt" not in shown


def test_a_handler_cannot_record_the_fields_the_api_presents():
    writer = OutputWriter(lambda: None, tenant_id="t", job_id=1, claim_token=uuid.uuid4())  # type: ignore[arg-type, return-value]
    key = writer.key_for("a.png")
    for field in ("url", "expiresAt"):
        with pytest.raises(ValueError):
            writer.record(name="a.png", key=key, content_type="image/png", size=1, **{field: "https://evil.example/"})
    assert writer.outputs == []


@pytest.mark.parametrize("path", ["/dashboard/queues", "job"])  # the jobs list shows clocks ("3 s ago")
def test_a_live_part_is_versioned_alike_on_the_page_and_in_its_refresh(app: LiveApp, path: str):
    # The refresh script leaves a part alone when its answer's version is the part's own.
    job, _ = seed_completed_with_outputs(app, "tenant-a")
    path = f"/dashboard/jobs/{job}" if path == "job" else path
    with signed_in(app) as client:
        page = client.get(path)
        fragment = client.get(path, headers={"X-Dashboard-Fragment": "1"})
        assert page.status_code == fragment.status_code == 200
        (version,) = re.findall(r'<div data-live data-version="([0-9a-f]+)">', page.text)
        assert fragment.headers["x-dashboard-version"] == version
        seed_job(app, "tenant-a", "available")
        assert client.get(path, headers={"X-Dashboard-Fragment": "1"}).headers["x-dashboard-version"] != version or (
            path.startswith("/dashboard/jobs/")  # one job's page does not show other jobs
        )


def test_the_shared_list_query_filters_by_one_or_several_states(app: LiveApp):
    # list_jobs writes one state as an equality (for the index order); several stay `= ANY`.
    ids = {state: seed_job(app, "tenant-a", state) for state in ("available", "scheduled", "discarded", "completed")}
    with app.client("tenant-a") as client:

        def listed(*states: str) -> set[int]:
            response = client.get("/jobs", params=[("state", s) for s in states])
            assert response.status_code == 200, response.text
            return {job["id"] for job in response.json()["jobs"]}

        assert listed("discarded") == {ids["discarded"]}
        assert listed("available", "completed") == {ids["available"], ids["completed"]}
        assert listed("available,scheduled,discarded") == {ids["available"], ids["scheduled"], ids["discarded"]}
        assert listed() == set(ids.values())
        assert listed("cancelled") == set()


def test_the_job_page_shows_its_callback_batch_and_attempts(app: LiveApp):
    job = seed_job(
        app,
        "tenant-a",
        "discarded",
        errors=FAILED,
        batch_id="batch-1",
        meta={"callbackUrl": "https://hooks.example.com/done"},
    )
    seed_job(app, "tenant-a", "completed", batch_id="batch-1")
    callback = seed_job(
        app,
        "tenant-a",
        "retryable",
        queue="webhooks",
        worker="DeliverWebhook",
        meta={"callbackFor": job},
        errors=[{"attempt": 1, "at": "2026-12-01T10:00:01+00:00", "kind": "http-status", "error": "HTTP 503"}],
    )
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}").text
    assert "https://hooks.example.com/done" in page
    assert f'href="/dashboard/jobs/{callback}">Delivery job {callback}</a>' in page and "HTTP 503" in page
    assert "1 completed, 1 discarded" in page  # the batch, per state
    assert "machine machine-seeded" in page and "bad-input" in page and "this can never work" in page


def test_the_job_page_shows_the_handlers_last_progress_report(app: LiveApp):
    job = seed_job(app, "tenant-a", "executing")
    app.sql(
        "UPDATE jobs SET progress = %s WHERE id = %s",
        ('{"done": 40, "total": 100, "message": "rows <written>"}', job),
    )
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}").text
    assert "40 of 100 · rows &lt;written&gt;" in page  # escaped, like everything a handler wrote


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/dashboard", "/dashboard\r\nX-Evil: 1"])
def test_sign_in_only_ever_sends_you_to_a_dashboard_page(app: LiveApp, target: str):
    with httpx.Client(base_url=app.url, trust_env=False, headers={"Origin": app.url}) as client:
        form = client.get("/dashboard/login")
        answer = client.post(
            "/dashboard/login", data={"csrf": csrf_of(form.text), "token": app.token("tenant-a"), "next": target}
        )
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"
    assert "x-evil" not in answer.headers


def test_the_live_event_stream_needs_a_session_and_carries_only_the_tenants_own_jobs(app: LiveApp):
    from tests.functions.ingress.sse import SseStream

    with httpx.Client(base_url=app.url, trust_env=False) as anonymous:
        assert anonymous.get("/dashboard/events").status_code == 401
    with signed_in(app, "tenant-a") as client:
        cookie = f"cp_dashboard={client.cookies['cp_dashboard']}"
        # A tenant's ?tenant= names nobody else: it still gets only its own jobs' events.
        events = SseStream(app.url, "/dashboard/events?tenant=tenant-b", "unused", {"Cookie": cookie}).start()
        try:
            assert events.status == 200, getattr(events, "body", None)
            theirs = seed_job(app, "tenant-b", "available")
            ours = seed_job(app, "tenant-a", "available")
            event = events.next()
            assert event.data["jobId"] == ours and event.data["tenantId"] == "tenant-a", event
            assert all(e.data.get("jobId") != theirs for e in events.drain())
        finally:
            events.close()


def test_a_stopping_instance_tells_the_dashboards_event_source_to_reconnect(app: LiveApp):
    """A browser's EventSource gives up for good on any answer but a 200 event stream (a 503
    left open pages without live updates until reloaded): a stopping instance answers an empty
    stream with a `retry`, so the browser reconnects, to another instance. (Adversarial review.)"""
    with signed_in(app, "tenant-a") as client:
        app.server.config.app.state.begin_shutdown()  # type: ignore[union-attr]  # what SIGTERM does
        wait_until("the hub to close", lambda: app.server.config.app.state.event_hub.closing)  # type: ignore[union-attr]
        answer = client.get("/dashboard/events", timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        assert answer.text == "retry: 2000\n\n"
        assert client.get("/dashboard").status_code == 200  # pages still render meanwhile


@pytest.mark.parametrize("limit", ["per tenant", "per instance"])
def test_a_refused_dashboard_event_source_is_told_to_reconnect_later(open_app: OpenApp, limit: str):
    """The tenant's (or the instance's) streams are all open. The page would keep polling, but a
    browser's EventSource given a 429 or 503 gives up for good, so the page would have no live
    updates until reloaded: it gets an empty 200 stream with a long `retry` instead."""
    setting = "events_max_subscribers_per_tenant" if limit == "per tenant" else "events_max_subscribers"
    with open_app(**{setting: 1}) as app, signed_in(app, "tenant-a") as client:
        with client.stream("GET", "/dashboard/events", timeout=30) as first:
            assert first.status_code == 200
            refused = client.get("/dashboard/events", timeout=30)
            assert refused.status_code == 200 and refused.headers["content-type"].startswith("text/event-stream")
            assert refused.text == "retry: 15000\n\n"
        # Once the stream closed, the next connection gets a live one again.
        hub = app.server.config.app.state.event_hub  # type: ignore[union-attr]
        wait_until("the stream to be closed", lambda: hub.subscriber_count == 0)
        with client.stream("GET", "/dashboard/events", timeout=30) as again:
            assert again.status_code == 200
            wait_until("a stream to be open", lambda: hub.subscriber_count == 1)


def test_a_preview_is_served_as_what_the_page_shows_and_a_download_is_saved(app: LiveApp):
    # The store used to answer with the type the object was stored under: HTML recorded as a PDF
    # ran in the page's preview frame, and a download link opened HTML in the tab (adversarial
    # review). The presigned URL now names the type of a preview and the disposition of each.
    job = seed_completed_with_one_output(app, "report.pdf", "application/pdf", "text/html")
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}")
        (link,) = re.findall(r'<a href="([^"]+)" download>report\.pdf</a>', page.text)
        assert f'<iframe class="pdf" src="{link}?view=preview#page=1"' in page.text
        preview = httpx.get(client.get(link + "?view=preview").headers["location"], trust_env=False)
        saved = httpx.get(client.get(link).headers["location"], trust_env=False)
    assert preview.headers["content-type"] == "application/pdf" and preview.headers["content-disposition"] == "inline"
    assert saved.headers["content-disposition"].startswith('attachment; filename="report.pdf"')
    assert preview.content == saved.content == HOSTILE_HTML


@pytest.mark.parametrize("name", ["отчёт 1.png", 'a"b;c.png', "100%.png"])
def test_a_download_keeps_its_name_whatever_its_characters(app: LiveApp, name: str):
    job = seed_completed_with_one_output(app, name, "image/png", "image/png", b"\x89PNG-bytes")
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}")
        (link,) = re.findall(r'<a href="([^"]+)" download>', page.text)
        saved = httpx.get(client.get(html.unescape(link)).headers["location"], trust_env=False)
    assert saved.content == b"\x89PNG-bytes"
    disposition = saved.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="') and disposition.count('"') == 2
    assert urllib.parse.unquote(disposition.split("filename*=UTF-8''", 1)[1]) == name


def test_a_job_page_needs_no_storage_credentials(open_app: OpenApp):
    # The CSP's storage source comes from the client's settings, not from signing a URL: an
    # instance without storage credentials still shows its jobs (adversarial review: 500).
    with open_app(aws_access_key_id=None, aws_secret_access_key=None) as app:
        job = seed_job(app, "tenant-a", "available")
        with signed_in(app) as client:
            page = client.get(f"/dashboard/jobs/{job}")
    assert page.status_code == 200, page.text[:300]


def test_an_image_recorded_with_parameters_or_capitals_is_previewed_as_an_image(app: LiveApp):
    job = seed_completed_with_one_output(app, "a.png", "image/PNG; charset=binary", "text/html")
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}")
        (link,) = re.findall(r'<img class="thumb" src="([^"]+)"', page.text)
        preview = httpx.get(client.get(html.unescape(link)).headers["location"], trust_env=False)
    assert preview.headers["content-type"] == "image/png"


def test_a_long_name_keeps_its_download_url_short_enough(app: LiveApp):
    name = "報告" * 150 + ".png"  # 302 characters, 906 bytes of UTF-8
    job = seed_completed_with_one_output(app, name, "image/png", "image/png", b"\x89PNG-bytes")
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}")
        (link,) = re.findall(r'<a href="([^"]+)" download>', page.text)
        location = client.get(html.unescape(link)).headers["location"]
    assert len(location) < 6000
    saved = httpx.get(location, trust_env=False)
    assert saved.content == b"\x89PNG-bytes" and saved.headers["content-disposition"].startswith("attachment;")


def test_an_unsafe_key_under_the_completing_prefix_gets_no_link_anywhere(app: LiveApp):
    # One rule says which outputs are the completing claim's, for the API and the dashboard alike:
    # under its prefix and a plain key (no "..", "//", backslash or control character).
    claim = uuid.uuid4()
    job = seed_job(app, "tenant-a", "completed", claim_token=str(claim))
    bad = claim_prefix("tenant-a", job, claim) + "../x.png"
    outputs = [{"name": "x.png", "key": bad, "contentType": "image/png", "size": 1}]
    app.sql("UPDATE jobs SET result = %s WHERE id = %s", (Jsonb({"outputs": outputs}), job))
    with app.client("tenant-a") as api:
        answer = api.get(f"/jobs/{job}")
    assert answer.status_code == 200, answer.text
    assert "url" not in answer.json()["result"]["outputs"][0]
    with signed_in(app) as client:
        page = client.get(f"/dashboard/jobs/{job}")
    assert page.status_code == 200 and "/outputs/" not in page.text


def test_an_output_link_whose_url_cannot_be_signed_is_a_503_page(app: LiveApp, monkeypatch: pytest.MonkeyPatch):
    # Storage credentials missing or refused while signing: a 503 the dashboard shows as a page
    # (and the API as problem+json), never an unhandled 500 (attack on this change).
    job, _ = seed_completed_with_outputs(app, "tenant-a")
    with signed_in(app) as client:
        links = {
            n: link
            for link, n in re.findall(
                r'<a href="([^"]+)" download>([^<]+)</a>', client.get(f"/dashboard/jobs/{job}").text
            )
        }

        def refuse(*args: object, **kwargs: object) -> str:
            raise NoCredentialsError()

        monkeypatch.setattr(RequestSigner, "generate_presigned_url", refuse)  # the app runs in this process
        answer = client.get(links["thumb.png"] + "?view=preview")
        assert answer.status_code == 503 and answer.headers["content-type"].startswith("text/html")
        assert "retry-after" in answer.headers and "location" not in answer.headers
    with app.client("tenant-a") as api:
        refused = api.get(f"/jobs/{job}")
    assert refused.status_code == 503 and refused.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("result", [["not", "an", "object"], "a string", 7])
def test_a_result_that_is_not_an_object_is_shown_not_a_500(app: LiveApp, result: object):
    # Only a direct database write makes one (machines record objects); still no 500 anywhere.
    job = seed_job(app, "tenant-a", "completed", claim_token=str(uuid.uuid4()))
    app.sql("UPDATE jobs SET result = %s WHERE id = %s", (Jsonb(result), job))
    with signed_in(app) as client:
        assert client.get(f"/dashboard/jobs/{job}/outputs/{'0' * 32}").status_code == 404
        assert client.get(f"/dashboard/jobs/{job}").status_code == 200
    with app.client("tenant-a") as api:
        assert api.get(f"/jobs/{job}").status_code == 200
