"""free_port() draws from the global `random`, which hypothesis seeds to a constant
inside every @given example: every process (every xdist worker) then gets the same port."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from infra.local.postgres import free_port

drawn: list[int] = []


@settings(max_examples=5, database=None)
@given(st.integers())
def _draw(_: int) -> None:
    drawn.append(free_port())


def test_free_port_is_not_deterministic_under_hypothesis() -> None:
    _draw()
    assert len(set(drawn)) > 1, f"the same port every time: {drawn}"
