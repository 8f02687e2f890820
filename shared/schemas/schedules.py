"""`POST /schedules`: a cron expression in a time zone and the job to insert at each occurrence."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from shared import schedules

from .common import CamelModel, TenantId

ScheduleName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._ -]+$")]


class ScheduleRequest(CamelModel):
    """A schedule of the tenant: `job` is `{"queue": ..., ...the body POST /jobs/{queue} takes}`."""

    tenant_id: TenantId | None = None
    name: ScheduleName = Field(..., description="unique per tenant")
    cron: str = Field(..., max_length=200, description="five fields: minute hour day-of-month month day-of-week")
    time_zone: str = Field("UTC", max_length=64, description="an IANA time zone, e.g. Europe/Riga")
    misfire: Literal["skip", "runOnce"] = Field(
        "skip",
        description="occurrences missed while nothing ran: `skip` them all, or `runOnce` (the latest one, once)",
    )
    paused: bool = False
    job: dict[str, Any] = Field(
        ...,
        description='`{"queue": "exports", ...}`: the body of POST /jobs/{queue} (no `options.unique`, '
        "`scheduledAt` or `scheduleIn`)",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        schedules.zone(value)  # ScheduleError is a ValueError: a 422 naming timeZone
        return value

    @model_validator(mode="after")
    def _usable_expression(self) -> ScheduleRequest:
        schedules.check(self.cron, self.time_zone)
        return self
