"""Live job events (GET /events, GET /jobs/{id}/events) and GET /jobs/{id}?wait=N, over real HTTP
against a real uvicorn and Postgres. State changes are made with SQL: the events come from the
database's triggers, whoever changes a job."""

from __future__ import annotations

import socket
import threading
from typing import Any

import psycopg
import pytest

from functions.ingress.event_hub import EventHub, LiveEvent
from functions.ingress.events import ends_when_final
from shared.db.pool import open_pool
from shared.notify import JobEventNote
from tests.functions.ingress.conftest import OpenApp, assert_problem
from tests.functions.ingress.sse import SseEvent, SseStream
from tests.functions.ingress.test_metrics import scrape, value
from tests.support.live import LiveApp, wait_until


def hub(app: LiveApp) -> EventHub:
    found: EventHub = app.server.config.app.state.event_hub  # type: ignore[union-attr]
    return found


def stream(app: LiveApp, path: str, token: str, **headers: str) -> SseStream:
    return SseStream(app.url, path, token, headers).start()


def create(app: LiveApp, tenant: str, **options: Any) -> int:
    with app.client(tenant) as client:
        body: dict[str, Any] = {"function": "echo", "args": {"n": 1}}
        if options:
            body["options"] = options
        response = client.post("/jobs/default", json=body)
        assert response.status_code == 201, response.text
        job_id: int = response.json()["id"]
        return job_id


def execute(app: LiveApp, job_id: int) -> None:
    app.sql(
        "UPDATE jobs SET state = 'executing', attempt = attempt + 1, attempted_by = 'm-1',"
        " attempted_at = now(), heartbeat_at = now() WHERE id = %s",
        (job_id,),
    )


def complete(app: LiveApp, job_id: int) -> None:
    app.sql("UPDATE jobs SET state = 'completed', completed_at = now() WHERE id = %s", (job_id,))


def fail(app: LiveApp, job_id: int, message: str) -> None:
    app.sql(
        "UPDATE jobs SET state = 'retryable', scheduled_at = now() + interval '1 hour',"
        " errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'kind', 'error',"
        " 'error', %s::text)) WHERE id = %s",
        (message, job_id),
    )


def events_until(sse: SseStream, predicate: Any) -> list[SseEvent]:
    seen = []
    while True:
        event = sse.next()
        seen.append(event)
        if predicate(event):
            return seen


def test_tenants_see_only_their_own_events_and_admins_see_all(app: LiveApp) -> None:
    a = stream(app, "/events", app.token("tenant-a", "jobs:read"))
    b = stream(app, "/events", app.token("tenant-b", "jobs:read"))
    everyone = stream(app, "/events", app.token(None, "admin"))
    only_b = stream(app, "/events?tenantId=tenant-b", app.token(None, "admin"))
    a_jobs = [create(app, "tenant-a") for _ in range(3)]
    b_jobs = [create(app, "tenant-b") for _ in range(3)]
    execute(app, a_jobs[0])
    complete(app, a_jobs[0])
    last = create(app, "tenant-b")  # the marker every stream of b waits for
    b_jobs.append(last)

    seen_b = events_until(b, lambda e: e.data["jobId"] == last)
    seen_only_b = events_until(only_b, lambda e: e.data["jobId"] == last)
    seen_all = events_until(everyone, lambda e: e.data["jobId"] == last)
    seen_a = events_until(a, lambda e: e.data.get("type") == "completed")
    assert {e.data["jobId"] for e in seen_b} == set(b_jobs)
    assert {e.data["tenantId"] for e in seen_b + seen_only_b} == {"tenant-b"}
    assert [e.data["jobId"] for e in seen_only_b] == [e.data["jobId"] for e in seen_b]
    assert {e.data["jobId"] for e in seen_a} == set(a_jobs)
    assert {e.data["tenantId"] for e in seen_a} == {"tenant-a"}
    assert [e.data["type"] for e in seen_a] == ["inserted"] * 3 + ["executing", "completed"]
    assert {e.data["jobId"] for e in seen_all} == set(a_jobs + b_jobs)
    # Nothing of b's reached a, even later: its next event is its own.
    marker = create(app, "tenant-a")
    assert a.next().data["jobId"] == marker
    for sse in (a, b, everyone, only_b):
        sse.close()


