"""Datasets a tenant can export: a fixed registry of tables, columns and filters, and their SQL.

Every statement here is composed with psycopg.sql from registry constants only: column names,
expressions and filter conditions come from this module, user input only ever travels as bound
parameters, and every query is scoped to one tenant by `select_rows` itself, so a caller cannot
forget it.

A query is built in one of three shapes, one per kind of consumer:
- `VALUES`: typed values (ints, text, lists, aware datetimes) for writers that work in Python;
- `CSV_CELLS`: one spreadsheet-safe text per column (formula triggers neutralised, lists joined,
  times as naive UTC) for `COPY ... TO STDOUT (FORMAT csv)`;
- `JSON_OBJECT`: one `json` object per row (keys in column order, times RFC 3339 in the session
  time zone) for NDJSON and JSON arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal, get_args

from psycopg import sql
from pydantic import Field, model_validator

from shared.schemas.common import CamelModel, DateTime, Tag

# Characters that make a spreadsheet read a cell as a formula (OWASP CSV injection, ASVS 5.0
# V1.2.10). NUL is listed for Python writers; Postgres text cannot hold it.
FORMULA_TRIGGERS: Final = frozenset("=+-@\t\r\n\0")

# The same set as code points for SQL: `ascii()` of the first character compared with integer
# constants is several times cheaper per row than a regular expression or `left()`.
_TRIGGER_CODES: Final = tuple(sorted(ord(c) for c in FORMULA_TRIGGERS if c != "\0"))

# Lists (tags) become one cell in spreadsheet formats; JSON keeps them as arrays.
LIST_SEPARATOR: Final = ","


class ColumnKind(StrEnum):
    """How a column is typed in SQL, which decides how each format renders it."""

    INTEGER = "integer"
    TEXT = "text"  # may hold user text: neutralised in spreadsheet formats
    TEXT_LIST = "text_list"  # text[]: joined with LIST_SEPARATOR, then neutralised like TEXT
    TIMESTAMP = "timestamp"  # timestamptz


class QueryShape(StrEnum):
    """What one row of a dataset query looks like (see the module docstring)."""

    VALUES = "values"
    CSV_CELLS = "csv_cells"
    JSON_OBJECT = "json_object"


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    """One exportable column: its public name, kind, and SQL expression over the dataset's table."""

    name: str
    kind: ColumnKind
    expr: sql.Composable


class DatasetFilters(CamelModel):
    """Base of every dataset's filter model (unknown filters are rejected)."""


