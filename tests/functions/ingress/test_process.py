"""The API as production runs it (`uvicorn ... --factory`, its own process): JSON log lines tie a
job together from the HTTP request to the machine's completion, and SIGTERM shuts down cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from infra.local.postgres import free_port
from infra.local.s3 import LocalS3
from shared.settings import Settings
from shared.tokens import mint_token
from tests.conftest import make_settings
from tests.support.live import wait_until

REPO = Path(__file__).resolve().parents[3]


@dataclass
class ApiProcess:
    url: str
    settings: Settings
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> httpx.Client:
        token = mint_token(self.settings, subject="t", tenant_id="tenant-1", scopes=["jobs:write", "jobs:read"])
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, trust_env=False)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]


@pytest.fixture
def api(database_url: str, s3: LocalS3, tmp_path: Path) -> Iterator[ApiProcess]:
    from functions.registry import seed_queues

    settings = make_settings(
        database_url,
        s3,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "machines"),
    )
    seed_queues(database_url, settings)
    port = free_port()
    env = {**os.environ, **settings.machine_env(), "RUN_DISPATCHER": "true", "PYTHONPATH": str(REPO)}
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "functions.ingress.app:create_app", "--factory"),
                *("--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "10"),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = ApiProcess(url=f"http://127.0.0.1:{port}", settings=settings, process=process, log_path=log_path)
    try:
        wait_until("the API to answer", lambda: _healthy(api), timeout=60)
        yield api
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _healthy(api: ApiProcess) -> bool:
    assert api.process.poll() is None, api.log_path.read_text()
    try:
        with httpx.Client(base_url=api.url, trust_env=False) as client:
            return client.get("/health").json().get("dispatcher") == "leader"
    except httpx.TransportError:
        return False


def _machine_lines(api: ApiProcess) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(Path(api.settings.local_machine_log_dir or "").glob("*.log")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return lines


def test_one_jobs_log_lines_share_its_request_and_job_ids(api: ApiProcess):
    with api.client() as client:
        created = client.post(
            "/jobs/default", json={"function": "echo", "args": {"n": 1}}, headers={"X-Request-ID": "req-trace-1"}
        )
        assert created.status_code == 201
        job_id = created.json()["id"]
        wait_until("the job to complete", lambda: client.get(f"/jobs/{job_id}").json()["state"] == "completed")
        machine_id = client.get(f"/jobs/{job_id}").json()["machineId"]
    api_lines = [line for line in api.lines() if line.get("requestId") == "req-trace-1"]
    [request_line] = [line for line in api_lines if line["message"] == "http:request"]
    assert request_line["jobId"] == job_id and request_line["tenantId"] == "tenant-1"
    assert request_line["route"] == "/jobs/{queue}" and request_line["status"] == 201
    assert all(line.get("jobId") == job_id for line in api_lines)

    def lines_of_job() -> list[dict[str, Any]]:
        return [line for line in _machine_lines(api) if line.get("jobId") == job_id]

    wait_until(
        "job:complete in the machine's log", lambda: any(line["message"] == "job:complete" for line in lines_of_job())
    )
    job_lines = lines_of_job()
    assert [line["message"] for line in job_lines] == ["job:complete"]  # job:start is DEBUG
    for line in job_lines:
        assert line["requestId"] == "req-trace-1"
        assert line["machineId"] == machine_id and line["service"] == "machine"
        assert (line["queue"], line["worker"], line["tenantId"], line["attempt"]) == ("default", "echo", "tenant-1", 1)


def test_sigterm_stops_the_api_its_dispatcher_and_machines(api: ApiProcess):
    with api.client() as client:
        job_id = client.post("/jobs/default", json={"function": "sleep", "args": {"seconds": 120}}).json()["id"]
        wait_until("the job to run", lambda: client.get(f"/jobs/{job_id}").json()["state"] == "executing")
        machine_id = client.get(f"/jobs/{job_id}").json()["machineId"]
    with psycopg.connect(api.settings.database_url) as conn:
        row = conn.execute("SELECT (detail->>'pid')::int FROM machines WHERE id = %s", (machine_id,)).fetchone()
    assert row is not None
    machine_pid = row[0]
    api.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught as its exit status.
    assert api.process.wait(timeout=60) in (0, -signal.SIGTERM)
    messages = [line["message"] for line in api.lines()]  # every line of the process parses as JSON
    assert messages.index("Waiting for application shutdown.") < messages.index("plugin:stop")
    assert messages.index("plugin:stop") < messages.index("ingress stopped")
    assert messages.index("ingress stopped") < messages.index("Application shutdown complete.")
    # The lifespan stopped the machine it launched: no process outlives the API.
    wait_until("the machine process to end", lambda: _gone(machine_pid), timeout=30)


def _gone(pid: int) -> bool:
    """The process has ended (reaped, or a zombie waiting for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_sigterm_ends_open_event_streams_and_waits_at_once(api: ApiProcess):
    """uvicorn waits for every response in flight before the app's shutdown, and an event stream
    never ends by itself: each held the process for the whole graceful timeout and was then cut
    off mid-stream. Now they end cleanly when the signal arrives (clients reconnect elsewhere)."""
    with api.client() as client:
        job_id = client.post("/jobs/default", json={"function": "sleep", "args": {"seconds": 120}}).json()["id"]
    ended: dict[str, Any] = {}

    def watch(name: str, path: str) -> None:
        try:
            with api.client() as client, client.stream("GET", path, timeout=120) as response:
                lines = response.iter_lines()
                next(line for line in lines if line.startswith(": connected"))
                ended[name] = [line for line in lines if line.startswith(("data:", "event:"))]
        except Exception as exc:  # reported by the assertions below
            ended[name] = exc

    def wait_request() -> None:
        with api.client() as client:
            response = client.get(f"/jobs/{job_id}", params={"wait": 60}, timeout=120)
        ended["wait"] = (response.status_code, response.text)

    threads = [
        threading.Thread(target=watch, args=("events", "/events")),
        threading.Thread(target=watch, args=("job events", f"/jobs/{job_id}/events")),
        threading.Thread(target=wait_request),
    ]
    for thread in threads:
        thread.start()
    wait_until("two streams and a wait to be open", lambda: _open_streams(api) == 3, timeout=30)
    api.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(120)
    assert api.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert not isinstance(ended["events"], Exception), ended["events"]
    assert not isinstance(ended["job events"], Exception), ended["job events"]
    status, body = ended["wait"]
    assert status == 200 and json.loads(body)["state"] in ("available", "executing"), body
    messages = [line["message"] for line in api.lines()]
    assert not [m for m in messages if "timeout graceful shutdown exceeded" in m], "responses were cut off"
    assert "ingress stopped" in messages


def _open_streams(api: ApiProcess) -> int:
    """Event streams and waits the API holds open (its /metrics gauge)."""
    with httpx.Client(base_url=api.url, trust_env=False) as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("event_streams "):
            return int(float(line.split()[1]))
    return 0