def test_filters_by_queue_state_batch_and_tag(app: LiveApp) -> None:
    token = app.token("tenant-a", "jobs:read")
    by_tag = stream(app, "/events?tag=red", token)
    by_state = stream(app, "/events?state=completed,retryable", token)
    by_queue = stream(app, "/events?queue=emails", token)
    plain = create(app, "tenant-a")
    red = create(app, "tenant-a", tags=["red"])
    execute(app, plain)
    fail(app, plain, "the printer is on fire")
    execute(app, red)
    complete(app, red)
    got = events_until(by_tag, lambda e: e.data["type"] == "completed")
    assert [(e.data["jobId"], e.data["type"]) for e in got] == [
        (red, "inserted"),
        (red, "executing"),
        (red, "completed"),
    ]
    got = events_until(by_state, lambda e: e.data["type"] == "completed")
    assert [(e.data["jobId"], e.data["type"]) for e in got] == [(plain, "retryable"), (red, "completed")]
    assert got[0].data["error"]["error"] == "the printer is on fire"
    # No email job was made: the queue stream has seen nothing (its next event is a new one's).
    with app.client("tenant-a") as client:
        response = client.post("/jobs/emails", json={"to": "ada@example.com", "subject": "s", "text": "t"})
        assert response.status_code == 201, response.text
    event = by_queue.next()
    assert (event.data["queue"], event.data["jobId"]) == ("emails", response.json()["id"])
    for sse in (by_tag, by_state, by_queue):
        sse.close()

    with psycopg.connect(app.settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET batch_id = 'batch-7' WHERE id = %s", (plain,))
    by_batch = stream(app, "/events?batchId=batch-7", token)
    app.sql("UPDATE jobs SET state = 'available' WHERE id = %s", (plain,))  # due again
    event = by_batch.next()
    assert (event.data["jobId"], event.data["type"], event.data["batchId"]) == (plain, "available", "batch-7")
    by_batch.close()


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("state=bogus", 422),
        ("state=", 422),
        ("lastEventId=abc", 422),
        ("tag=" + "x" * 65, 422),
        ("queue=", 422),
        ("tenantId=tenant-b", 403),
    ],
)
def test_bad_filters_are_refused(app: LiveApp, query: str, status: int) -> None:
    with app.client("tenant-a", "jobs:read") as client:
        assert_problem(client.get(f"/events?{query}"), status)
    assert hub(app).subscriber_count == 0


def test_events_need_a_token_with_jobs_read(app: LiveApp) -> None:
    with app.client("tenant-a", "jobs:write") as client:
        assert_problem(client.get("/events"), 403)
        assert_problem(client.get("/events", headers={"Authorization": ""}), 401)


def test_a_job_stream_starts_with_its_state_and_ends_once_final(app: LiveApp) -> None:
    job_id = create(app, "tenant-a")
    sse = stream(app, f"/jobs/{job_id}/events", app.token("tenant-a", "jobs:read"))
    assert sse.next().data | {"type": "x"} == {
        "type": "x",
        "jobId": job_id,
        "state": "available",
        "queue": "default",
        "tenantId": "tenant-a",
        "attempt": 0,
        "batchId": None,
    }
    other = create(app, "tenant-a")
    execute(app, other)
    execute(app, job_id)
    complete(app, job_id)
    assert [(e.data["type"], e.data["jobId"]) for e in (sse.next(), sse.next())] == [
        ("executing", job_id),
        ("completed", job_id),
    ]
    assert sse.ended.wait(30)
    # A final job's stream is its state alone; another tenant's job is 404, as for GET /jobs/{id}.
    done = stream(app, f"/jobs/{job_id}/events", app.token("tenant-a", "jobs:read"))
    assert done.next().data["state"] == "completed"
    assert done.ended.wait(30)
    with app.client("tenant-b", "jobs:read") as client:
        assert_problem(client.get(f"/jobs/{job_id}/events"), 404)
    wait_until("every subscriber gone", lambda: hub(app).subscriber_count == 0)


