"""The service reads and writes times in UTC whatever the database's own TimeZone: a time the API
accepts is one every connection can read back (found by an adversarial review: on a database set
to Asia/Tokyo, `scheduledAt: 9999-12-31T23:00:00Z` was stored as year 10000 local time, the POST
answered 422 after its commit, and every `GET /jobs` of the tenant was a 500 from then on)."""

from __future__ import annotations

import psycopg

from tests.functions.ingress.conftest import OpenApp


def test_a_time_the_api_accepts_reads_back_on_a_database_in_another_time_zone(
    database_url: str, open_app: OpenApp
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = 'Asia/Tokyo'")
    with open_app() as app, app.client() as client:
        options = {"scheduledAt": "9999-12-31T23:00:00Z"}
        created = client.post("/jobs/default", json={"function": "echo", "options": options})
        assert created.status_code == 201, created.text
        assert created.json()["scheduledAt"].startswith("9999-12-31T23:00:00")
        listed = client.get("/jobs")
        assert listed.status_code == 200, listed.text
        assert [job["id"] for job in listed.json()["jobs"]] == [created.json()["id"]]
        assert client.get(f"/jobs/{created.json()['id']}").status_code == 200
