"""Smoke test of `make bench`: every metric runs end to end at tiny sizes (quick mode) and
returns table rows. No figure is checked: timings belong to the benchmark, never to tests."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.__main__ import METRICS, render_markdown
from bench.cpu import cpu_seconds
from bench.harness import (
    BenchConfig,
    BenchEnv,
    Row,
    Spread,
    cluster_cpu_seconds,
    has_exited,
    percentile,
    wait_with_cpu,
)


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


def test_cpu_accounting_counts_what_a_child_burned(bench_env: BenchEnv) -> None:
    """The engine and ingress rows' CPU per job: a child's CPU is read after it exits (not reaped
    by the check that it has), and the cluster's CPU grows with the work its backends do."""
    import subprocess
    import sys
    import time

    import psycopg

    burner = [sys.executable, "-c", "import sys; sum(range(3 * 10**7)); sys.stdin.read()"]
    child = subprocess.Popen(burner, stdin=subprocess.PIPE)
    assert child.stdin is not None
    time.sleep(0.2)
    assert not has_exited(child) and cpu_seconds(child.pid) >= 0.0
    child.stdin.close()
    while not has_exited(child):
        time.sleep(0.01)
    assert has_exited(child)  # still there to be reaped
    code, cpu = wait_with_cpu(child, timeout=30)
    assert code == 0 and cpu > 0.1  # the sum alone takes longer than that

    before = cluster_cpu_seconds(bench_env.pg)
    with psycopg.connect(bench_env.pg.url, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM generate_series(1, 3000000)")
    time.sleep(0.2)  # the backend has exited and been reaped: its CPU moved to the postmaster's count
    assert cluster_cpu_seconds(bench_env.pg) - before > 0.1


def test_results_markdown_has_every_row() -> None:
    from datetime import UTC, datetime

    rows = [Row("m1", "1", "2", "0.5x", "≥ 1", "MISSED", "a note"), Row("m2", "3", "—", "—", "≤ 4", "met")]
    text = render_markdown(rows, {"CPU": "test"}, BenchConfig(), {"m1": 1.0}, datetime.now(UTC))
    assert "| m1 | 1 | 2 | 0.5x | ≥ 1 | MISSED |" in text
    assert "Targets missed: m1." in text
    assert "- CPU: test" in text
    assert "Targets: `../shared/spec/performance.md` (from the repository root)." in text


# An absolute path in the committed report names the machine it ran on, not the repository.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|root|tmp|Users|opt|srv|var)/")


def test_results_markdown_names_no_absolute_path() -> None:
    from datetime import UTC, datetime

    rows = [Row("m1", "1", "2", "0.5x", "≥ 1", "met", "a note")]
    text = render_markdown(rows, {"CPU": "test"}, BenchConfig(), {"m1": 1.0}, datetime.now(UTC))
    assert not ABSOLUTE_PATH.search(text), ABSOLUTE_PATH.findall(text)
    committed = (Path(__file__).resolve().parents[2] / "bench" / "RESULTS.md").read_text()
    assert not ABSOLUTE_PATH.search(committed), [line for line in committed.splitlines() if ABSOLUTE_PATH.search(line)]
