"""Bad input gets a clear problem+json answer and writes nothing."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app


@pytest.fixture
def app(database_url, s3):
    from functions.registry import seed_queues

    settings = make_settings(database_url, s3, run_dispatcher=False)
    seed_queues(database_url, settings)
    with live_app(settings) as live:
        yield live


def _assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    return body


def test_malformed_json_is_400_and_writes_nothing(app: LiveApp):
    with app.client() as client:
        response = client.post(
            "/jobs/default", content=b'{"function": "echo", ', headers={"content-type": "application/json"}
        )
    _assert_problem(response, 400)
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]


def test_wrong_field_types_are_422_with_paths(app: LiveApp):
    with app.client() as client:
        response = client.post(
            "/jobs/default", json={"function": "sleep", "args": {"seconds": "soon"}, "options": {"priority": 12}}
        )
    body = _assert_problem(response, 422)
    paths = {e["path"] for e in body["errors"]}
    assert "options.priority" in paths
    with app.client() as client:
        response = client.post("/jobs/default", json={"function": "sleep", "args": {"seconds": "soon"}})
    body = _assert_problem(response, 422)
    assert [e["path"] for e in body["errors"]] == ["args.seconds"]
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]


def test_unknown_function_and_unknown_fields_are_422(app: LiveApp):
    with app.client() as client:
        unknown = client.post("/jobs/default", json={"function": "nope", "args": {}})
        extra = client.post("/jobs/default", json={"function": "echo", "args": {}, "surprise": 1})
    assert _assert_problem(unknown, 422)["errors"][0]["path"] == "function"
    assert _assert_problem(extra, 422)["errors"][0]["path"] == "surprise"
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]


def test_unknown_job_route_and_media_type(app: LiveApp):
    with app.client() as client:
        _assert_problem(client.get("/jobs/999999"), 404)
        _assert_problem(client.get("/jobs/not-a-number"), 404)
        _assert_problem(client.get("/no/such/route"), 404)
        _assert_problem(
            client.post("/jobs/default", content=b"function=echo", headers={"content-type": "text/plain"}), 415
        )


def test_other_tenants_job_is_404_on_every_route(app: LiveApp):
    with app.client("tenant-a") as a, app.client("tenant-b") as b:
        job = a.post("/jobs/default", json={"function": "echo", "args": {}}).json()
        _assert_problem(b.get(f"/jobs/{job['id']}"), 404)
        _assert_problem(b.post(f"/jobs/{job['id']}/retry"), 404)
        assert b.request("DELETE", "/jobs", params={"ids": job["id"]}).json() == {"cancelled": 0}
        assert b.get("/jobs").json()["jobs"] == []
        assert [j["id"] for j in a.get("/jobs").json()["jobs"]] == [job["id"]]


def test_unique_option_returns_the_existing_job_with_conflict(app: LiveApp):
    body = {"function": "echo", "args": {"order": 7}, "options": {"unique": {"period": "infinity"}}}
    with app.client() as client:
        first = client.post("/jobs/default", json=body)
        second = client.post("/jobs/default", json=body)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"] and second.json()["conflict"] is True


def test_list_filters_and_cursor(app: LiveApp):
    with app.client() as client:
        ids = [
            client.post(
                "/jobs/default", json={"function": "echo", "args": {"i": i}, "options": {"tags": ["t"]}}
            ).json()["id"]
            for i in range(5)
        ]
        page1 = client.get("/jobs", params={"limit": 2, "tag": "t"}).json()
        page2 = client.get("/jobs", params={"limit": 2, "cursor": page1["nextCursor"]}).json()
        assert [j["id"] for j in page1["jobs"]] == ids[::-1][:2]
        assert [j["id"] for j in page2["jobs"]] == ids[::-1][2:4]
        assert client.get("/jobs", params={"state": "completed"}).json()["jobs"] == []
        _assert_problem(client.get("/jobs", params={"limit": 500}), 422)
        _assert_problem(client.get("/jobs", params={"state": "bogus"}), 422)


@pytest.mark.parametrize(
    "states", [["available"], ["executing"], ["retryable"], ["scheduled", "available", "executing"]]
)
def test_a_unique_key_that_misses_an_in_flight_state_is_422(app: LiveApp, states: list[str]):
    """Two such jobs used to be accepted and then stopped the dispatcher for every tenant when the
    stager (or a claim, or the lifeline) moved one into a state the other's key covered."""
    options = {"scheduleIn": 1, "unique": {"period": "infinity", "states": states}}
    with app.client() as client:
        response = client.post("/jobs/default", json={"function": "echo", "args": {}, "options": options})
    body = _assert_problem(response, 422)
    assert [e["path"] for e in body["errors"]] == ["options.unique.states"]
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]