def test_last_event_id_resumes_without_gaps_and_signals_what_it_cannot(open_app: OpenApp) -> None:
    with open_app(events_replay_size=20) as app:
        token = app.token("tenant-a", "jobs:read")
        first = stream(app, "/events", token)
        created = [create(app, "tenant-a") for _ in range(3)]
        seen = [first.next() for _ in range(3)]
        first.close()
        missed = [create(app, "tenant-a") for _ in range(4)]
        resumed = stream(app, "/events", token, **{"Last-Event-ID": seen[0].id or ""})
        got = [resumed.next() for _ in range(6)]
        assert [e.data["jobId"] for e in got] == created[1:] + missed
        assert [e.id for e in got[:2]] == [e.id for e in seen[1:]]
        resumed.close()
        # Another tenant resuming from the same id replays nothing of tenant-a's.
        other = stream(app, "/events", app.token("tenant-b", "jobs:read"), **{"Last-Event-ID": seen[0].id or ""})
        marker = create(app, "tenant-b")
        assert other.next().data["jobId"] == marker
        other.close()

        # An id the window no longer holds (or never held): a reset first, then live events.
        for _ in range(25):
            create(app, "tenant-a")
        for last in (seen[2].id, "999999999"):
            late = stream(app, f"/events?lastEventId={last}", token)
            assert late.next().event == "reset"
            marker = create(app, "tenant-a")
            assert late.next().data["jobId"] == marker
            late.close()


def test_a_reader_that_stops_reading_is_dropped(open_app: OpenApp) -> None:
    with open_app(events_client_buffer=50) as app:
        healthy = stream(app, "/events", app.token("tenant-b", "jobs:read"))
        # A raw client that reads the response head and then nothing, with a tiny receive buffer.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = app.url.removeprefix("http://").split(":")
        sock.connect((host, int(port)))
        token = app.token("tenant-a", "jobs:read")
        sock.sendall(f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        wait_until("both streams subscribed", lambda: hub(app).subscriber_count == 2)
        # Enough events to fill every socket buffer between the server and the stalled reader.
        for _ in range(10):
            app.sql(
                "INSERT INTO jobs (queue, worker, tenant_id, args)"
                " SELECT 'default', 'echo', 'tenant-a', '{}' FROM generate_series(1, 5000)"
            )
        wait_until("the stalled stream dropped", lambda: hub(app).dropped_total == 1, timeout=120)
        wait_until("its subscription removed", lambda: hub(app).subscriber_count == 1)
        # The stream is dropped as soon as its queue fills, while the hub may still be taking in
        # the rest of the 50,000 events: the count is read once they are all in.
        wait_until("every event received", lambda: hub(app).received_total >= 50_000, timeout=120)
        samples = scrape(app)  # what an operator sees of it
        assert value(samples, "event_streams_dropped_total") == 1 and value(samples, "event_streams") == 1
        assert (value(samples, "job_events_received_total") or 0) >= 50_000
        # The other stream is untouched and still live.
        marker = create(app, "tenant-b")
        assert healthy.next().data["jobId"] == marker
        healthy.close()
        # The server ended the stalled stream: reading what was buffered ends at its close.
        sock.settimeout(30)
        while sock.recv(65536):
            pass
        sock.close()


def test_a_lost_listening_connection_is_replaced_and_streams_are_told(app: LiveApp) -> None:
    sse = stream(app, "/events", app.token("tenant-a", "jobs:read"))
    before = create(app, "tenant-a")
    assert sse.next().data["jobId"] == before
    killed = app.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND query ILIKE 'LISTEN%%cp_events%%'"
    )
    assert killed == [(True,)]
    assert sse.next().event == "reset"
    wait_until("the hub listening again", lambda: hub(app).connected)
    after = create(app, "tenant-a")
    assert sse.next().data["jobId"] == after
    sse.close()


def test_wait_answers_once_the_job_is_final(app: LiveApp) -> None:
    job_id = create(app, "tenant-a")
    with app.client("tenant-a", "jobs:read") as client:
        for bad in ("61", "-1", "abc", "1.5"):
            assert_problem(client.get(f"/jobs/{job_id}?wait={bad}"), 422)
        # Not final within the wait: the job as it is.
        assert client.get(f"/jobs/{job_id}?wait=1").json()["state"] == "available"

        def finish() -> None:
            wait_until("the waiting request subscribed", lambda: hub(app).subscriber_count == 1)
            execute(app, job_id)
            complete(app, job_id)

        finisher = threading.Thread(target=finish)
        finisher.start()
        response = client.get(f"/jobs/{job_id}?wait=60")
        finisher.join()
        assert response.status_code == 200
        assert response.json()["state"] == "completed"
        assert response.json() == client.get(f"/jobs/{job_id}").json()
    with app.client("tenant-b", "jobs:read") as client:
        assert_problem(client.get(f"/jobs/{job_id}?wait=5"), 404)
    assert hub(app).subscriber_count == 0