Conditions = tuple[list[sql.Composable], dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Dataset:
    """A registered, tenant-scoped dataset."""

    name: str
    table: sql.Identifier
    tenant_column: sql.Identifier
    order_by: sql.Composable  # a stable order, so repeated exports list rows alike
    columns: tuple[Column, ...]
    filters_model: type[DatasetFilters]
    # Turns validated filters into SQL conditions and their parameters (names start with "f_").
    conditions: Callable[[DatasetFilters], Conditions]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> Column:
        """The column called `name`. Raises KeyError for a name not in the registry."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class DatasetQuery:
    """A composed statement with its parameters, and the columns it yields in order."""

    statement: sql.Composed
    params: dict[str, Any]
    columns: tuple[Column, ...]


# --- the `jobs` dataset: the tenant's job history -------------------------------------------

JobStateName = Literal["scheduled", "available", "executing", "retryable", "completed", "discarded", "cancelled"]


class JobsFilters(DatasetFilters):
    """Filters of the `jobs` dataset; `from`/`to` bound `inserted_at` as [from, to)."""

    queue: str | None = Field(None, min_length=1, max_length=64)
    state: list[JobStateName] | None = Field(None, min_length=1, max_length=7)
    worker: str | None = Field(None, min_length=1, max_length=128)
    from_: DateTime | None = Field(None, alias="from", description="inserted at or after (inclusive)")
    to: DateTime | None = Field(None, description="inserted before (exclusive)")
    tag: Tag | None = Field(None, description="jobs carrying this tag")

    @model_validator(mode="after")
    def _ordered_range(self) -> JobsFilters:
        if self.from_ is not None and self.to is not None and self.from_ >= self.to:
            raise ValueError("`from` must be earlier than `to`")
        return self


def _jobs_conditions(filters: DatasetFilters) -> Conditions:
    """SQL conditions for JobsFilters. Raises TypeError for another dataset's filters."""
    if not isinstance(filters, JobsFilters):
        raise TypeError(f"jobs dataset got {type(filters).__name__}")
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if filters.queue is not None:
        conditions.append(sql.SQL("queue = %(f_queue)s"))
        params["f_queue"] = filters.queue
    if filters.state:
        conditions.append(sql.SQL("state = ANY(%(f_states)s::text[])"))
        params["f_states"] = list(filters.state)
    if filters.worker is not None:
        conditions.append(sql.SQL("worker = %(f_worker)s"))
        params["f_worker"] = filters.worker
    if filters.from_ is not None:
        conditions.append(sql.SQL("inserted_at >= %(f_from)s"))
        params["f_from"] = filters.from_
    if filters.to is not None:
        conditions.append(sql.SQL("inserted_at < %(f_to)s"))
        params["f_to"] = filters.to
    if filters.tag is not None:
        conditions.append(sql.SQL("tags @> ARRAY[%(f_tag)s::text]"))
        params["f_tag"] = filters.tag
    return conditions, params


def _plain(name: str, kind: ColumnKind) -> Column:
    return Column(name=name, kind=kind, expr=sql.Identifier(name))


JOBS: Final = Dataset(
    name="jobs",
    table=sql.Identifier("jobs"),
    tenant_column=sql.Identifier("tenant_id"),
    order_by=sql.SQL("id"),
    columns=(
        _plain("id", ColumnKind.INTEGER),
        _plain("queue", ColumnKind.TEXT),
        _plain("worker", ColumnKind.TEXT),
        _plain("state", ColumnKind.TEXT),
        _plain("attempt", ColumnKind.INTEGER),
        _plain("max_attempts", ColumnKind.INTEGER),
        _plain("priority", ColumnKind.INTEGER),
        _plain("tags", ColumnKind.TEXT_LIST),
        _plain("inserted_at", ColumnKind.TIMESTAMP),
        _plain("scheduled_at", ColumnKind.TIMESTAMP),
        _plain("attempted_at", ColumnKind.TIMESTAMP),
        _plain("completed_at", ColumnKind.TIMESTAMP),
        _plain("discarded_at", ColumnKind.TIMESTAMP),
        _plain("cancelled_at", ColumnKind.TIMESTAMP),
        # The message of the latest failed attempt (`errors` holds one entry per attempt).
        Column(name="last_error", kind=ColumnKind.TEXT, expr=sql.SQL("(errors -> -1 ->> 'error')")),
    ),
    filters_model=JobsFilters,
    conditions=_jobs_conditions,
)

DatasetName = Literal["jobs"]
DATASETS: Final[dict[str, Dataset]] = {dataset.name: dataset for dataset in (JOBS,)}

if set(get_args(DatasetName)) != set(DATASETS):  # keep the API's enum and the registry in step
    raise RuntimeError("DatasetName and DATASETS disagree")


def get_dataset(name: str) -> Dataset:
    """The registered dataset `name`. Raises KeyError for an unknown name."""
    return DATASETS[name]


# --- query building -------------------------------------------------------------------------


def neutralise_sql(expr: sql.Composable) -> sql.Composed:
    """`expr` (text) with a `'` put before a leading formula trigger; NULL stays NULL."""
    codes = sql.SQL(", ").join(sql.Literal(code) for code in _TRIGGER_CODES)
    return sql.SQL("CASE WHEN ascii({x}) IN ({codes}) THEN '''' || {x} ELSE {x} END").format(x=expr, codes=codes)


def _csv_cell(column: Column) -> sql.Composable:
    match column.kind:
        case ColumnKind.INTEGER:
            return column.expr
        case ColumnKind.TEXT:
            return neutralise_sql(column.expr)
        case ColumnKind.TEXT_LIST:
            joined = sql.SQL("array_to_string({}, {})").format(column.expr, sql.Literal(LIST_SEPARATOR))
            return neutralise_sql(joined)
        case ColumnKind.TIMESTAMP:
            # Spreadsheets read "2025-01-31 12:00:00.5" as a date but not an ISO time with an
            # offset, so CSV (like XLSX, which has no time zones) carries naive UTC.
            return sql.SQL("({} AT TIME ZONE 'UTC')").format(column.expr)
    raise ValueError(f"unknown column kind {column.kind!r}")  # pragma: no cover - exhaustive match


# json_build_object takes at most 100 arguments: a name and a value per column.
_JSON_OBJECT_MAX_COLUMNS: Final = 50


def _select_list(columns: Sequence[Column], shape: QueryShape) -> sql.Composable:
    if shape is QueryShape.JSON_OBJECT:
        if len(columns) > _JSON_OBJECT_MAX_COLUMNS:
            raise ValueError(f"a JSON export holds at most {_JSON_OBJECT_MAX_COLUMNS} columns")
        pairs = sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(c.name), c.expr) for c in columns)
        return sql.SQL("json_build_object({})").format(pairs)
    if shape is QueryShape.CSV_CELLS:
        cells = [sql.SQL("{} AS {}").format(_csv_cell(c), sql.Identifier(c.name)) for c in columns]
    else:
        cells = [sql.SQL("{} AS {}").format(c.expr, sql.Identifier(c.name)) for c in columns]
    return sql.SQL(", ").join(cells)


