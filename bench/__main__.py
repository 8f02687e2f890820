"""`python -m bench [metric ...] [--quick] [--runs N] [--out PATH]`: run the performance metrics.

With no metric named, runs all of them in order and writes bench/RESULTS.md (unless --quick;
--out PATH writes anywhere). Each metric is a ratio against a reference measured in the same run
on the same throwaway durable Postgres. Quick mode (--quick or BENCH_QUICK=1) uses tiny sizes and
one run on a Postgres without fsync: it proves the scripts work, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from .harness import BenchConfig, BenchEnv, Row, error_row, load_average, machine_facts

# name -> module, in the order of the performance spec.
METRICS: dict[str, str] = {
    "ingress": "bench.ingress",
    "bulk": "bench.bulk_email",
    "engine": "bench.engine",
    "pickup": "bench.pickup",
    "cold": "bench.cold_start",
    "images": "bench.images",
    "documents": "bench.documents",
    "exports": "bench.exports",
    "claimers": "bench.claimers",
    "dispatcher": "bench.dispatcher",
    "e2e": "bench.e2e",
    "events": "bench.live_events",
    "dashboard": "bench.dashboard",
    "fairness": "bench.fairness",
    "ratelimit": "bench.rate_limit",
}
RESULTS = Path(__file__).with_name("RESULTS.md")
# The performance spec, as a path from the repository root (it sits beside the repository): the
# report is committed, and an absolute path would only name the machine the benchmarks ran on.
SPEC = "../shared/spec/performance.md"


def render_table(rows: list[Row]) -> str:
    header = "| metric | ours | reference | ratio | target | verdict |\n|---|---|---|---|---|---|\n"
    body = "".join(f"| {r.metric} | {r.ours} | {r.reference} | {r.ratio} | {r.target} | {r.verdict} |\n" for r in rows)
    return header + body


def render_notes(rows: list[Row]) -> str:
    return "".join(f"- **{r.metric}**: {r.notes}\n" for r in rows if r.notes)


def render_markdown(
    rows: list[Row], facts: dict[str, str], cfg: BenchConfig, durations: dict[str, float], started: datetime
) -> str:
    missed = [r.metric for r in rows if r.verdict in ("MISSED", "ERROR")]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench` on {started:%Y-%m-%d %H:%M} UTC "
        f"({'quick mode: sizes are tiny, figures mean nothing' if cfg.quick else f'{cfg.runs} runs per metric'}). "
        "Each figure is the median of the runs, with min-max in parentheses; each ratio is computed per run "
        "against the reference measured in that same run, then the median taken. Targets: "
        f"`{SPEC}` (from the repository root).",
        "",
        render_table(rows),
        f"Targets missed: {', '.join(missed) if missed else 'none'}.",
        "",
        "## Notes",
        "",
        render_notes(rows),
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in facts.items()),
        f"- load average at end: {load_average()}",
        "- seconds per metric: " + ", ".join(f"{k} {v:.0f}" for k, v in durations.items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("metrics", nargs="*", help=f"any of {', '.join(METRICS)} (default: all)")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--runs", type=int, default=None, help="runs per metric (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database files)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="record py-spy profiles of the measured processes into this dir"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.metrics if name not in METRICS]
    if unknown:
        parser.error(f"unknown metrics: {', '.join(unknown)} (choose from {', '.join(METRICS)})")
    names = args.metrics or list(METRICS)
    cfg = BenchConfig(
        quick=args.quick, runs=args.runs or (1 if args.quick else 3), keep=args.keep, profile_dir=args.profile
    )
    out = args.out or (RESULTS if not args.metrics and not cfg.quick else None)

    started = datetime.now(UTC)
    env = BenchEnv(cfg)
    rows: list[Row] = []
    durations: dict[str, float] = {}
    try:
        env.start()
        facts = machine_facts(env.pg.url)
        print(f"bench: {', '.join(names)} ({'quick' if cfg.quick else f'{cfg.runs} runs'}); temp dir {env.root}")
        for name in names:
            t0 = time.monotonic()
            print(f"bench: {name} ...", flush=True)
            try:
                module = importlib.import_module(METRICS[name])
                new_rows: list[Row] = module.run(env, cfg)
            except Exception as exc:
                traceback.print_exc()
                new_rows = [error_row(name, exc)]
            durations[name] = time.monotonic() - t0
            for row in new_rows:
                print(f"  {row.metric}: ours {row.ours} | ref {row.reference} | ratio {row.ratio} | {row.verdict}")
            rows.extend(new_rows)
    finally:
        env.close()
    text = render_markdown(rows, facts, cfg, durations, started)
    print()
    print(render_table(rows))
    print(render_notes(rows))
    if out is not None:
        out.write_text(text, encoding="utf-8")
        print(f"bench: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
