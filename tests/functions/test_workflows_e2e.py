"""Workflows end to end: steps wait for each other, pass outputs along (same tenant, completing
claim only), cancel what depends on a failure, and are cancelled and retried as a whole."""

from __future__ import annotations

import concurrent.futures
import json
import uuid

import psycopg
import pytest

from tests.conftest import make_settings
from tests.support import pdf
from tests.support.live import LiveApp, live_app, wait_until
from tests.support.receivers import http_receiver
from tests.support.smtp import running_smtp_server

FINAL = {"completed", "discarded", "cancelled"}
INVOICE = {
    "template": "invoice",
    "filename": "INV-7.pdf",
    "data": {
        "number": "INV-7",
        "date": "2026-11-28",
        "seller": {"name": "Acme Ltd", "address": ["1 Main St"]},
        "customer": {"name": "Ada Lovelace", "address": ["12 Analytical Row"]},
        "items": [{"description": "Consulting", "quantity": 2, "unitPrice": 10.5}],
        "taxRate": 20,
    },
}


@pytest.fixture
def smtp():
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def app(database_url, s3, smtp, tmp_path):
    from functions.registry import seed_queues
    from shared.storage import Storage

    settings = make_settings(
        database_url,
        s3,
        outbound_allowlist=["127.0.0.1"],
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
        email_from="Content Processor <no-reply@cp.test>",
        **smtp.settings_overrides(),
    )
    seed_queues(database_url, settings)
    Storage(settings).ensure_bucket()
    with live_app(settings) as live:
        yield live


def _create(app: LiveApp, steps: list[dict], tenant: str = "tenant-1") -> dict:
    with app.client(tenant) as client:
        response = client.post("/workflows", json={"name": "test", "steps": steps})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _settled(app: LiveApp, workflow_id: str) -> dict:
    def view() -> dict:
        with app.client() as client:
            body: dict = client.get(f"/workflows/{workflow_id}").json()
        return body if body["state"] != "running" else {}

    return wait_until(f"workflow {workflow_id} settled", view, timeout=120)


def _steps(view: dict) -> dict[str, dict]:
    return {step["name"]: step for step in view["steps"]}


def test_invoice_is_rendered_emailed_as_an_attachment_then_a_webhook_is_sent(app: LiveApp, smtp):
    with http_receiver([(200, {}, 0.0)]) as receiver:
        created = _create(
            app,
            [
                {"name": "invoice", "queue": "documents", **INVOICE},
                {
                    "name": "email",
                    "queue": "emails",
                    "dependsOn": ["invoice"],
                    "to": "ada@example.com",
                    "subject": "Your invoice INV-7",
                    "text": "Attached.",
                    "attachments": [{"filename": "INV-7.pdf", "key": {"$fromStep": "invoice", "output": "INV-7.pdf"}}],
                },
                {
                    "name": "notify",
                    "queue": "webhooks",
                    "dependsOn": ["email"],
                    "url": f"{receiver.url}/sent",
                    "event": "invoice.sent",
                    "payload": {"invoice": "INV-7"},
                },
            ],
        )
        steps = _steps(created)
        assert created["state"] == "running" and steps["email"]["waiting"] and steps["notify"]["waiting"]
        assert steps["email"]["dependsOn"] == ["invoice"]
        done = _settled(app, created["id"])
        [hook] = receiver.requests
    assert done["state"] == "completed", done
    assert {step["state"] for step in done["steps"]} == {"completed"}

    [received] = smtp.messages
    message = received.parsed()
    assert message["Subject"] == "Your invoice INV-7"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "INV-7.pdf"
    document = attachment.get_payload(decode=True)
    assert "INV-7" in pdf.text(document) and "Ada Lovelace" in pdf.text(document)
    assert json.loads(hook.body)["data"] == {"invoice": "INV-7"}

    # The email's args now name the invoice's output under the claim that completed it.
    steps = _steps(done)
    with app.client() as client:
        invoice = client.get(f"/jobs/{steps['invoice']['jobId']}").json()
        email = client.get(f"/jobs/{steps['email']['jobId']}").json()
    [output] = invoice["result"]["outputs"]
    assert email["args"]["attachments"][0]["key"] == output["key"]
    assert email["workflowId"] == created["id"]


def test_a_failing_step_cancels_its_dependents_unless_they_run_anyway(app: LiveApp):
    created = _create(
        app,
        [
            {"name": "a", "queue": "default", "function": "permanent_fail", "args": {}},
            {"name": "b", "queue": "default", "function": "echo", "args": {"x": 1}, "dependsOn": ["a"]},
            {"name": "c", "queue": "default", "function": "echo", "args": {}, "dependsOn": ["b"]},
            {"name": "d", "queue": "default", "function": "echo", "args": {}, "dependsOn": ["a"], "runOnFailure": True},
        ],
    )
    done = _settled(app, created["id"])
    steps = _steps(done)
    assert done["state"] == "failed"
    assert {name: step["state"] for name, step in steps.items()} == {
        "a": "discarded",
        "b": "cancelled",
        "c": "cancelled",
        "d": "completed",
    }
    assert steps["b"]["lastError"]["kind"] == "dependency-failed" and "a" in steps["b"]["lastError"]["error"]
    assert steps["c"]["lastError"]["kind"] == "dependency-failed" and "b" in steps["c"]["lastError"]["error"]
    assert steps["b"]["attempt"] == 0  # never ran


