"""`POST /jobs/exports`: which dataset, filtered how, which columns, in which format."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import Field, SerializeAsAny, ValidationInfo, WithJsonSchema, field_validator, model_validator

from shared.datasets import DATASETS, DatasetFilters, DatasetName

from .common import JobRequest

ExportFormat = Literal["csv", "json", "ndjson", "xlsx"]
EXTENSIONS: Final[dict[str, str]] = {"csv": "csv", "json": "json", "ndjson": "ndjson", "xlsx": "xlsx"}

# A plain file name: it becomes the last segment of the output's key and the download's name.
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _filters_json_schema() -> dict[str, Any]:
    """The filters of every dataset, for the OpenAPI document (which ones apply depends on `dataset`)."""
    schemas = [dataset.filters_model.model_json_schema(by_alias=True) for dataset in DATASETS.values()]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


class ExportsRequest(JobRequest):
    """Export a tenant-scoped dataset to one file: CSV, JSON (an array), NDJSON or XLSX."""

    dataset: DatasetName
    # Left out, `filters` becomes the dataset's own empty filter model (`_default_filters`); given,
    # it is an object: the document has no null for it. The None default is never seen (hence the
    # ignore): it is not validated, so only a `null` given in the body reaches `_dataset_filters`.
    filters: Annotated[SerializeAsAny[DatasetFilters], WithJsonSchema(_filters_json_schema())] = Field(
        None,  # type: ignore[assignment]
        description="dataset-specific; for `jobs`: queue, state, worker, from, to, tag",
    )
    columns: list[str] | None = Field(
        None, min_length=1, max_length=64, description="a subset of the dataset's columns, in output order"
    )
    format: ExportFormat = "csv"
    filename: str | None = Field(None, pattern=_FILENAME.pattern, description="default `<dataset>.<format>`")

    @field_validator("filters", mode="before")
    @classmethod
    def _dataset_filters(cls, value: Any, info: ValidationInfo) -> Any:
        dataset = DATASETS.get(info.data.get("dataset", ""))
        if dataset is None:
            # The dataset itself is reported invalid; its filters cannot be judged without it.
            return DatasetFilters()
        if isinstance(value, dataset.filters_model):
            return value
        if value is None:
            raise ValueError("must be an object (leave `filters` out for none)")
        # A ValidationError raised here is reported under `filters.<field>`.
        return dataset.filters_model.model_validate(value)

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        dataset = DATASETS.get(info.data.get("dataset", ""))
        if value is None or dataset is None:
            return value
        unknown = [name for name in value if name not in dataset.column_names]
        if unknown:
            known = ", ".join(dataset.column_names)
            raise ValueError(f"unknown column(s) {', '.join(map(repr, unknown))}; choose from: {known}")
        if len(set(value)) != len(value):
            raise ValueError("columns must not repeat")
        return value

    @field_validator("filename")
    @classmethod
    def _safe_filename(cls, value: str | None) -> str | None:
        if value is not None and ".." in value:
            raise ValueError("must not contain '..'")
        return value

    @model_validator(mode="after")
    def _default_filters(self) -> ExportsRequest:
        if "filters" not in self.model_fields_set:
            self.filters = DATASETS[self.dataset].filters_model()
        return self

    @model_validator(mode="after")
    def _default_filename(self) -> ExportsRequest:
        if self.filename is None:
            self.filename = f"{self.dataset}.{EXTENSIONS[self.format]}"
        return self

    @property
    def output_name(self) -> str:
        """The output's file name (always set after validation)."""
        return self.filename or f"{self.dataset}.{EXTENSIONS[self.format]}"
