"""Rate limit per tenant, body size limit (declared and chunked), CORS, security headers."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx

from shared.tokens import mint_token
from tests.support.live import LiveApp

from .conftest import OpenApp, assert_problem

STATIC_FILE = "dashboard.css"  # any file the dashboard serves from /dashboard/static


def test_a_tenant_over_its_rate_limit_gets_429_and_others_do_not(open_app: OpenApp):
    with open_app(rate_limit_per_minute=5) as app, app.client("tenant-a") as a, app.client("tenant-b") as b:
        remaining = []
        for _ in range(5):
            response = a.get("/jobs")
            assert response.status_code == 200
            assert response.headers["ratelimit-limit"] == "5"
            assert 1 <= int(response.headers["ratelimit-reset"]) <= 60
            remaining.append(int(response.headers["ratelimit-remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        refused = a.post("/jobs/default", json={"function": "echo", "args": {}})
        body = assert_problem(refused, 429)
        assert "5 requests" in body["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-policy"] == "5;w=60"
        assert app.sql("SELECT count(*) FROM jobs") == [(0,)]  # refused before any work
        # Another tenant, and an admin token without a tenant, have budgets of their own.
        assert b.get("/jobs").status_code == 200
        with app.admin() as admin:
            assert admin.get("/admin/queues").status_code == 200
        # Requests without a valid token are not counted against anyone (they are 401 anyway).
        with httpx.Client(base_url=app.url, trust_env=False) as anonymous:
            assert anonymous.get("/health").status_code == 200
            assert "ratelimit-limit" not in anonymous.get("/health").headers


def _raw_request(app: LiveApp, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send `head` and `body_parts` over a plain socket, never finishing the body; read the answer."""
    parts = urlsplit(app.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        # The body is unfinished: only a server that refuses without reading it all answers now.
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _head(app: LiveApp, extra: str) -> bytes:
    token = app.token()
    return (
        f"POST /jobs/default HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def test_a_declared_oversized_body_is_413_before_it_is_sent(open_app: OpenApp):
    with open_app(max_body_bytes=1024) as app:
        answer = _raw_request(app, _head(app, "Content-Length: 10000000\r\n"), [])
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"application/problem+json" in answer
        assert app.sql("SELECT count(*) FROM jobs") == [(0,)]


def test_a_chunked_body_is_413_as_soon_as_it_passes_the_limit(open_app: OpenApp):
    with open_app(max_body_bytes=1024) as app:
        chunk = b"x" * 600
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        # Three chunks (1800 bytes) pass the limit; the terminating zero-size chunk never comes.
        answer = _raw_request(app, _head(app, "Transfer-Encoding: chunked\r\n"), [frame, frame, frame])
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert app.sql("SELECT count(*) FROM jobs") == [(0,)]


def test_bodies_under_the_limit_pass_and_bulk_email_has_its_own_larger_limit(open_app: OpenApp):
    with open_app(max_body_bytes=1024) as app, app.client() as client:
        padding = "p" * 900
        assert client.post("/jobs/default", json={"function": "echo", "args": {"p": padding}}).status_code == 201
        too_big = client.post("/jobs/default", json={"function": "echo", "args": {"p": padding * 2}})
        assert_problem(too_big, 413)
        bulk = {
            "subject": "Hello",
            "text": "Hi {{ name }}",
            "recipients": [{"to": f"user{i}@example.com", "data": {"name": padding[:20]}} for i in range(40)],
        }
        assert client.post("/jobs/emails/bulk", json=bulk).status_code == 201


def test_cors_answers_only_configured_origins(open_app: OpenApp):
    allowed, other = "https://app.example", "https://evil.example"
    with open_app(cors_origins=[allowed]) as app, app.client() as client:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "idempotency-key"}
        ok = client.options("/jobs/default", headers={"Origin": allowed, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == allowed
        assert "idempotency-key" in ok.headers["access-control-allow-headers"].lower()
        refused = client.options("/jobs/default", headers={"Origin": other, **preflight})
        assert "access-control-allow-origin" not in refused.headers
        simple = client.get("/jobs", headers={"Origin": allowed})
        assert simple.headers["access-control-allow-origin"] == allowed
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        assert "access-control-allow-origin" not in client.get("/jobs", headers={"Origin": other}).headers


def test_no_cors_at_all_without_configured_origins(app: LiveApp):
    with app.client() as client:
        response = client.get("/jobs", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers
        preflight = client.options(
            "/jobs/default", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_security_headers_on_every_kind_of_response(open_app: OpenApp):
    with open_app(rate_limit_per_minute=3) as app, app.client() as client:
        responses = {
            "200 json": client.get("/jobs"),
            "404 problem": client.get("/no/such/route"),
            "405 problem": client.put("/jobs"),
            "401 problem": client.get("/jobs", headers={"Authorization": "Bearer nope"}),
            "health": client.get("/health"),
            "swagger page": client.get("/documentation"),
            "swagger asset": client.get("/documentation/static/swagger-ui.css"),
            "openapi": client.get("/documentation/json"),
            "metrics": client.get("/metrics"),
        }
        responses["429 problem"] = client.get("/jobs")  # the 4th request with a valid token
        assert responses["429 problem"].status_code == 429
        for name, response in responses.items():
            headers = response.headers
            assert headers["x-content-type-options"] == "nosniff", name
            assert headers["x-frame-options"] == "DENY", name
            assert headers["referrer-policy"] == "no-referrer", name
            assert "default-src 'none'" in headers["content-security-policy"], name
            assert "frame-ancestors 'none'" in headers["content-security-policy"], name
            assert "strict-transport-security" not in headers, name  # plain HTTP: no HSTS
            assert headers["x-request-id"], name


def test_hsts_only_behind_tls(app: LiveApp):
    with httpx.Client(base_url=app.url, trust_env=False) as client:
        behind_tls = client.get("/health", headers={"X-Forwarded-Proto": "https"})
        assert behind_tls.headers["strict-transport-security"].startswith("max-age=")
        assert "strict-transport-security" not in client.get("/health", headers={"X-Forwarded-Proto": "http"}).headers


def test_request_ids_are_echoed_or_made_up(app: LiveApp):
    with app.client() as client:
        assert client.get("/jobs", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
        made_up = client.get("/jobs", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
        assert made_up != "bad id\twith spaces" and len(made_up) == 32
        job = client.post("/jobs/default", json={"function": "echo"}, headers={"X-Request-ID": "req-7"}).json()
        assert job["meta"]["requestId"] == "req-7"


def test_dashboard_requests_are_rate_limited_per_tenant(open_app: OpenApp):
    """The dashboard authenticates with the token kept in its session cookie: its pages and
    actions are limited per tenant like bearer requests (they were not counted at all, so a
    session was a way around the limit), beside the tenant's API budget: a dashboard
    refreshing itself does not eat it. Static files, signing out and the live stream are free."""
    from tests.support.dashboard import csrf_of, signed_in

    with open_app(rate_limit_per_minute=3) as app, signed_in(app, "tenant-a") as browser:
        for _ in range(3):
            page = browser.get("/dashboard/jobs")
            assert page.status_code == 200
        csrf = csrf_of(page.text)
        assert page.headers["ratelimit-remaining"] == "0"
        assert browser.get(f"/dashboard/static/{STATIC_FILE}").status_code == 200  # not counted
        refused = browser.get("/dashboard/jobs")
        assert refused.status_code == 429 and refused.headers["content-type"].startswith("text/html")
        assert "3 requests" in refused.text and 1 <= int(refused.headers["retry-after"]) <= 60
        # Counted is what the dashboard signs in with: a bearer header beside the cookie, or a
        # bad cookie in an earlier Cookie header, changes nothing (review: both made pages free).
        session = browser.cookies["cp_dashboard"]
        with httpx.Client(base_url=app.url, trust_env=False) as raw:
            cookie = f"cp_dashboard={session}"
            assert (
                raw.get("/dashboard/jobs", headers={"Authorization": "Bearer x", "Cookie": cookie}).status_code == 429
            )
            two_headers = raw.build_request("GET", "/dashboard/jobs")
            two_headers.headers = httpx.Headers(
                [("host", two_headers.url.netloc.decode()), ("cookie", "cp_dashboard=x"), ("cookie", cookie)]
            )
            assert raw.send(two_headers).status_code == 429
            # The same token spelled with base64 padding verifies alike: same user, same budget.
            padded = raw.get("/dashboard/jobs", headers={"Cookie": f"{cookie}="})
            assert padded.status_code == 429, "a second spelling of the token had a budget of its own"
            assert padded.headers["cache-control"] == "no-store"
            # Another user of the same tenant shares the budget (review: one budget per subject
            # gave a tenant with many tokens many budgets).
            colleague = mint_token(app.settings, subject="colleague", tenant_id="tenant-a", scopes=["jobs:read"])
            assert raw.get("/dashboard/jobs", headers={"Cookie": f"cp_dashboard={colleague}"}).status_code == 429
        with app.client("tenant-a") as api:
            assert api.get("/jobs").headers["ratelimit-remaining"] == "2"  # the API budget is untouched
        with signed_in(app, "tenant-b") as other:
            assert other.get("/dashboard/jobs").headers["ratelimit-remaining"] == "2"  # per tenant
        out = browser.post("/dashboard/logout", data={"csrf": csrf})  # signing out still works
        assert out.status_code == 200 and "You are signed out" in out.text
