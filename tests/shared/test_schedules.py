"""When schedules fire: cron in a time zone, missed occurrences and daylight-saving transitions,
all computed from an injected "now"."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from shared.schedules import ScheduleError, check, next_after, plan


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc, arg-type]


def test_an_occurrence_on_time_fires_and_the_next_is_a_minute_later():
    for misfire in ("skip", "runOnce"):
        done = plan(
            "* * * * *",
            "UTC",
            next_run_at=utc(2026, 5, 1, 10, 0),
            now=utc(2026, 5, 1, 10, 0, 2),
            misfire=misfire,  # type: ignore[arg-type]
            grace_seconds=60,
        )
        assert (done.fire, done.next_run_at) == (utc(2026, 5, 1, 10, 0), utc(2026, 5, 1, 10, 1))


def test_nothing_fires_before_the_occurrence():
    done = plan(
        "0 * * * *", "UTC", next_run_at=utc(2026, 5, 1, 11), now=utc(2026, 5, 1, 10, 59, 59), misfire="skip",
        grace_seconds=60,
    )  # fmt: skip
    assert (done.fire, done.next_run_at) == (None, utc(2026, 5, 1, 11))


@pytest.mark.parametrize(("misfire", "fire"), [("skip", None), ("runOnce", utc(2026, 5, 1, 13))])
def test_occurrences_missed_while_nothing_ran_are_skipped_or_run_once(misfire, fire):
    # Hourly; nothing ran from 09:30 to 13:20: 10:00, 11:00, 12:00 and 13:00 were missed.
    done = plan(
        "0 * * * *", "UTC", next_run_at=utc(2026, 5, 1, 10), now=utc(2026, 5, 1, 13, 20), misfire=misfire,
        grace_seconds=60,
    )  # fmt: skip
    assert done.fire == fire and done.next_run_at == utc(2026, 5, 1, 14)


def test_the_latest_missed_occurrence_within_the_grace_still_runs_under_skip():
    done = plan(
        "* * * * *", "UTC", next_run_at=utc(2026, 5, 1, 10), now=utc(2026, 5, 1, 10, 5, 30), misfire="skip",
        grace_seconds=60,
    )  # fmt: skip
    assert (done.fire, done.next_run_at) == (utc(2026, 5, 1, 10, 5), utc(2026, 5, 1, 10, 6))


def test_time_zone_decides_the_hour():
    # 09:00 in Riga is 06:00 UTC in summer (EEST, +3) and 07:00 UTC in winter (EET, +2).
    assert next_after("0 9 * * *", "Europe/Riga", utc(2026, 7, 1)) == utc(2026, 7, 1, 6)
    assert next_after("0 9 * * *", "Europe/Riga", utc(2026, 12, 1)) == utc(2026, 12, 1, 7)


def test_a_time_skipped_in_spring_runs_right_after_the_jump():
    # London, 2026-03-29: 01:00 GMT jumps to 02:00 BST; 01:30 does not exist that day.
    after = next_after("30 1 * * *", "Europe/London", utc(2026, 3, 28, 23))
    assert after == utc(2026, 3, 29, 1)  # 02:00 BST, the moment after the jump
    assert next_after("30 1 * * *", "Europe/London", after) == utc(2026, 3, 30, 0, 30)


def test_a_time_repeated_in_autumn_runs_once():
    # London, 2026-10-25: 02:00 BST goes back to 01:00 GMT; 01:30 happens twice.
    first = next_after("30 1 * * *", "Europe/London", utc(2026, 10, 24, 23))
    assert first == utc(2026, 10, 25, 0, 30)  # 01:30 BST
    assert next_after("30 1 * * *", "Europe/London", first) == utc(2026, 10, 26, 1, 30)


def test_frequent_expressions_keep_their_pace_across_the_transitions():
    for start in (utc(2026, 3, 29, 0, 30), utc(2026, 10, 25, 0, 30)):
        times, at = [], start
        for _ in range(12):
            at = next_after("*/10 * * * *", "Europe/London", at)
            times.append(at)
        assert all((b - a).total_seconds() == 600 for a, b in itertools.pairwise(times))


@pytest.mark.parametrize(
    ("cron", "zone"),
    [("61 * * * *", "UTC"), ("* * * *", "UTC"), ("*/5 * * * * *", "UTC"), ("* * * * *", "Mars/Olympus"), ("", "UTC")],
)
def test_unusable_expressions_and_zones_are_refused(cron, zone):
    with pytest.raises(ScheduleError):
        check(cron, zone)