def select_rows(
    dataset: Dataset,
    *,
    tenant_id: str,
    columns: Sequence[str] | None = None,
    filters: DatasetFilters | None = None,
    shape: QueryShape = QueryShape.VALUES,
) -> DatasetQuery:
    """The SELECT reading `dataset` for one tenant, in a stable order.

    Raises ValueError for an empty tenant, a column name outside the registry, or filters whose
    parameters would shadow the tenant's; TypeError for another dataset's filters.
    """
    if not tenant_id:
        raise ValueError("tenant_id is required: every dataset query is scoped to one tenant")
    names = list(columns) if columns else list(dataset.column_names)
    try:
        chosen = tuple(dataset.column(name) for name in names)
    except KeyError as exc:
        raise ValueError(f"dataset {dataset.name!r} has no column {exc.args[0]!r}") from None
    conditions, params = dataset.conditions(filters if filters is not None else dataset.filters_model())
    if "tenant_id" in params:
        raise ValueError("filter parameters must not be named tenant_id")
    where = sql.SQL(" AND ").join([sql.SQL("{} = %(tenant_id)s").format(dataset.tenant_column), *conditions])
    statement = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {order}").format(
        cols=_select_list(chosen, shape), table=dataset.table, where=where, order=dataset.order_by
    )
    return DatasetQuery(statement, {**params, "tenant_id": tenant_id}, chosen)


def copy_csv(query: DatasetQuery) -> sql.Composed:
    """`COPY (query) TO STDOUT` as RFC 4180 CSV with a header row.

    Every text column is quoted, even when it holds no separator, so a `;` inside a value cannot
    start a new cell in spreadsheets that split on semicolons. Numbers stay unquoted.
    """
    quoted = [sql.Identifier(c.name) for c in query.columns if c.kind in (ColumnKind.TEXT, ColumnKind.TEXT_LIST)]
    force = sql.SQL(", FORCE_QUOTE ({})").format(sql.SQL(", ").join(quoted)) if quoted else sql.SQL("")
    return sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER{})").format(query.statement, force)


def copy_json_lines(query: DatasetQuery) -> sql.Composed:
    """`COPY (query) TO STDOUT` of a JSON_OBJECT query, yielding exactly one JSON text per line.

    CSV format copies values without the backslash escaping of text format. Postgres escapes
    every control character inside JSON text, so a JSON value never contains the delimiter
    (0x02), the quote (0x01), CR or LF, and therefore is never quoted: each output line is
    the JSON text itself followed by LF.
    """
    return sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')").format(query.statement)
