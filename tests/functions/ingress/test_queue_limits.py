"""PUT/GET /admin/queues/{name}/limits and the per-tenant figures of a queue, over real HTTP.

The rules themselves are held by the claim (tests/shared/db/test_fair_claims.py); here: they are
validated, persisted, survive a restart, and the admin API and /metrics show them at work.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.live import LiveApp

from .conftest import OpenApp, assert_problem

RULES: dict[str, Any] = {
    "fair": True,
    "tenantLimit": 3,
    "rateLimit": {"limit": 14, "periodSeconds": 1.0, "key": "function"},
    "tenants": {"acme": {"limit": 10, "weight": 2}, "slow-co": {"limit": 0, "weight": None}},
}


def test_rules_are_persisted_and_survive_a_restart(open_app: OpenApp):
    with open_app() as app, app.admin() as admin:
        answer = admin.put("/admin/queues/emails/limits", json=RULES)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "fair": True,
            "tenantLimit": 3,
            "rateLimit": {"limit": 14, "periodSeconds": 1.0, "key": "function", "derivedFrom": "domain:from"},
            "tenants": {"acme": {"limit": 10, "weight": 2}, "slow-co": {"limit": 0, "weight": None}},
        }
    with open_app() as app, app.admin() as admin:  # a new process on the same database
        assert admin.get("/admin/queues/emails/limits").json() == answer.json()
        assert admin.get("/admin/queues/emails").json()["limits"] == answer.json()
        # PUT replaces: what is left out takes its default, tenants left out lose their rules.
        replaced = admin.put("/admin/queues/emails/limits", json={"fair": False, "tenants": {"acme": {"weight": 3}}})
        assert replaced.json() == {
            "fair": False,
            "tenantLimit": None,
            "rateLimit": None,
            "tenants": {"acme": {"limit": None, "weight": 3}},
        }
    assert app.sql("SELECT fair, tenant_limit, rate_limit FROM queues WHERE name = 'emails'") == [(False, None, None)]


def test_bad_rules_are_refused_and_change_nothing(app: LiveApp):
    with app.admin() as admin:
        assert admin.put("/admin/queues/webhooks/limits", json=RULES).status_code == 200
        before = admin.get("/admin/queues/webhooks/limits").json()
        bad: list[tuple[dict[str, Any], str]] = [
            ({"tenantLimit": 1001}, "tenantLimit"),
            ({"tenantLimit": False}, "tenantLimit"),
            ({"fair": "yes"}, "fair"),
            ({"rateLimit": {"limit": 0}}, "rateLimit.limit"),
            ({"rateLimit": {"limit": 5, "periodSeconds": 0}}, "rateLimit.periodSeconds"),
            ({"rateLimit": {"limit": 5, "key": "host"}}, "rateLimit.key"),
            ({"tenants": {"acme": {"weight": 0}}}, "tenants.acme.weight"),
            ({"tenants": {"bad tenant!": {"limit": 1}}}, "tenants"),
            ({"burst": 3}, "burst"),
        ]
        for body, path in bad:
            problem = assert_problem(admin.put("/admin/queues/webhooks/limits", json=body), 422)
            assert any(e["path"].startswith(path) for e in problem["errors"]), (body, problem)
        # `images` derives no rate key from its jobs: keying its limit by function is refused.
        problem = assert_problem(
            admin.put("/admin/queues/images/limits", json={"rateLimit": {"limit": 5, "key": "function"}}), 422
        )
        assert problem["errors"][0]["path"] == "rateLimit.key"
        assert_problem(admin.put("/admin/queues/nope/limits", json={}), 404)
        assert_problem(admin.get("/admin/queues/nope/limits"), 404)
        assert admin.get("/admin/queues/webhooks/limits").json() == before
    with app.client() as client:
        assert_problem(client.put("/admin/queues/webhooks/limits", json={}), 403)


def _post_echo(app: LiveApp, tenant: str, count: int) -> None:
    with app.client(tenant=tenant) as client:
        for _ in range(count):
            assert client.post("/jobs/default", json={"function": "echo", "args": {}}).status_code == 201


def _metrics(app: LiveApp) -> dict[tuple[str, str, str], float]:
    """queue_tenant_* samples by (name, queue, tenant)."""
    with httpx.Client(base_url=app.url, trust_env=False) as client:
        text = client.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line.startswith("queue_tenant_"):
            name, rest = line.split("{", 1)
            labels, value = rest.rsplit("} ", 1)
            parsed = dict(part.split("=", 1) for part in labels.split(","))
            samples[(name, parsed["queue"].strip('"'), parsed["tenant"].strip('"'))] = float(value)
    return samples


def test_per_tenant_depth_running_and_throttled_show_in_admin_and_metrics(app: LiveApp):
    with app.admin() as admin:
        assert admin.put("/admin/queues/default/limits", json={"tenants": {"held": {"limit": 0}}}).status_code == 200
    _post_echo(app, "busy", 3)
    _post_echo(app, "held", 2)
    app.sql(
        "UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'm', attempted_at = now()"
        " WHERE id = (SELECT min(id) FROM jobs WHERE tenant_id = 'busy')"
    )
    # Many small tenants: the listing and the labels stay bounded, the rest is summed as `other`.
    app.sql(
        "INSERT INTO jobs (queue, worker, tenant_id) SELECT 'default', 'echo', 'small-' || lpad(n::text, 2, '0')"
        " FROM generate_series(1, 30) n"
    )
    with app.admin() as admin:
        queue = admin.get("/admin/queues/default").json()
    tenants = {t["tenantId"]: t for t in queue["tenants"]}
    assert tenants["busy"] == {
        "tenantId": "busy",
        "available": 2,
        "running": 1,
        "waiting": 0,
        "throttled": 0,
        "limit": None,
        "weight": 1,
    }
    assert tenants["held"] == {
        "tenantId": "held",
        "available": 2,
        "running": 0,
        "waiting": 0,
        "throttled": 2,
        "limit": 0,
        "weight": 1,
    }
    assert len(queue["tenants"]) == 21 and queue["tenants"][-1]["tenantId"] == "other"
    assert tenants["other"]["available"] == 30 - 18  # 20 listed: busy, held and 18 small tenants
    samples = _metrics(app)
    assert samples[("queue_tenant_running", "default", "busy")] == 1
    assert samples[("queue_tenant_throttled", "default", "held")] == 2
    assert samples[("queue_tenant_available", "default", "other")] == 30 - 8
    assert len({tenant for (name, queue_name, tenant) in samples if queue_name == "default"}) == 11
