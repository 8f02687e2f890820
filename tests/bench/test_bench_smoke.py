"""Smoke test of `make bench`: every metric runs end to end at tiny sizes (quick mode) and
returns table rows. No figure is checked: timings belong to the benchmark, never to tests."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from bench.__main__ import METRICS, render_markdown
from bench.harness import BenchConfig, BenchEnv, Row, Spread, percentile


@pytest.fixture(scope="module")
def bench_env() -> Iterator[BenchEnv]:
    env = BenchEnv(BenchConfig(quick=True, runs=1))
    env.start()
    try:
        yield env
    finally:
        env.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(METRICS))
def test_metric_runs_and_reports(bench_env: BenchEnv, name: str) -> None:
    module = importlib.import_module(METRICS[name])
    rows = module.run(bench_env, bench_env.config)
    assert rows
    for row in rows:
        assert isinstance(row, Row)
        assert row.verdict in {"met", "MISSED", "info"}, row
        assert row.metric and row.ours and row.target


def test_statistics_helpers() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    spread = Spread.of([3.0, 1.0, 2.0])
    assert (spread.median, spread.lo, spread.hi) == (2.0, 1.0, 3.0)
    assert spread.fmt(" ms", 1) == "2.0 ms (1.0-3.0)"


def test_results_markdown_has_every_row() -> None:
    from datetime import UTC, datetime

    rows = [Row("m1", "1", "2", "0.5x", "≥ 1", "MISSED", "a note"), Row("m2", "3", "—", "—", "≤ 4", "met")]
    text = render_markdown(rows, {"CPU": "test"}, BenchConfig(), {"m1": 1.0}, datetime.now(UTC))
    assert "| m1 | 1 | 2 | 0.5x | ≥ 1 | MISSED |" in text
    assert "Targets missed: m1." in text
    assert "- CPU: test" in text
