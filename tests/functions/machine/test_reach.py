"""The retry rule every database write of a machine follows."""

from __future__ import annotations

import psycopg
import pytest

from functions.machine.reach import DatabaseReach


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_write_is_retried_until_it_goes_through_and_the_reach_is_renewed() -> None:
    clock = Clock()
    reach = DatabaseReach(self_fence_after=10, clock=clock)
    failures = [psycopg.OperationalError("down"), OSError("reset")]

    async def attempt() -> str:
        clock.now += 1
        if failures:
            raise failures.pop(0)
        return "done"

    assert await reach.retrying("write", attempt, give_up=lambda: False) == "done"
    assert reach.reached_at == clock.now


async def test_past_the_deadline_it_gives_up_with_none() -> None:
    clock = Clock()
    reach = DatabaseReach(self_fence_after=1, clock=clock)
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        clock.now += 1
        raise psycopg.OperationalError("down")

    assert await reach.retrying("write", attempt, give_up=lambda: False) is None
    assert calls == 2 and reach.past_deadline()


async def test_give_up_stops_at_once_and_other_errors_propagate() -> None:
    reach = DatabaseReach(self_fence_after=60)

    async def down() -> str:
        raise psycopg.OperationalError("down")

    async def broken() -> str:
        raise psycopg.errors.CheckViolation("not a reachability problem")

    assert await reach.retrying("write", down, give_up=lambda: True) is None
    with pytest.raises(psycopg.errors.CheckViolation):
        await reach.retrying("write", broken, give_up=lambda: False)
