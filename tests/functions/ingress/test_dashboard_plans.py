"""The dashboard's list and overview queries are index scans on a large jobs table.

The table is filled as bench/dashboard.py fills it (a week of history, mostly final jobs), then
VACUUM ANALYZEd, so the planner chooses with honest statistics; every query is EXPLAINed with the
parameters the pages pass, through psycopg as the app sends them.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from bench.dashboard import fill_jobs, list_params, overview_queries
from shared.db.sql import QUERIES

ROWS = 200_000
SMALL = 1000  # rows the list may sort instead of reading them in index order


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def _plan(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    row = conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return _nodes(row[0][0]["Plan"])


@pytest.fixture(scope="module")
def big_table(pg: Any) -> Any:
    import uuid

    from tests.conftest import TEMPLATE_DB

    name = f"cp_plans_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    url = pg.url_for(name)
    fill_jobs(url, ROWS)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            'INSERT INTO queues (name, "limit") SELECT q, 5 FROM unnest(%s::text[]) q ON CONFLICT DO NOTHING',
            (["default", "images", "emails", "webhooks", "documents", "exports", "archives"],),
        )
        yield conn
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORMAT)".replace("FORMAT", "FORCE"))


LISTS = {
    "tenant, no filter": list_params("tenant-7"),
    "tenant, state": list_params("tenant-7", states=["discarded"]),
    "tenant, live state": list_params("tenant-7", states=["available"]),
    "tenant, queue": list_params("tenant-7", queue="images"),
    "tenant, queue and state": list_params("tenant-7", queue="images", states=["completed"]),
    "tenant, next page": list_params("tenant-7", before_id=ROWS // 2),
    "admin, no filter": list_params(None),
    "admin, state": list_params(None, states=["discarded"]),
    "admin, next page": list_params(None, before_id=ROWS // 2),
    "batch": list_params("tenant-7", batch_id="some-batch"),
}


@pytest.mark.parametrize("case", list(LISTS))
def test_the_jobs_list_is_an_index_scan(big_table: psycopg.Connection[Any], case: str):
    nodes = _plan(big_table, QUERIES["list_jobs"], LISTS[case])
    on_jobs = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert on_jobs, nodes
    assert all(n["Node Type"] != "Seq Scan" for n in on_jobs), (case, [n["Node Type"] for n in nodes])
    assert all("Index" in n["Node Type"] or n["Node Type"] == "Bitmap Heap Scan" for n in on_jobs), case
    # Newest first comes from the index order, not from sorting every matching row; the planner may
    # sort only a small set (a rare state: a few dozen rows here, fewer than a page).
    for node in nodes:
        if node["Node Type"] == "Sort":
            assert node["Plans"][0]["Plan Rows"] <= SMALL, (case, node["Plans"][0]["Plan Rows"])


@pytest.mark.parametrize("tenant", ["tenant-7", None], ids=["tenant", "admin"])
def test_the_overview_queries_are_index_scans(big_table: psycopg.Connection[Any], tenant: str | None):
    for query, params in overview_queries(tenant):
        nodes = _plan(big_table, query, params)
        on_jobs = [n for n in nodes if n.get("Relation Name") == "jobs"]
        assert all(n["Node Type"] != "Seq Scan" for n in on_jobs), (query[:60], [n["Node Type"] for n in nodes])
        for node in on_jobs:
            assert node.get("Index Name") or node["Node Type"] == "Bitmap Heap Scan", node