def test_streams_and_wait_refuse_query_values_the_document_forbids(app: LiveApp) -> None:
    job_id = create(app, "tenant-a")
    with app.client("tenant-a", "jobs:read") as client:
        # Each would be read as a wait of 1 second, or the last of a repeated key taken.
        for value in ("1.0", "%201", "1%20", "1%0A", "1_0", "abc&wait=1", "1&wait=1"):
            body = assert_problem(client.get(f"/jobs/{job_id}?wait={value}"), 422)
            assert [e["path"] for e in body["errors"]] == ["wait"], (value, body)
        # A parameter the document gives once, given twice: refused, not the last one used.
        for path, name in [
            ("/events", "batchId"),
            ("/events", "tag"),
            ("/events", "tenantId"),
            ("/events", "lastEventId"),
            (f"/jobs/{job_id}/events", "lastEventId"),
        ]:
            value = "tenant-a" if name == "tenantId" else "1"
            with client.stream("GET", f"{path}?{name}={value}&{name}={value}") as response:
                assert response.status_code == 422, (path, name)
                response.read()
            body = assert_problem(response, 422)
            assert [e["path"] for e in body["errors"]] == [name], (path, name, body)
        body = assert_problem(client.get(f"/jobs/{job_id}?wait=0&state=x"), 422)  # no such parameter
        assert [e["path"] for e in body["errors"]] == ["state"], body
    assert hub(app).subscriber_count == 0


def test_idle_streams_get_keep_alive_comments(open_app: OpenApp) -> None:
    with open_app(events_keepalive_seconds=0.2) as app:
        sse = stream(app, "/events", app.token("tenant-a", "jobs:read"))
        wait_until("a keep-alive comment", lambda: ": keep-alive" in sse.comments)
        marker = create(app, "tenant-a")  # and events still flow
        assert sse.next().data["jobId"] == marker
        sse.close()


def test_a_stream_ends_after_its_lifetime_and_the_client_resumes_where_it_was(open_app: OpenApp) -> None:
    with open_app(events_max_stream_seconds=2) as app:
        token = app.token("tenant-a", "jobs:read")
        first = stream(app, "/events", token)
        created = create(app, "tenant-a")
        seen = first.next()
        assert seen.data["jobId"] == created
        assert first.ended.wait(30), "the stream outlived EVENTS_MAX_STREAM_SECONDS"
        missed = create(app, "tenant-a")  # between the end and the reconnect
        again = stream(app, "/events", token, **{"Last-Event-ID": seen.id or ""})
        assert again.next().data["jobId"] == missed
        again.close()


def test_a_running_jobs_progress_is_an_event_once_per_change(app: LiveApp) -> None:
    token = app.token("tenant-a", "jobs:read")
    job_id = create(app, "tenant-a")
    events = stream(app, f"/jobs/{job_id}/events", token)
    assert events.next().data["type"] == "current"
    execute(app, job_id)
    assert events.next().data["type"] == "executing"

    def heartbeat(progress: str | None) -> None:  # what the machine's heartbeat writes
        app.sql(
            "UPDATE jobs SET heartbeat_at = now(), progress = coalesce(%s::jsonb, progress) WHERE id = %s",
            (progress, job_id),
        )

    heartbeat('{"done": 40, "total": 100, "message": "rows"}')
    heartbeat(None)  # nothing new: no event
    heartbeat('{"done": 40, "total": 100, "message": "rows"}')  # the same report again: no event
    heartbeat('{"done": 100, "total": 100, "message": "rows"}')
    complete(app, job_id)
    got = [events.next() for _ in range(3)]
    assert [e.data["type"] for e in got] == ["progress", "progress", "completed"]
    assert [e.data.get("progress", {}).get("done") for e in got[:2]] == [40, 100]
    assert got[0].data["state"] == "executing" and got[0].data["progress"]["total"] == 100
    assert events.ended.wait(30)


