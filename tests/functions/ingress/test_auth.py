"""Who may call what: every way a bearer token can be wrong is a 401, a missing scope a 403,
another tenant's job a 404, and only an admin may act for another tenant."""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Iterator

import httpx
import jwt
import pytest

from tests.support.live import LiveApp

from .conftest import OpenApp, assert_problem

SECRET = "test-secret-test-secret-test-secret"  # tests/conftest.py make_settings

# Every authenticated route, with a request that would succeed with the right token.
ROUTES = [
    ("POST", "/jobs/default", {"function": "echo", "args": {}}, "jobs:write"),
    ("GET", "/jobs", None, "jobs:read"),
    ("GET", "/jobs/1", None, "jobs:read"),
    ("DELETE", "/jobs?queue=default", None, "jobs:write"),
    ("POST", "/jobs/1/retry", None, "jobs:write"),
    ("POST", "/uploads", {"filename": "a.png", "contentType": "image/png", "size": 10}, "jobs:write"),
    ("GET", "/admin/queues", None, "admin"),
    ("POST", "/admin/queues/default/pause", None, "admin"),
    ("POST", "/admin/queues/default/scale", {"limit": 3}, "admin"),
    ("POST", "/admin/jobs/prune", None, "admin"),
    ("GET", "/admin/machines", None, "admin"),
]


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict:
    claims: dict = {"sub": "test", "tenant": "tenant-1", "scope": "jobs:write jobs:read admin", "exp": time.time() + 60}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _bad_tokens() -> dict[str, str]:
    """Tokens that must all be refused, by what is wrong with them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns that the test secret is short for HS512
        hs512 = jwt.encode(_claims(exp=int(time.time()) + 3600), SECRET, algorithm="HS512")
    return {
        "HS512 (algorithm not pinned)": hs512,
        "expired": jwt.encode(_claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(exp=int(time.time()) + 3600))}.",
        "alg none with signature": f"{_b64({'alg': 'none'})}.{_b64(_claims(exp=int(time.time()) + 3600))}.c2ln",
        "wrong key": jwt.encode(
            _claims(exp=int(time.time()) + 3600), "another-secret-another-secret-32b", algorithm="HS256"
        ),
        "no exp": jwt.encode(_claims(exp=None), SECRET, algorithm="HS256"),
        "no sub": jwt.encode(_claims(sub=None, exp=int(time.time()) + 3600), SECRET, algorithm="HS256"),
        "no tenant without admin": jwt.encode(
            _claims(tenant=None, scope="jobs:read jobs:write", exp=int(time.time()) + 3600), SECRET, algorithm="HS256"
        ),
        "bad tenant": jwt.encode(_claims(tenant="a/b", exp=int(time.time()) + 3600), SECRET, algorithm="HS256"),
        "scope not a string": jwt.encode(
            _claims(scope=["admin"], exp=int(time.time()) + 3600), SECRET, algorithm="HS256"
        ),
        "garbage": "not.a.token",
        "tampered payload": _tampered(),
    }


def _tampered() -> str:
    """A valid token whose payload was edited to another tenant afterwards."""
    good = jwt.encode(_claims(scope="jobs:read", exp=int(time.time()) + 3600), SECRET, algorithm="HS256")
    header, _, signature = good.split(".")
    return f"{header}.{_b64(_claims(tenant='tenant-2', scope='admin', exp=int(time.time()) + 3600))}.{signature}"


_clients: dict[str, httpx.Client] = {}


def _call(app: LiveApp, method: str, path: str, body: dict | None, headers: dict[str, str]) -> httpx.Response:
    """One request with exactly `headers` (a client per app, so connections are reused)."""
    client = _clients.get(app.url)
    if client is None:
        client = _clients[app.url] = httpx.Client(base_url=app.url, timeout=30, trust_env=False)
    return client.request(method, path, json=body, headers=headers)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    for client in _clients.values():
        client.close()
    _clients.clear()


def test_every_route_refuses_a_missing_or_bad_token_with_401(app: LiveApp):
    tokens = _bad_tokens()
    for method, path, body, _ in ROUTES:
        for header in [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}]:
            response = _call(app, method, path, body, header)
            assert response.status_code == 401, (method, path, header, response.text)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
        for name, token in tokens.items():
            response = _call(app, method, path, body, {"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (method, path, name, response.text)
            assert_problem(response, 401)
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]
    assert app.sql("SELECT paused, \"limit\" FROM queues WHERE name = 'default'") == [(False, 10)]


def test_every_route_needs_its_scope(app: LiveApp):
    for method, path, body, scope in ROUTES:
        others = [s for s in ("jobs:write", "jobs:read") if s != scope]
        token = app.token("tenant-1", " ".join(others))
        response = _call(app, method, path, body, {"Authorization": f"Bearer {token}"})
        assert response.status_code == 403, (method, path, response.text)
        assert scope in assert_problem(response, 403)["detail"]
        # The same request with the scope (or admin, which holds every scope) is not refused.
        for granted in (scope, "admin"):
            response = _call(app, method, path, body, {"Authorization": f"Bearer {app.token('tenant-1', granted)}"})
            assert response.status_code not in (401, 403), (method, path, granted, response.text)


def test_the_expired_token_says_so(app: LiveApp):
    response = _call(app, "GET", "/jobs", None, {"Authorization": f"Bearer {app.token(ttl=-5)}"})
    assert assert_problem(response, 401)["detail"] == "token expired"


def test_audience_and_issuer_are_checked_when_configured(open_app: OpenApp):
    with open_app(jwt_audience="content-processor", jwt_issuer="https://auth.example") as app:
        good = jwt.encode(
            _claims(aud="content-processor", iss="https://auth.example", exp=int(time.time()) + 60),
            SECRET,
            algorithm="HS256",
        )
        assert _call(app, "GET", "/jobs", None, {"Authorization": f"Bearer {good}"}).status_code == 200
        assert _call(app, "GET", "/jobs", None, {"Authorization": f"Bearer {app.token()}"}).status_code == 200
        for claims in (
            _claims(exp=int(time.time()) + 60),
            _claims(aud="someone-else", iss="https://auth.example", exp=int(time.time()) + 60),
            _claims(aud="content-processor", exp=int(time.time()) + 60),
            _claims(aud="content-processor", iss="https://evil.example", exp=int(time.time()) + 60),
        ):
            token = jwt.encode(claims, SECRET, algorithm="HS256")
            assert_problem(_call(app, "GET", "/jobs", None, {"Authorization": f"Bearer {token}"}), 401)


def test_another_tenants_job_is_404_on_get_retry_and_untouched_by_delete(app: LiveApp):
    with app.client("tenant-a") as a, app.client("tenant-b") as b:
        job = a.post("/jobs/default", json={"function": "echo", "args": {}}).json()
        missing = b.get("/jobs/999999999")
        other = b.get(f"/jobs/{job['id']}")
        assert_problem(other, 404)
        assert other.json()["detail"] == missing.json()["detail"]  # indistinguishable from a missing id
        assert_problem(b.post(f"/jobs/{job['id']}/retry"), 404)
        assert b.request("DELETE", "/jobs", params={"ids": job["id"]}).json() == {"cancelled": 0}
        assert b.request("DELETE", "/jobs", json={"ids": [job["id"]]}).json() == {"cancelled": 0}
        assert a.get(f"/jobs/{job['id']}").json()["state"] == "available"


def test_a_tenant_may_name_itself_but_not_another_tenant(app: LiveApp):
    with app.client("tenant-a") as a:
        assert a.post("/jobs/default", json={"function": "echo", "tenantId": "tenant-a"}).status_code == 201
        refused = a.post("/jobs/default", json={"function": "echo", "tenantId": "tenant-b"})
        assert "tenantId" in assert_problem(refused, 403)["detail"]
        upload = a.post(
            "/uploads", json={"filename": "a.png", "contentType": "image/png", "size": 10, "tenantId": "tenant-b"}
        )
        assert_problem(upload, 403)
    assert app.sql("SELECT tenant_id FROM jobs") == [("tenant-a",)]


def test_an_admin_acts_for_the_tenant_it_names_and_reads_every_tenant(app: LiveApp):
    with app.admin() as admin, app.client("tenant-b") as b:
        job = admin.post("/jobs/default", json={"function": "echo", "tenantId": "tenant-b"})
        assert job.status_code == 201 and job.json()["tenantId"] == "tenant-b"
        assert b.get(f"/jobs/{job.json()['id']}").status_code == 200  # the tenant sees it as its own
        nameless = admin.post("/jobs/default", json={"function": "echo"})
        assert assert_problem(nameless, 422)["errors"][0]["path"] == "tenantId"
        own = b.post("/jobs/default", json={"function": "echo"}).json()
        assert admin.get(f"/jobs/{own['id']}").status_code == 200
    with app.client("tenant-a", "admin") as tenant_admin:
        created = tenant_admin.post("/jobs/default", json={"function": "echo"})
        assert created.json()["tenantId"] == "tenant-a"  # its own tenant when it names none
