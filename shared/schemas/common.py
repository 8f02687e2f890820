"""Request pieces every `POST /jobs/*` body shares: camelCase models, `tenantId` and `options`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared.outbound_policy import CallbackUrl
from shared.vocabulary import IN_FLIGHT_STATES as IN_FLIGHT

_PRINTABLE = re.compile(r"^[\x20-\x7e\u00a0-\uffff]+$")
_NO_CRLF = re.compile(r"^[^\r\n]*$")
# RFC 3339's date-time (JSON Schema's `date-time`): T and Z in either case, seconds, an offset.
# The offset is optional here only so that AwareDatetime names what a time without one lacks.
_RFC_3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


class CamelModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _no_crlf(value: str) -> str:
    if not _NO_CRLF.fullmatch(value):
        raise ValueError("must not contain CR or LF")
    return value


NoCrLf = Annotated[str, AfterValidator(_no_crlf)]


def _rfc_3339(value: object) -> object:
    # pydantic alone reads a Unix time (a number, or digits in a string), a space for the `T`, a
    # time without seconds, an offset without its colon or a decimal comma as a time.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC_3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time, such as 2025-01-31T12:00:00Z")
    # Parsed here: a strict validation (request bodies) takes a datetime, not its text. A time
    # without an offset stays naive, and AwareDatetime refuses it with its own message.
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError as exc:  # the pattern passed, the calendar did not (February 30th)
        raise ValueError("must be an RFC 3339 date-time, such as 2025-01-31T12:00:00Z") from exc
    if parsed.tzinfo is not None:
        # Stored in UTC: a time whose UTC falls outside years 1-9999 (9999-12-31T23:59:59-01:00)
        # is one Postgres keeps but nothing here can read back.
        try:
            parsed.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError("must fall within years 1 to 9999 in UTC") from exc
    return parsed


DateTime = Annotated[AwareDatetime, BeforeValidator(_rfc_3339)]
"""An aware time written as RFC 3339 (what the document's `format: date-time` says), nothing else."""
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=_PRINTABLE.pattern)]
UniqueField = Literal["args", "queue", "worker"]
_DEFAULT_UNIQUE_FIELDS: list[Literal["args", "queue", "worker"]] = ["args", "queue", "worker"]
UniqueState = Literal["scheduled", "available", "executing", "retryable", "completed", "discarded", "cancelled"]


_DEFAULT_UNIQUE_STATES: list[UniqueState] = ["scheduled", "available", "executing", "retryable", "completed"]
# A key must cover every in-flight state (as River requires): a job moving between them (staged,
# claimed, rescued, snoozed, handed back) then never meets another job's key. The database holds
# the same rule (CHECK jobs_unique_states_in_flight).
IN_FLIGHT_STATES: tuple[str, ...] = tuple(IN_FLIGHT)


class UniqueOptions(CamelModel):
    """While a matching job exists in `states`, an insert returns it instead of a new one."""

    period: int | Literal["infinity"] = Field(60, description="seconds, or 'infinity'")
    fields: list[UniqueField] = Field(default_factory=lambda: list(_DEFAULT_UNIQUE_FIELDS), min_length=1)
    keys: list[str] | None = Field(None, max_length=32, description="only these arg names count")
    states: list[UniqueState] = Field(
        default_factory=lambda: list(_DEFAULT_UNIQUE_STATES),
        min_length=4,
        description="must include scheduled, available, executing and retryable",
    )

    @field_validator("period")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 10 * 365 * 24 * 3600:
            raise ValueError("must be between 1 second and 10 years, or 'infinity'")
        return value

    @field_validator("states")
    @classmethod
    def _covers_in_flight(cls, value: list[UniqueState]) -> list[UniqueState]:
        missing = [state for state in IN_FLIGHT_STATES if state not in value]
        if missing:
            raise ValueError(
                f"must include every in-flight state ({', '.join(IN_FLIGHT_STATES)}); missing {', '.join(missing)}"
            )
        return sorted(set(value), key=value.index)


# meta keys the service sets itself: requestId (X-Request-ID), callbackUrl (options.callbackUrl,
# checked), batchId (bulk), snoozed (the snooze count), callbackFor (a callback's job),
# uniqueReleased (migration 0003), callbackForBatch (a batch's callback), scheduleId and
# occurrenceAt (a schedule's job).
RESERVED_META_KEYS: frozenset[str] = frozenset(
    {
        "requestId",
        "callbackUrl",
        "batchId",
        "snoozed",
        "callbackFor",
        "uniqueReleased",
        "callbackForBatch",
        "scheduleId",
        "occurrenceAt",
    }
)


class JobOptions(CamelModel):
    """Options any job accepts."""

    priority: int = Field(0, ge=0, le=9)
    scheduled_at: DateTime | None = None
    schedule_in: int | None = Field(None, ge=0, le=365 * 24 * 3600)
    max_attempts: int | None = Field(None, ge=1, le=100)
    tags: list[Tag] = Field(default_factory=list, max_length=10)
    meta: dict[str, Any] = Field(default_factory=dict)
    unique: UniqueOptions | None = None
    # Checked against the outbound rules at submit time, like every other outbound URL.
    callback_url: CallbackUrl | None = None

    @field_validator("meta")
    @classmethod
    def _small_and_not_reserved(cls, meta: dict[str, Any]) -> dict[str, Any]:
        if len(repr(meta)) > 4096:
            raise ValueError("meta must be a small object (at most 4 KiB)")
        reserved = sorted(RESERVED_META_KEYS & set(meta))
        if reserved:
            # The service writes these itself (a callbackUrl here would skip the https check).
            raise ValueError(f"meta keys {', '.join(reserved)} are reserved; use the options that set them")
        return meta

    @model_validator(mode="after")
    def _one_schedule(self) -> JobOptions:
        if self.scheduled_at is not None and self.schedule_in is not None:
            raise ValueError("give scheduledAt or scheduleIn, not both")
        return self

    def due_at(self, now: datetime) -> datetime | None:
        """When the job should first run; None means now."""
        if self.scheduled_at is not None:
            return self.scheduled_at
        if self.schedule_in:
            from datetime import timedelta

            return now + timedelta(seconds=self.schedule_in)
        return None


TenantId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]


class JobRequest(CamelModel):
    """Fields every `POST /jobs/*` body may carry besides the function's own arguments."""

    tenant_id: TenantId | None = None
    options: JobOptions = Field(default_factory=lambda: JobOptions())

    def function_args(self) -> dict[str, Any]:
        """The function's own arguments, as stored in `jobs.args` (camelCase, no tenant/options)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"tenant_id", "options"}, exclude_none=True)
