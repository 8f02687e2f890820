"""Metric 5, cold start with the local launcher: insert -> handler start in a NEW machine, p50.

Ours: the dispatcher runs in this process (leader, local launcher, production poll settings) and
each sample inserts one `stamp` job (bench/functions.py) while no machine is live, so the
dispatcher wakes on NOTIFY, launches `python -m functions.machine` (MACHINE_MAX_JOBS=1), and the
new machine boots, claims the job and runs it. Latency = handler start - just before the INSERT.

Reference: the wall time of `python -c pass` with the same interpreter (median of as many runs).

Also checked: a webhooks machine running a real delivery (to a loopback receiver) imports
neither Pillow nor WeasyPrint (`python -X importtime`), and its heaviest imports are listed.
"""

from __future__ import annotations

import asyncio
import http.server
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from functions.registry import machine_program
from shared.settings import Settings

from .harness import PYTHON, QUERIES, BenchConfig, BenchEnv, Row, Spread, percentile, sql_rows, verdict
from .ingress import reference_params
from .pickup import read_stamps, stamp_job_params

NAME = "cold"
P50_TARGET_MS = 250.0
FORBIDDEN = ("PIL", "weasyprint")


async def cold_samples(settings: Settings, samples: int, stamp_file: Path) -> tuple[list[float], list[list[float]]]:
    """Latencies (ms) and, per sample, two phases (ms): insert -> machine recorded as launched
    (dispatcher wake-up, reconciler, scaler, Popen), and launched -> handler start (the new
    machine's interpreter, imports, pool, boot write, claim)."""
    from functions.dispatcher.leader import Dispatcher
    from shared.db.pool import open_pool
    from shared.launchers.local import LocalLauncher

    pool = await open_pool(settings.database_url, max_size=5)
    launcher = LocalLauncher(program=machine_program(), settings=settings)
    dispatcher = Dispatcher(settings, pool, launcher)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    insert = QUERIES["raw_insert_job"].rstrip(";") + " RETURNING id"
    latencies: list[float] = []
    phases: list[list[float]] = []
    try:
        conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
        async with conn:
            await _until(lambda: dispatcher.role == "leader", 30, "dispatcher leadership")
            for i in range(samples + 1):  # the first one warms the OS page cache: not counted
                await _until_async(lambda: _no_live_machines(conn), 60, "machines to exit")
                t0 = time.time()
                cur = await conn.execute(insert, stamp_job_params(stamp_file))
                row = await cur.fetchone()
                assert row is not None
                key = str(row[0])
                await _until(lambda k=key: k in read_stamps(stamp_file), 60, "the new machine's handler")  # type: ignore[misc]
                if i > 0:
                    at = read_stamps(stamp_file)[key]
                    latencies.append((at - t0) * 1000)
                    cur = await conn.execute(QUERIES["machine_times"], {"job_id": int(key)})
                    times = await cur.fetchone()
                    if times is not None:
                        launched = float(times[0])
                        phases.append([(launched - t0) * 1000, (at - launched) * 1000])
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await launcher.aclose()
        await pool.close()
    return latencies, phases