def test_retry_into_a_held_unique_key_is_409_naming_the_holder(app: LiveApp):
    body = {"function": "echo", "args": {"k": 1}, "options": {"unique": {"period": "infinity"}}}
    with app.client() as client:
        first = client.post("/jobs/default", json=body).json()
        assert client.request("DELETE", "/jobs", params={"ids": first["id"]}).json() == {"cancelled": 1}
        holder = client.post("/jobs/default", json=body)
        assert holder.status_code == 201
        response = client.post(f"/jobs/{first['id']}/retry")
    problem = _assert_problem(response, 409)
    assert problem["holdingJobId"] == holder.json()["id"]
    assert app.sql("SELECT state FROM jobs WHERE id = %s", (first["id"],)) == [("cancelled",)]


@pytest.mark.parametrize(
    "meta",
    [{"callbackUrl": "http://example.com/x"}, {"snoozed": ""}, {"requestId": "forged"}, {"batchId": "b"}],
    ids=["callbackUrl", "snoozed", "requestId", "batchId"],
)
def test_meta_keys_the_service_writes_itself_are_422(app: LiveApp, meta: dict):
    """A callbackUrl planted through meta skipped the https check of options.callbackUrl; a
    non-numeric `snoozed` made the snooze write fail and the machine exit."""
    with app.client() as client:
        response = client.post("/jobs/default", json={"function": "echo", "args": {}, "options": {"meta": meta}})
    body = _assert_problem(response, 422)
    assert [e["path"] for e in body["errors"]] == ["options.meta"]
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]


# Read as a time by pydantic alone (a Unix time, a space for the `T`, no seconds, an offset without
# its colon), but not a `date-time` of the document (RFC 3339); and a naive time, refused before.
_NOT_A_DATE_TIME = [0, 1.5, "0", "1700000000", "2025-01-01 00:00:00Z", "2025-01-01T00:00Z", "2025-01-01T00:00:00+0100"]


def test_times_the_document_forbids_are_422_and_write_nothing(app: LiveApp):
    with app.client() as client:
        for value in [*_NOT_A_DATE_TIME, "2025-01-01T00:00:00"]:
            for name in ("from", "to"):
                response = client.post("/jobs/exports", json={"dataset": "jobs", "filters": {name: value}})
                body = _assert_problem(response, 422)
                assert [e["path"] for e in body["errors"]] == [f"filters.{name}"], (name, value, body)
            options = {"scheduledAt": value}
            body = _assert_problem(client.post("/jobs/default", json={"function": "echo", "options": options}), 422)
            assert [e["path"] for e in body["errors"]] == ["options.scheduledAt"], (value, body)
        # `filters` is an object or left out; the document has no null for it.
        body = _assert_problem(client.post("/jobs/exports", json={"dataset": "jobs", "filters": None}), 422)
        assert [e["path"] for e in body["errors"]] == ["filters"]
        assert app.sql("SELECT count(*) FROM jobs") == [(0,)]
        # The same times written in RFC 3339 are taken.
        filters = {"from": "2025-01-01T00:00:00Z", "to": "2025-01-02t00:00:00.5+01:00"}
        for body in ({"dataset": "jobs", "filters": filters}, {"dataset": "jobs", "filters": {}}, {"dataset": "jobs"}):
            assert client.post("/jobs/exports", json=body).status_code == 201, body
        options = {"scheduledAt": "2999-01-01T00:00:00z"}
        assert client.post("/jobs/default", json={"function": "echo", "options": options}).status_code == 201
    assert app.sql("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state") == [
        ("available", 3),
        ("scheduled", 1),
    ]


def test_times_outside_years_1_to_9999_in_utc_are_422_and_write_nothing(app: LiveApp):
    # Valid RFC 3339, but in UTC the first is in year 10000 and the second in year 0: Postgres
    # would store them and nothing could read the row back (every list of the tenant's jobs failed).
    with app.client() as client:
        for value in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):
            options = {"scheduledAt": value}
            body = _assert_problem(client.post("/jobs/default", json={"function": "echo", "options": options}), 422)
            assert [e["path"] for e in body["errors"]] == ["options.scheduledAt"], (value, body)
            body = _assert_problem(
                client.post("/jobs/exports", json={"dataset": "jobs", "filters": {"to": value}}), 422
            )
            assert [e["path"] for e in body["errors"]] == ["filters.to"], (value, body)
        assert app.sql("SELECT count(*) FROM jobs") == [(0,)]
        edge = {"scheduledAt": "9999-12-31T23:59:59+01:00"}
        assert client.post("/jobs/default", json={"function": "echo", "options": edge}).status_code == 201
        assert client.get("/jobs").status_code == 200


