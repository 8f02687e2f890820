"""When a schedule's jobs are due: cron expressions in a time zone, evaluated by cronsim.

Pure functions of an injected `now`, so the scheduler duty (functions/dispatcher/scheduler.py)
and its tests never wait for a clock. Daylight-saving time follows Debian's cron (cronsim's
rules): a job at a specific time that falls into the hour skipped in spring runs right after the
jump; one in the hour repeated in autumn runs once. Expressions that run every minute or every
hour follow the wall clock as it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

Misfire = Literal["skip", "runOnce"]
MAX_EXPRESSION: Final = 200


class ScheduleError(ValueError):
    """A cron expression or time zone that cannot be used (the message says which)."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory such as "Europe"
        raise ScheduleError(f"unknown time zone {name!r} (an IANA name such as Europe/Riga or UTC)") from None


def check(cron: str, time_zone: str) -> None:
    """Raise ScheduleError unless `cron` (five fields) and `time_zone` are usable."""
    if len(cron) > MAX_EXPRESSION or len(cron.split()) != 5:
        raise ScheduleError("a cron expression has five fields: minute hour day-of-month month day-of-week")
    tz = zone(time_zone)
    try:
        next(CronSim(cron, datetime(2000, 1, 1, tzinfo=tz)))
    except CronSimError as exc:
        raise ScheduleError(f"not a cron expression: {exc}") from None
    except StopIteration:
        raise ScheduleError("this expression never matches") from None
    except (ValueError, IndexError, OverflowError):
        # Inputs the library's own checks let through (e.g. odd ranges or steps).
        raise ScheduleError("not a cron expression") from None


def next_after(cron: str, time_zone: str, after: datetime) -> datetime:
    """The first occurrence strictly after `after`, in UTC."""
    local = after.astimezone(zone(time_zone))
    return next(CronSim(cron, local)).astimezone(UTC)


def latest_at_or_before(cron: str, time_zone: str, now: datetime) -> datetime | None:
    """The last occurrence at or before `now`, in UTC (None: none in the last 50 years)."""
    start = now.astimezone(zone(time_zone)).replace(microsecond=0) + timedelta(seconds=1)
    try:
        return next(CronSim(cron, start, reverse=True)).astimezone(UTC)
    except StopIteration:
        return None


@dataclass(frozen=True, slots=True)
class Plan:
    fire: datetime | None  # the occurrence to insert a job for, if any
    next_run_at: datetime  # the next occurrence not yet handled


def plan(
    cron: str, time_zone: str, *, next_run_at: datetime, now: datetime, misfire: Misfire, grace_seconds: float
) -> Plan:
    """What the scheduler does at `now` for a schedule whose next unhandled occurrence is
    `next_run_at`: at most one job, for the latest occurrence that came due. The ones before it
    (missed while nothing ran) are never run; the latest runs when it is at most `grace_seconds`
    late, or whatever its lateness with `runOnce`."""
    if now < next_run_at:
        return Plan(None, next_run_at)
    latest = latest_at_or_before(cron, time_zone, now)
    if latest is None or latest < next_run_at:
        latest = next_run_at
    late = (now - latest).total_seconds()
    fire = latest if misfire == "runOnce" or late <= grace_seconds else None
    return Plan(fire, next_after(cron, time_zone, latest))
