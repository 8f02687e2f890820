"""The dataset registry and its SQL, against a real Postgres."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, get_args

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from functions.handlers.lib.export_writers import neutralise
from shared.datasets import (
    DATASETS,
    FORMULA_TRIGGERS,
    JOBS,
    Column,
    ColumnKind,
    DatasetFilters,
    DatasetName,
    DatasetQuery,
    JobsFilters,
    QueryShape,
    copy_csv,
    copy_json_lines,
    neutralise_sql,
    select_rows,
)

SPEC_COLUMNS = (
    "id, queue, worker, state, attempt, max_attempts, priority, tags, inserted_at, scheduled_at, "
    "attempted_at, completed_at, discarded_at, cancelled_at, last_error"
).split(", ")
# Postgres text holds any character but NUL.
PG_TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=40)
# Half the values start with a formula trigger, so every property sees plenty of them.
CELL_TEXT = st.one_of(PG_TEXT, st.builds(str.__add__, st.sampled_from(sorted(FORMULA_TRIGGERS - {"\0"})), PG_TEXT))
PROPERTY = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def add_job(conn: psycopg.Connection[Any], tenant: str, *, queue: str = "images", tags: list[str] | None = None) -> int:
    row = conn.execute(
        "INSERT INTO jobs (queue, worker, tenant_id, tags, inserted_at) VALUES (%s, 'W', %s, %s, %s) RETURNING id",
        (queue, tenant, tags or [], datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def copy_out(conn: psycopg.Connection[Any], statement: sql.Composed, params: dict[str, Any]) -> bytes:
    out = bytearray()
    with conn.cursor() as cur, cur.copy(statement, params) as copy:
        for data in copy:
            out += data
    return bytes(out)


def text_query(values: list[str], *, csv_cells: bool) -> DatasetQuery:
    """A one-column query over `values`, shaped like a dataset's text column."""
    column = Column(name="v", kind=ColumnKind.TEXT, expr=sql.SQL("x"))
    cell = neutralise_sql(column.expr) if csv_cells else sql.SQL("json_build_object('v', x)")
    statement = sql.SQL("SELECT {} AS v FROM unnest(%(values)s::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n").format(
        cell
    )
    return DatasetQuery(statement, {"values": values}, (column,))


def test_the_registry_serves_the_jobs_dataset_with_the_spec_columns():
    assert set(get_args(DatasetName)) == set(DATASETS) >= {"jobs"}
    assert list(JOBS.column_names) == SPEC_COLUMNS


def test_a_query_without_a_tenant_is_refused():
    with pytest.raises(ValueError, match="tenant"):
        select_rows(JOBS, tenant_id="")


def test_a_column_outside_the_registry_is_refused():
    with pytest.raises(ValueError, match="no column 'tenant_id'"):
        select_rows(JOBS, tenant_id="t", columns=["id", "tenant_id"])


def test_another_datasets_filters_are_refused():
    with pytest.raises(TypeError):
        select_rows(JOBS, tenant_id="t", filters=DatasetFilters())


@pytest.mark.parametrize("shape", list(QueryShape))
def test_every_shape_reads_only_the_tenants_rows(conn: psycopg.Connection[Any], shape: QueryShape):
    mine = [add_job(conn, "acme", tags=["x"]), add_job(conn, "acme", queue="emails", tags=["x"])]
    add_job(conn, "other", tags=["x"])
    add_job(conn, "other", queue="emails", tags=["x"])
    for filters, expected in [(None, mine), (JobsFilters(queue="emails"), mine[1:]), (JobsFilters(tag="x"), mine)]:
        query = select_rows(JOBS, tenant_id="acme", columns=["id", "tags"], filters=filters, shape=shape)
        rows = conn.execute(query.statement, query.params).fetchall()
        ids = [r[0]["id"] if shape is QueryShape.JSON_OBJECT else r[0] for r in rows]  # json arrives parsed
        assert ids == expected
        rendered = query.statement.as_string(conn)
        assert 'WHERE "tenant_id" = %(tenant_id)s' in rendered and query.params["tenant_id"] == "acme"


def test_filter_values_are_parameters_never_sql(conn: psycopg.Connection[Any]):
    add_job(conn, "acme")
    hostile = JobsFilters(queue="images' OR tenant_id <> 'acme", worker="W'; DROP TABLE jobs; --")

    query = select_rows(JOBS, tenant_id="acme", filters=hostile, shape=QueryShape.CSV_CELLS)

    assert "DROP" not in query.statement.as_string(conn)
    assert copy_out(conn, copy_csv(query), query.params).decode().count("\n") == 1  # the header only
    assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


def test_csv_copy_has_a_header_and_quotes_text_but_not_numbers(conn: psycopg.Connection[Any]):
    job_id = add_job(conn, "acme", tags=["a", "=b"])
    query = select_rows(
        JOBS, tenant_id="acme", columns=["id", "tags", "inserted_at", "last_error"], shape=QueryShape.CSV_CELLS
    )

    body = copy_out(conn, copy_csv(query), query.params).decode()

    assert body == f'id,tags,inserted_at,last_error\n{job_id},"a,=b",2025-01-02 03:04:05,\n'


@PROPERTY
@given(values=st.lists(CELL_TEXT, min_size=1, max_size=20))
def test_sql_and_python_neutralise_alike(conn: psycopg.Connection[Any], values: list[str]):
    statement = sql.SQL("SELECT {} FROM unnest(%(values)s::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n").format(
        neutralise_sql(sql.SQL("x"))
    )
    got = [row[0] for row in conn.execute(statement, {"values": values}).fetchall()]
    assert got == [neutralise(value) for value in values]


@PROPERTY
@given(values=st.lists(CELL_TEXT, min_size=1, max_size=20))
def test_a_csv_text_cell_is_one_cell_and_never_a_formula(conn: psycopg.Connection[Any], values: list[str]):
    query = text_query(values, csv_cells=True)

    body = copy_out(conn, copy_csv(query), query.params).decode()

    rows = list(csv.reader(io.StringIO(body, newline="")))
    assert rows == [["v"], *([neutralise(value)] for value in values)]
    assert not any(row[0][:1] in ("=", "+", "-", "@", "\t", "\r", "\n") for row in rows)
    # Quoted, so a reader that splits on ";" (Excel in many locales) also sees one cell.
    assert list(csv.reader(io.StringIO(body, newline=""), delimiter=";"))[1:] == rows[1:]


@PROPERTY
@given(values=st.lists(CELL_TEXT, min_size=1, max_size=20))
def test_json_lines_copy_is_one_json_text_per_line(conn: psycopg.Connection[Any], values: list[str]):
    query = text_query(values, csv_cells=False)

    body = copy_out(conn, copy_json_lines(query), query.params)

    assert body.endswith(b"\n")
    assert [json.loads(line) for line in body.decode().split("\n")[:-1]] == [{"v": value} for value in values]


def test_a_json_row_holds_at_most_fifty_columns():
    wide = dataclasses.replace(
        JOBS, columns=tuple(Column(name=f"c{i}", kind=ColumnKind.INTEGER, expr=sql.SQL("id")) for i in range(51))
    )
    select_rows(wide, tenant_id="t", columns=[f"c{i}" for i in range(50)], shape=QueryShape.JSON_OBJECT)

    with pytest.raises(ValueError, match="at most 50"):
        select_rows(wide, tenant_id="t", shape=QueryShape.JSON_OBJECT)
