"""GET /metrics: queue gauges, job outcomes and durations, machines, HTTP and telemetry figures."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.live import LiveApp

from .conftest import OpenApp, assert_problem

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(app: LiveApp, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=app.url, trust_env=False) as client:
        response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_queue_gauges_follow_the_queues_table(app: LiveApp):
    with app.admin() as admin, app.client() as client:
        admin.post("/admin/queues/default/pause")
        admin.post("/admin/queues/images/scale", json={"limit": 0})
        for _ in range(2):
            client.post("/jobs/default", json={"function": "echo"})
        client.post("/jobs/default", json={"function": "echo", "options": {"scheduleIn": 3600}})
    app.sql("UPDATE jobs SET scheduled_at = now() - interval '30 seconds' WHERE state = 'available'")
    samples = scrape(app)
    assert value(samples, "queue_limit", queue="default") == 10
    assert value(samples, "queue_state", queue="default") == 2  # paused
    assert value(samples, "queue_state", queue="images") == 0  # stopped
    assert value(samples, "queue_state", queue="emails") == 1  # running
    assert value(samples, "queue_available", queue="default") == 2
    assert value(samples, "queue_scheduled", queue="default") == 1
    assert value(samples, "queue_depth", queue="default") == 3
    assert value(samples, "queue_running", queue="default") == 0
    assert 29 <= (value(samples, "queue_oldest_available_age_seconds", queue="default") or 0) < 3600


def test_http_metrics_use_route_templates_and_events_are_counted(app: LiveApp):
    with app.client() as client, app.admin() as admin:
        job = client.post("/jobs/default", json={"function": "echo"}).json()
        client.get(f"/jobs/{job['id']}")
        client.get("/jobs/424242")
        client.get("/no/such/thing")
        admin.post("/admin/queues/webhooks/pause")
        admin.post("/admin/queues/webhooks/resume")
        unique = {"function": "echo", "options": {"unique": {"period": 60}}}
        client.post("/jobs/default", json=unique)
        client.post("/jobs/default", json=unique)
    samples = scrape(app)
    assert value(samples, "http_requests_total", method="GET", route="/jobs/{job_id}", status="200") == 1
    assert value(samples, "http_requests_total", method="GET", route="/jobs/{job_id}", status="404") == 1
    assert value(samples, "http_requests_total", method="POST", route="/jobs/{queue}", status="201") == 2
    assert value(samples, "http_requests_total", method="POST", route="/jobs/{queue}", status="200") == 1
    assert value(samples, "http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not any(str(job["id"]) in dict(labels).get("route", "") for _, labels in samples)
    latency = value(samples, "http_request_duration_seconds_count", method="GET", route="/jobs/{job_id}")
    assert latency == 2
    assert value(samples, "telemetry_events_total", event="queue:pause", queue="webhooks") == 1
    assert value(samples, "telemetry_events_total", event="queue:resume", queue="webhooks") == 1
    assert value(samples, "telemetry_events_total", event="job:unique_conflict", queue="default") == 1


def test_job_outcomes_durations_and_machines_come_from_the_database(open_app: OpenApp, tmp_path: Path):
    with open_app(
        run_dispatcher=True,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
    ) as app:
        with app.client() as client:
            ok = client.post("/jobs/default", json={"function": "sleep", "args": {"seconds": 0.3}}).json()
            bad = client.post("/jobs/default", json={"function": "permanent_fail"}).json()
        app.wait_for_job(ok["id"], {"completed"})
        app.wait_for_job(bad["id"], {"discarded"})
        samples = scrape(app)
        assert value(samples, "job_outcomes_total", queue="default", state="completed") == 1
        assert value(samples, "job_outcomes_total", queue="default", state="discarded") == 1
        assert value(samples, "job_run_seconds_gcount", queue="default") == 2
        assert (value(samples, "job_run_seconds_gsum", queue="default") or 0) >= 0.3
        # Cumulative buckets: the 0.3 s sleep is above 0.25 s, both jobs are under 600 s.
        assert (value(samples, "job_run_seconds_bucket", queue="default", le="0.25") or 0) <= 1
        assert value(samples, "job_run_seconds_bucket", queue="default", le="600.0") == 2
        assert value(samples, "job_run_seconds_bucket", queue="default", le="+Inf") == 2
        assert value(samples, "job_wait_seconds_gcount", queue="default") == 2
        assert (value(samples, "machine_launches_total", queue="default", launcher="local") or 0) >= 1
        assert (value(samples, "telemetry_events_total", event="plugin:start", queue="") or 0) >= 1
        # Pruning deletes the jobs but not what they count for.
        with app.admin() as admin:
            deadline = time.monotonic() + 30
            while app.sql("SELECT count(*) FROM jobs WHERE state IN ('completed', 'discarded')") != [(0,)]:
                admin.post("/admin/jobs/prune", params={"maxAgeSeconds": 0})
                assert time.monotonic() < deadline
        after = scrape(app)
        assert value(after, "job_outcomes_total", queue="default", state="completed") == 1
        assert value(after, "job_outcomes_total", queue="default", state="discarded") == 1


def test_metrics_token_protects_metrics_when_set(open_app: OpenApp):
    with open_app(metrics_token="metrics-secret") as app, httpx.Client(base_url=app.url, trust_env=False) as client:
        assert_problem(client.get("/metrics"), 401)
        assert_problem(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
        assert_problem(client.get("/metrics", headers={"Authorization": f"Bearer {app.token()}"}), 401)
        assert scrape(app, "metrics-secret")
