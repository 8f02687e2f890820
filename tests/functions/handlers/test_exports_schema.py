"""`POST /jobs/exports` bodies: what is accepted, what is refused and where."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from shared.datasets import JobsFilters
from shared.schemas.exports import ExportsRequest


def errors(body: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as caught:
        ExportsRequest.model_validate(body)
    return {tuple(e["loc"]): e["msg"] for e in caught.value.errors()}


def test_defaults_and_stored_args():
    request = ExportsRequest.model_validate({"dataset": "jobs"})

    assert isinstance(request.filters, JobsFilters)
    assert (request.format, request.filename, request.columns) == ("csv", "jobs.csv", None)
    assert request.function_args() == {"dataset": "jobs", "filters": {}, "format": "csv", "filename": "jobs.csv"}


def test_stored_args_validate_back_to_the_same_request():
    body = {
        "dataset": "jobs",
        "filters": {"state": ["completed"], "from": "2025-01-01T00:00:00Z", "to": "2025-02-01T00:00:00+01:00"},
        "columns": ["state", "id"],
        "format": "xlsx",
        "tenantId": "acme",
        "options": {"priority": 3},
    }
    request = ExportsRequest.model_validate(body)

    args = request.function_args()

    assert args["filters"] == {
        "state": ["completed"],
        "from": "2025-01-01T00:00:00Z",
        "to": "2025-02-01T00:00:00+01:00",
    }
    assert "tenantId" not in args and "options" not in args and args["filename"] == "jobs.xlsx"
    assert ExportsRequest.model_validate(args).filters == request.filters


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({"dataset": "secrets"}, ("dataset",), "'jobs'"),
        ({"dataset": "jobs", "columns": ["id", "password"]}, ("columns",), "unknown column"),
        ({"dataset": "jobs", "columns": ["id", "id"]}, ("columns",), "repeat"),
        ({"dataset": "jobs", "columns": []}, ("columns",), "at least 1"),
        ({"dataset": "jobs", "filters": {"state": ["done"]}}, ("filters", "state", 0), "'completed'"),
        ({"dataset": "jobs", "filters": {"tenantId": "other"}}, ("filters", "tenantId"), "Extra inputs"),
        ({"dataset": "jobs", "filters": {"from": "2025-01-01T00:00:00"}}, ("filters", "from"), "timezone"),
        (
            {"dataset": "jobs", "filters": {"from": "2025-02-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"}},
            ("filters",),
            "earlier",
        ),
        ({"dataset": "jobs", "format": "html"}, ("format",), "'csv'"),
        ({"dataset": "jobs", "filename": "../x.csv"}, ("filename",), "pattern"),
        ({"dataset": "jobs", "filename": "a/b.csv"}, ("filename",), "pattern"),
        ({"dataset": "jobs", "filename": ".hidden"}, ("filename",), "pattern"),
        ({"dataset": "jobs", "filename": "a..csv"}, ("filename",), "'..'"),
        ({"dataset": "jobs", "extra": 1}, ("extra",), "Extra inputs"),
    ],
)
def test_bad_bodies_are_refused_at_the_right_path(body: dict[str, Any], path: tuple[Any, ...], message: str):
    found = errors(body)

    assert path in found, found
    assert message in found[path]


# Times pydantic alone would read (a Unix time, a space for the `T`, no seconds, an offset without
# its colon, a decimal comma) but the document's `date-time` (RFC 3339) does not allow.
_NOT_RFC_3339 = [
    0,
    1.5,
    True,
    "0",
    "1700000000",
    "2025-01-01 00:00:00Z",
    "2025-01-01T00:00Z",
    "2025-01-01T00:00:00+0100",
    "2025-01-01T00:00:00,5Z",
    "2025-01-01T00:00:00Z\n",
    "2025-01-01",
]


@pytest.mark.parametrize("name", ["from", "to"])
@pytest.mark.parametrize("value", _NOT_RFC_3339)
def test_filter_times_must_be_rfc_3339_date_times(name: str, value: Any):
    assert list(errors({"dataset": "jobs", "filters": {name: value}})) == [("filters", name)]


def test_filters_may_be_left_out_but_not_null():
    assert list(errors({"dataset": "jobs", "filters": None})) == [("filters",)]

    written = {"from": "2025-01-01t00:00:00.5z", "to": "2025-01-02T00:00:00-05:00"}
    filters = ExportsRequest.model_validate({"dataset": "jobs", "filters": written}).filters
    assert isinstance(filters, JobsFilters)
    assert filters.from_ == datetime(2025, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    assert filters.to == datetime(2025, 1, 2, 5, 0, tzinfo=UTC)
    assert ExportsRequest.model_validate({"dataset": "jobs", "filters": {}}).filters == JobsFilters()


def test_an_unknown_dataset_is_reported_once():
    assert list(errors({"dataset": "nope", "filters": {"queue": "x"}, "columns": ["id"]})) == [("dataset",)]


def test_the_json_schema_documents_the_filters():
    schema = ExportsRequest.model_json_schema(by_alias=True)

    filters = schema["properties"]["filters"]
    assert {"queue", "state", "worker", "from", "to", "tag"} <= set(filters["properties"])
    assert schema["properties"]["format"]["enum"] == ["csv", "json", "ndjson", "xlsx"]