async def _no_live_machines(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute(QUERIES["live_machine_count"])
    row = await cur.fetchone()
    return row is not None and row[0] == 0


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def _until_async(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def python_pass_ms(runs: int) -> list[float]:
    out = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run([PYTHON, "-c", "pass"], check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out[1:]


def import_ms(runs: int) -> float:
    """Median wall ms of a fresh interpreter importing what a default-queue machine imports at boot."""
    code = "import functions.machine, functions.handlers.default, bench.functions"
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([PYTHON, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
        out.append((time.perf_counter() - t0) * 1000)
    return percentile(out, 50)


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def receiver() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def webhooks_machine_imports(env: BenchEnv) -> tuple[list[str], float, list[tuple[str, float]], str]:
    """(forbidden modules imported, total import ms, heaviest top-level imports, job state) of a
    webhooks machine that delivers one webhook."""
    database_url = env.database("imports")
    settings = env.settings(database_url, outbound_allow_private=True, outbound_allowlist=["127.0.0.1"])
    with receiver() as url:
        # The same row the ingress writes, with one attempt: a failed delivery must not be retried.
        body = {"url": url, "event": "bench.ping", "payload": {"n": 1}}
        params = {**reference_params(body), "max_attempts": 1}
        sql_rows(database_url, QUERIES["raw_insert_job"], params)
        machine_env = env.child_env(
            settings, JOB_QUEUE="webhooks", MACHINE_ID="bench-imports", MACHINE_MAX_JOBS="1", MACHINE_IDLE_SECONDS="0"
        )
        done = env.run_child([PYTHON, "-X", "importtime", "-m", "functions.machine"], machine_env, timeout=120)
    state = sql_rows(database_url, "SELECT state FROM jobs WHERE queue = 'webhooks'")[0][0]
    modules: list[str] = []
    top: list[tuple[str, float]] = []
    total_us = 0
    for line in done.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if not match:
            continue
        name = match.group(4)
        modules.append(name)
        if len(match.group(3)) <= 1:  # a top-level import
            total_us += int(match.group(2))
            top.append((name, int(match.group(2)) / 1000))
    forbidden = sorted({m for m in modules if m.split(".")[0] in FORBIDDEN})
    top.sort(key=lambda item: -item[1])
    return forbidden, total_us / 1000, top[:6], str(state)


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    samples = cfg.n(10, 2)
    ours50: list[float] = []
    ref50: list[float] = []
    ratios: list[float] = []
    everything: list[float] = []
    all_phases: list[list[float]] = []
    for _ in range(cfg.runs):
        database_url = env.database("cold")
        settings = env.settings(
            database_url,
            default_function_modules=["bench.functions"],
            machine_max_jobs=1,
            machine_idle_seconds=0,
            machine_concurrency=1,
        )
        stamp_file = env.scratch("cold") / "stamps.txt"
        ours, phases = asyncio.run(cold_samples(settings, samples, stamp_file))
        all_phases += phases
        ref = python_pass_ms(samples)
        everything += ours
        ours50.append(percentile(ours, 50))
        ref50.append(percentile(ref, 50))
        ratios.append(percentile(ours, 50) / percentile(ref, 50))
    o50 = Spread.of(ours50)
    forbidden, webhooks_import_ms, heaviest, state = webhooks_machine_imports(env)
    heavy = ", ".join(f"{name} {ms:.0f} ms" for name, ms in heaviest)
    split = " / ".join(f"{percentile([p[i] for p in all_phases], 50):.0f}" for i in range(2)) if all_phases else "?"
    boot_imports = import_ms(3)
    return [
        Row(
            "cold start, local launcher: insert -> handler start in a new machine, p50",
            o50.fmt(" ms", 0),
            Spread.of(ref50).fmt(" ms", 1) + " (`python -c pass`)",
            Spread.of(ratios).fmt("x", 1),
            f"≤ {P50_TARGET_MS:g} ms",
            verdict(o50.median <= P50_TARGET_MS),
            f"{samples} launches per run (one warm-up launch first, not counted), dispatcher in-process with "
            f"production poll settings; p90 over all runs {percentile(everything, 90):.0f} ms. Median phases (ms): "
            f"insert -> machine recorded as launched (dispatcher) / launched -> handler start (new machine): "
            f"{split}; of the latter, `python -c 'import functions.machine, functions.handlers.default'` takes "
            f"{boot_imports:.0f} ms",
        ),
        Row(
            "cold start: webhooks machine imports neither Pillow nor WeasyPrint",
            "imports: " + (", ".join(forbidden[:5]) if forbidden else "neither"),
            "—",
            "—",
            "no PIL, no weasyprint",
            verdict(not forbidden and state == "completed"),
            f"`python -X importtime -m functions.machine` delivering one webhook to a loopback receiver "
            f"(job ended {state}); imports took {webhooks_import_ms:.0f} ms in all, heaviest top-level: {heavy}",
        ),
    ]