def test_a_job_stream_does_not_end_on_a_final_event_the_job_has_left(app: LiveApp) -> None:
    # Events reach the hub a few milliseconds after their commit (migrations/0012): a job
    # discarded and retried just before its stream opened sends `discarded` after `current`.
    # Holding the flush's lock stands in for that delay.
    job_id = create(app, "tenant-a")
    execute(app, job_id)
    wait_until("the hub to send what is logged", lambda: app.sql("SELECT count(*) FROM job_event_log") == [(0,)])
    with psycopg.connect(app.settings.database_url) as flush_held:
        flush_held.execute("SELECT pg_advisory_xact_lock(7420012)")  # job_events_flush's lock
        app.sql(
            "UPDATE jobs SET state = 'discarded', discarded_at = now(), errors = errors ||"
            """ '[{"kind": "error", "error": "boom"}]' WHERE id = %s""",
            (job_id,),
        )
        with app.client("tenant-a") as client:
            assert client.post(f"/jobs/{job_id}/retry").status_code == 200
        events = stream(app, f"/jobs/{job_id}/events", app.token("tenant-a", "jobs:read"))
        first = events.next().data
        assert (first["type"], first["state"]) == ("current", "available")
    # The flush comes: `discarded`, then `retried`; the stream goes on, as the job will run.
    assert [events.next().data["type"] for _ in range(2)] == ["discarded", "retried"]
    execute(app, job_id)
    complete(app, job_id)
    assert [e.data["type"] for e in events_until(events, lambda e: e.data["type"] == "completed")] == [
        "executing",
        "completed",
    ]
    assert events.ended.wait(30)


async def test_a_job_stream_ends_when_the_row_cannot_be_read_back(database_url: str) -> None:
    # A final event makes the stream read the row; when the database does not answer, the
    # stream ends (the client reconnects, reads the current state and resumes) rather than failing.
    pool = await open_pool(database_url)
    await pool.close()
    final = LiveEvent(JobEventNote(1, "completed", 7, "completed", "default", "acme", 1, None))
    assert await ends_when_final(pool, 7, "acme")(final) is True
    not_final = LiveEvent(JobEventNote(2, "executing", 7, "executing", "default", "acme", 1, None))
    assert await ends_when_final(pool, 7, "acme")(not_final) is False  # no read needed


def test_a_job_stream_does_not_end_on_a_final_event_the_row_has_since_left_for_another(app: LiveApp) -> None:
    # cancelled, retried, run and completed while the events wait for their flush: `cancelled`
    # arrives when the row is already `completed` (final too, but not that event's outcome).
    job_id = create(app, "tenant-a")
    events = stream(app, f"/jobs/{job_id}/events", app.token("tenant-a", "jobs:read"))
    assert events.next().data["type"] == "current"
    wait_until("the hub to send what is logged", lambda: app.sql("SELECT count(*) FROM job_event_log") == [(0,)])
    with psycopg.connect(app.settings.database_url) as flush_held:
        flush_held.execute("SELECT pg_advisory_xact_lock(7420012)")  # job_events_flush's lock
        app.sql("UPDATE jobs SET state = 'cancelled', cancelled_at = now() WHERE id = %s", (job_id,))
        with app.client("tenant-a") as client:
            assert client.post(f"/jobs/{job_id}/retry").status_code == 200
        execute(app, job_id)
        complete(app, job_id)
    seen = events_until(events, lambda e: e.data["type"] == "completed")
    assert [e.data["type"] for e in seen] == ["cancelled", "retried", "executing", "completed"]
    assert events.ended.wait(30)


def test_a_stopping_instance_answers_where_a_job_stands_and_refuses_new_streams(app: LiveApp) -> None:
    """Once the stop signal arrived (uvicorn still reads requests for a moment): a ?wait answers at
    once with the state as it is, a final job's stream is its one frame, and any other new stream
    is a 503 with Retry-After (the client reconnects to another instance)."""
    waiting, final = create(app, "tenant-a"), create(app, "tenant-a")
    execute(app, final)
    complete(app, final)
    app.server.config.app.state.begin_shutdown()  # type: ignore[union-attr]  # what SIGTERM does
    wait_until("the hub to close", lambda: hub(app).closing)
    with app.client("tenant-a", "jobs:read") as client:
        answer = client.get(f"/jobs/{waiting}?wait=60", timeout=30)
        assert answer.status_code == 200 and answer.json()["state"] == "available"
        one_frame = client.get(f"/jobs/{final}/events", timeout=30)
        assert one_frame.status_code == 200 and '"state":"completed"' in one_frame.text
        refused = client.get(f"/jobs/{waiting}/events", timeout=30)
        assert "shutting down" in assert_problem(refused, 503)["detail"]
        assert refused.headers["retry-after"] == "1"
        assert_problem(client.get("/events", timeout=30), 503)