def test_a_cancelled_step_keeps_its_options_and_calls_its_callback(app: LiveApp):
    with app.admin() as admin:  # the callback stays queued where the test reads it
        assert admin.post("/admin/queues/webhooks/pause").status_code == 200
    created = _create(
        app,
        [
            {"name": "a", "queue": "default", "function": "permanent_fail", "args": {}},
            {
                "name": "b",
                "queue": "default",
                "function": "echo",
                "dependsOn": ["a"],
                "options": {"priority": 7, "tags": ["wf"], "callbackUrl": "https://callbacks.example.com/b"},
            },
        ],
    )
    done = _settled(app, created["id"])
    b = _steps(done)["b"]
    assert b["state"] == "cancelled"
    with app.client() as client:
        job = client.get(f"/jobs/{b['jobId']}").json()
    assert (job["priority"], job["tags"]) == (7, ["wf"])
    [(args,)] = app.sql("SELECT args FROM jobs WHERE (meta->>'callbackFor')::bigint = %s", (b["jobId"],))
    assert args["event"] == "job.cancelled" and args["payload"]["error"]["kind"] == "dependency-failed"


def test_retry_runs_the_failed_steps_and_then_their_dependents(app: LiveApp, tmp_path):
    created = _create(
        app,
        [
            {"name": "a", "queue": "default", "function": "fail_once", "args": {"marker_dir": str(tmp_path)}},
            {"name": "b", "queue": "default", "function": "echo", "args": {}, "dependsOn": ["a"]},
        ],
    )
    assert _settled(app, created["id"])["state"] == "failed"
    with app.client() as client:
        job_b = _steps(created)["b"]["jobId"]
        refused = client.post(f"/jobs/{job_b}/retry")
        assert refused.status_code == 409 and "workflow" in refused.json()["detail"]
        retried = client.post(f"/workflows/{created['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["retried"] == 2
    done = _settled(app, created["id"])
    assert done["state"] == "completed"


def test_cancel_stops_the_whole_workflow(app: LiveApp, tmp_path):
    created = _create(
        app,
        [
            {"name": "slow", "queue": "default", "function": "sleep", "args": {"seconds": 60}},
            {"name": "after", "queue": "default", "function": "echo", "args": {}, "dependsOn": ["slow"]},
        ],
    )
    slow = _steps(created)["slow"]["jobId"]
    app.wait_for_job(slow, {"executing"})
    with app.client() as client:
        assert client.post(f"/workflows/{created['id']}/cancel").json() == {"cancelled": 2}
    done = _settled(app, created["id"])
    assert done["state"] == "cancelled" and {s["state"] for s in done["steps"]} == {"cancelled"}


@pytest.mark.parametrize(
    ("steps", "path"),
    [
        (
            [
                {"name": "a", "queue": "default", "function": "echo", "dependsOn": ["b"]},
                {"name": "b", "queue": "default", "function": "echo", "dependsOn": ["a"]},
            ],
            "steps",
        ),
        ([{"name": "a", "queue": "default", "function": "echo", "dependsOn": ["nope"]}], "steps.0.dependsOn"),
        ([{"name": "a", "queue": "default", "function": "echo", "dependsOn": ["a"]}], "steps"),
        (
            [{"name": "a", "queue": "default", "function": "echo"}] * 2,
            "steps.1.name",
        ),
        (
            [
                {"name": "a", "queue": "default", "function": "echo"},
                {"name": "b", "queue": "default", "function": "echo", "args": {"k": {"$fromStep": "a", "output": "x"}}},
            ],
            "steps.1.args.k",
        ),
        ([{"name": "a", "queue": "nope"}], "steps.0.queue"),
        ([{"name": "a", "queue": "emails", "to": "bad", "subject": "s", "text": "t"}], "steps.0.to"),
    ],
    ids=["cycle", "unknown-dependency", "self", "duplicate-name", "reference-not-a-dependency", "queue", "bad-step"],
)
def test_an_invalid_workflow_is_a_422_and_creates_nothing(app: LiveApp, steps: list[dict], path: str):
    with app.client() as client:
        response = client.post("/workflows", json={"steps": steps})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["path"].startswith(path)
    assert app.sql("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM workflows)") == [(0, 0)]


def test_a_step_whose_unique_key_is_held_is_a_409_and_creates_nothing(app: LiveApp):
    unique = {"unique": {"period": "infinity"}, "scheduleIn": 3600}
    with app.client() as client:
        held = client.post("/jobs/default", json={"function": "echo", "args": {"u": 1}, "options": unique})
        assert held.status_code == 201
        step = {"name": "a", "queue": "default", "function": "echo", "args": {"u": 1}, "options": unique}
        response = client.post("/workflows", json={"steps": [step]})
    assert response.status_code == 409, response.text
    assert app.sql("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM workflows)") == [(1, 0)]


def test_another_tenants_workflow_is_a_404(app: LiveApp):
    created = _create(app, [{"name": "a", "queue": "default", "function": "echo"}])
    with app.client("tenant-2") as other:
        assert other.get(f"/workflows/{created['id']}").status_code == 404
        assert other.post(f"/workflows/{created['id']}/cancel").status_code == 404
        assert other.post(f"/workflows/{created['id']}/retry").status_code == 404
        assert other.get(f"/workflows/{uuid.uuid4()}").status_code == 404


def _pause_default(app: LiveApp) -> None:
    with app.admin() as admin:
        assert admin.post("/admin/queues/default/pause").status_code == 200


def _complete(database_url: str, job_id: int, result: dict) -> None:
    """Claim and complete a job by hand (the machine's two statements), on a connection of its own."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'm', attempted_at = now() WHERE id = %s",
            (job_id,),
        )
        conn.execute(
            "UPDATE jobs SET state = 'completed', completed_at = now(), result = %s WHERE id = %s",
            (psycopg.types.json.Jsonb(result), job_id),
        )


def test_a_reference_resolves_only_to_an_output_of_the_completing_claim(app: LiveApp):
    _pause_default(app)
    created = _create(
        app,
        [
            {"name": "a", "queue": "default", "function": "echo"},
            {
                "name": "b",
                "queue": "default",
                "function": "echo",
                "args": {"k": {"$fromStep": "a", "output": "out"}},
                "dependsOn": ["a"],
            },
        ],
    )
    a = _steps(created)["a"]["jobId"]
    # An output recorded under another claim's prefix (or another tenant's) is never handed on.
    stale = f"tenants/tenant-1/jobs/{a}/{uuid.uuid4().hex}/out"
    _complete(app.settings.database_url, a, {"outputs": [{"name": "out", "key": stale, "size": 1}]})
    with app.client() as client:
        view = client.get(f"/workflows/{created['id']}").json()
    b = _steps(view)["b"]
    assert b["state"] == "cancelled" and b["lastError"]["kind"] == "unresolved-reference"


def test_concurrent_completions_promote_a_waiting_step_exactly_once(app: LiveApp):
    _pause_default(app)
    firsts = [{"name": f"a{i}", "queue": "default", "function": "echo"} for i in range(16)]
    last = {"name": "z", "queue": "default", "function": "echo", "dependsOn": [s["name"] for s in firsts]}
    created = _create(app, [*firsts, last])
    steps = _steps(created)
    with concurrent.futures.ThreadPoolExecutor(len(firsts)) as pool:
        list(pool.map(lambda s: _complete(app.settings.database_url, steps[s["name"]]["jobId"], {}), firsts))
    [(state, waiting)] = app.sql(
        "SELECT state, scheduled_at = workflow_waiting_at() FROM jobs WHERE id = %s", (steps["z"]["jobId"],)
    )
    assert (state, waiting) == ("available", False)
    assert app.sql("SELECT deps_left FROM workflow_steps WHERE job_id = %s", (steps["z"]["jobId"],)) == [(0,)]


def test_cancelling_the_first_of_a_100_step_chain_cancels_every_step_after_it(app: LiveApp):
    _pause_default(app)
    chain: list[dict] = [{"name": "s0", "queue": "default", "function": "echo"}]
    chain += [
        {"name": f"s{i}", "queue": "default", "function": "echo", "dependsOn": [f"s{i - 1}"]} for i in range(1, 100)
    ]
    created = _create(app, chain)
    first = _steps(created)["s0"]["jobId"]
    with app.client() as client:
        assert client.request("DELETE", "/jobs", params={"ids": first}).json() == {"cancelled": 1}
        view = client.get(f"/workflows/{created['id']}").json()
    assert view["state"] == "cancelled" and view["counts"] == {"cancelled": 100}
    last = _steps(view)["s99"]
    assert last["lastError"]["kind"] == "dependency-failed" and "s98" in last["lastError"]["error"]


def test_a_unique_step_with_a_reference_is_the_same_step_in_the_next_request(app: LiveApp):
    _pause_default(app)
    literal = {"literal": "tenants/tenant-1/workflow-reference/0"}
    steps = [
        {"name": "a", "queue": "default", "function": "echo", "args": literal},
        {
            "name": "b",
            "queue": "default",
            "function": "echo",
            "dependsOn": ["a"],
            "args": {"k": {"$fromStep": "a", "output": "out"}},
            "options": {"unique": {"period": "infinity", "fields": ["worker", "args"], "keys": ["k"]}},
        },
    ]
    first = _create(app, steps)
    with app.client() as client:
        again = client.post("/workflows", json={"steps": steps})
        a = client.get(f"/jobs/{_steps(first)['a']['jobId']}").json()
    assert again.status_code == 409, again.text
    # Text that looks like a placeholder is only text.
    assert a["args"] == literal