def test_body_numbers_and_flags_are_json_numbers_and_booleans_not_text_or_the_other_kind(app: LiveApp):
    # Lax parsing would read `true` as 1, "3" as 3, 2.0 as 2 and "true" as true; the document
    # says integer or boolean, so each is a 422 naming its field, and nothing is written.
    bad = [
        ({"priority": True}, "options.priority"),
        ({"priority": "3"}, "options.priority"),
        ({"maxAttempts": "2"}, "options.maxAttempts"),
        ({"scheduleIn": False}, "options.scheduleIn"),
        ({"scheduleIn": "60"}, "options.scheduleIn"),
    ]
    with app.client() as client:
        for options, path in bad:
            response = client.post("/jobs/default", json={"function": "echo", "options": options})
            body = _assert_problem(response, 422)
            assert [e["path"] for e in body["errors"]] == [path], (options, body)
        assert app.sql("SELECT count(*) FROM jobs") == [(0,)]
        bad_fraction = {"priority": 3.5}
        body = _assert_problem(client.post("/jobs/default", json={"function": "echo", "options": bad_fraction}), 422)
        assert [e["path"] for e in body["errors"]] == ["options.priority"], body
        assert app.sql("SELECT count(*) FROM jobs") == [(0,)]
        ok = {"priority": 3, "maxAttempts": 2, "scheduleIn": 60}
        assert client.post("/jobs/default", json={"function": "echo", "options": ok}).status_code == 201
        # JSON Schema counts a whole number written 60.0 (as Python's json writes seconds) as an integer.
        whole = {"priority": 3.0, "maxAttempts": 2.0, "scheduleIn": 60.0, "unique": {"period": 3600.0}}
        assert client.post("/jobs/default", json={"function": "echo", "options": whole}).status_code == 201
    assert app.sql("SELECT priority, max_attempts, state FROM jobs") == [(3, 2, "scheduled"), (3, 2, "scheduled")]


# Each would be read as an integer if pydantic's lax parsing or a repeated key's last value were let
# through; the document allows neither (an integer parameter given once, in digits).
_NOT_AN_INTEGER = ["{n}.0", "%20{n}", "{n}%20", "{n}%0A", "%09{n}", "%C2%A0{n}", "{n}_0", "abc&{name}={n}"]


def test_a_whole_number_read_as_an_integer_leaves_the_tenants_own_numbers_as_written(app: LiveApp):
    # Only the fields the document makes integers are read as integers; a number inside the
    # tenant's free-form args stays exactly as sent (a receiver may sign or compare it).
    body = {"function": "echo", "args": {"x": 2.0, "items": [1.0, 2.5]}, "options": {"priority": 3.0}}
    with app.client() as client:
        assert client.post("/jobs/default", json=body).status_code == 201
    assert app.sql("SELECT priority, args->>'x', args->>'items' FROM jobs") == [(3, "2.0", "[1.0, 2.5]")]


def test_list_and_cancel_refuse_query_values_the_document_forbids_and_change_nothing(app: LiveApp):
    with app.client() as client:
        job = client.post("/jobs/default", json={"function": "echo", "args": {}}).json()["id"]
        for name in ("limit", "cursor"):
            for value in [*_NOT_AN_INTEGER, "{n}&{name}={n}"]:
                query = f"{name}={value.format(name=name, n=5)}"
                body = _assert_problem(client.get(f"/jobs?{query}"), 422)
                assert [e["path"] for e in body["errors"]] == [name], (query, body)
        for name, value in [("queue", "default"), ("worker", "echo"), ("batchId", "b"), ("tag", "t")]:
            body = _assert_problem(client.get(f"/jobs?{name}=x&{name}={value}"), 422)
            assert [e["path"] for e in body["errors"]] == [name], (name, body)
        # Not given once: cancelling by the last queue named would cancel the job.
        body = _assert_problem(client.delete("/jobs?queue=nope&queue=default"), 422)
        assert [e["path"] for e in body["errors"]] == ["queue"], body
        for value in _NOT_AN_INTEGER:
            query = f"ids={value.format(name='ids', n=job)}"
            body = _assert_problem(client.delete(f"/jobs?{query}"), 422)
            assert [e["path"] for e in body["errors"]] == ["ids.0"], (query, body)
        assert app.sql("SELECT state FROM jobs WHERE id = %s", (job,)) == [("available",)]
        # Repeatable parameters stay repeatable, and plain values do what they say.
        listed = client.get("/jobs?state=completed&state=available&limit=1").json()["jobs"]
        assert [j["id"] for j in listed] == [job]
        assert client.delete(f"/jobs?ids={job + 1}&ids={job}&state=available").json() == {"cancelled": 1}
