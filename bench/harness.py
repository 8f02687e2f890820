"""What every metric shares: a throwaway durable Postgres (not in quick mode), moto S3, the app in
its own process, child processes that cannot outlive the run, statistics, and the rows of the
results table."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, LiteralString

import httpx
import psycopg

from functions.registry import seed_queues
from infra.local.postgres import LocalPostgres, free_port
from infra.local.s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalS3
from shared.db.migrate import migrate
from shared.db.sql import parse_queries
from shared.settings import Settings
from shared.tokens import mint_token

from .cpu import cpu_seconds, postmaster_pid

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
JWT_SECRET = "bench-secret-bench-secret-bench-secret"
TENANT = "bench-tenant"
TEMPLATE_DB = "cp_bench_template"

# Named SQL of the benchmark itself (seeding and reading back), kept apart from the service's.
QUERIES = parse_queries((Path(__file__).with_name("queries.sql")).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# statistics


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Spread:
    """Median of several runs with the smallest and largest."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        vals = [v for v in values if not math.isnan(v)]
        if not vals:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(vals), min(vals), max(vals), len(vals))

    def fmt(self, unit: str = "", digits: int = 0) -> str:
        def one(v: float) -> str:
            return f"{v:,.{digits}f}"

        if self.n == 0:
            return "n/a"
        text = f"{one(self.median)}{unit}"
        if self.n > 1:
            text += f" ({one(self.lo)}-{one(self.hi)})"
        return text


# ---------------------------------------------------------------------------------------------
# results


@dataclass(slots=True)
class Row:
    """One line of the results table."""

    metric: str
    ours: str
    reference: str
    ratio: str
    target: str
    verdict: str  # "met", "MISSED", "info" or "ERROR"
    notes: str = ""


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def error_row(metric: str, exc: BaseException) -> Row:
    text = f"{type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")
    return Row(metric, "—", "—", "—", "—", "ERROR", text[:300])


# ---------------------------------------------------------------------------------------------
# the environment


@dataclass
class BenchConfig:
    quick: bool = False
    runs: int = 3
    keep: bool = False
    profile_dir: Path | None = None  # where metrics may write py-spy profiles (None: no profiling)

    def n(self, full: int, quick: int) -> int:
        """A size: `full` normally, `quick` in quick mode; BENCH_SCALE multiplies full sizes."""
        if self.quick:
            return quick
        return max(1, int(full * float(os.environ.get("BENCH_SCALE", "1"))))


@dataclass
class BenchEnv:
    """A durable Postgres cluster in a temp dir (fsync on: LocalPostgres(durable=True); not in quick
    mode), moto S3 on demand, and every child process started through `spawn`, all torn down by `close`."""

    config: BenchConfig
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cp-bench-")))
    pg: LocalPostgres = field(init=False)
    _s3: LocalS3 | None = None
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _log_paths: dict[int, Path] = field(default_factory=dict)
    _profilers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    server_pids: dict[str, int] = field(default_factory=dict)  # app_server URL -> its process id

    def __post_init__(self) -> None:
        # Quick mode proves the scripts run and its figures mean nothing: without fsync its commits,
        # CREATE DATABASE copies and CHECKPOINTs do not wait on the disk (the smoke test alone: 142 s, 150 with).
        self.pg = LocalPostgres(self.root / "pg", durable=not self.config.quick)

    def start(self) -> None:
        self.pg.start()
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        migrate(self.pg.url_for(TEMPLATE_DB))

    def close(self) -> None:
        for child in self._children:
            stop_process(child)
        self._children.clear()
        for profiler in self._profilers:  # py-spy writes its output once its target has exited
            try:
                profiler.wait(30)
            except subprocess.TimeoutExpired:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
        for log in self._logs:
            log.close()
        if self._s3 is not None:
            self._s3.stop()
        self.pg.destroy()
        if not self.config.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def s3(self) -> LocalS3:
        if self._s3 is None:
            self._s3 = LocalS3()
            self._s3.start()
        return self._s3

    def database(self, prefix: str) -> str:
        """A fresh migrated database (copied from the template); returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
        return self.pg.url_for(name)

    def settings(self, database_url: str, *, s3: bool = False, **overrides: Any) -> Settings:
        """Service settings for `database_url`: production defaults except what a bench needs."""
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": database_url,
            "jwt_secret": JWT_SECRET,
            "webhook_signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "bucket_name": f"cp-bench-{uuid.uuid4().hex[:8]}",
            "local_machine_log_dir": str(self.root / "machines"),
        }
        if s3:
            values.update(
                aws_endpoint_url_s3=self.s3.endpoint_url,
                aws_access_key_id=LOCAL_ACCESS_KEY,
                aws_secret_access_key=LOCAL_SECRET_KEY,
                aws_region="us-east-1",
            )
        values.update(overrides)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        seed_queues(database_url, settings)
        return settings

    def child_env(self, settings: Settings, **extra: str) -> dict[str, str]:
        """The environment of a service process: ours, the settings, the repo on the path."""
        env = {**os.environ, **settings.machine_env(), **extra}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.pop(name, None)
        return env

    def spawn(
        self, argv: list[str], env: dict[str, str], *, log_name: str, profile: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start a child whose output goes to a log file under the bench root; stopped by close()."""
        log_dir = self.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{log_name}-{uuid.uuid4().hex[:6]}.log"
        log = open(path, "ab")
        self._logs.append(log)
        child = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._children.append(child)
        self._log_paths[child.pid] = path
        if profile:
            self.attach_profiler(child, log_name)
        return child

    def run_child(self, argv: list[str], env: dict[str, str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a child to completion (killed after `timeout`), capturing its output."""
        return subprocess.run(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )

    def log_tail(self, child: subprocess.Popen[bytes], lines: int = 15) -> str:
        """The last lines a spawned child wrote (for error messages)."""
        path = self._log_paths.get(child.pid)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def attach_profiler(self, child: subprocess.Popen[bytes], name: str) -> None:
        """When profiling is on, attach `py-spy record` to `child` (collapsed stacks written into the
        profile dir when the child exits)."""
        if self.config.profile_dir is None:
            return
        py_spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
        self.config.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.config.profile_dir / f"{name}-{uuid.uuid4().hex[:6]}.txt"
        argv = [py_spy, "record", "--rate", "250", "--format", "raw", "--output", str(out), "--pid", str(child.pid)]
        self._profilers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def scratch(self, name: str) -> Path:
        path = self.root / "scratch" / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def stop_process(child: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; no error when it already exited."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def token(settings: Settings, *, tenant: str = TENANT, scopes: str = "jobs:write jobs:read") -> str:
    return mint_token(settings, subject="bench", tenant_id=tenant, scopes=scopes.split(), ttl_seconds=3600)


@contextlib.contextmanager
def app_server(env: BenchEnv, settings: Settings, *, run_dispatcher: bool = False) -> Iterator[str]:
    """The ingress under uvicorn (uvloop + httptools, one worker) in its own process; yields its URL."""
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "uvicorn",
        "functions.ingress.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--lifespan",
        "on",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    child_env = env.child_env(settings, RUN_DISPATCHER="true" if run_dispatcher else "false")
    child = env.spawn(argv, child_env, log_name="ingress-server", profile=True)
    url = f"http://127.0.0.1:{port}"
    env.server_pids[url] = child.pid
    try:
        wait_until(lambda: _healthy(url), timeout=60, what="ingress to answer /health", child=child)
        yield url
    finally:
        env.server_pids.pop(url, None)
        stop_process(child)


def cluster_cpu_seconds(pg: LocalPostgres) -> float:
    """CPU time of a whole Postgres cluster so far: the postmaster, its live children, and the
    children it has reaped (ended backends, counted in its cutime/cstime)."""
    return cpu_seconds(postmaster_pid(pg.data_dir), with_children=True)


def has_exited(child: subprocess.Popen[bytes]) -> bool:
    """Whether `child` has exited, without reaping it (wait_with_cpu still reads its CPU time)."""
    return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def wait_with_cpu(child: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait for `child` to exit (killed after `timeout`); (exit code, user + system CPU seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            child.kill()
            child.wait()
            raise TimeoutError(f"child {child.args!r} still running after {timeout:g}s")
        time.sleep(0.05)


def cpu_from_first_work(
    env: BenchEnv,
    child: subprocess.Popen[bytes],
    database_url: str,
    first_work_sql: LiteralString,
    params: dict[str, Any] | None = None,
    *,
    what: str,
) -> tuple[int, float, float]:
    """Wait until `first_work_sql` finds a row (the child's first claim: its start-up and imports
    left out), then for the child's exit: (exit code, the child's CPU seconds, the whole cluster's
    CPU seconds) between the two."""
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while not has_exited(child) and conn.execute(first_work_sql, params).fetchone() is None:
            if time.monotonic() - started > 600:
                child.kill()
                child.wait()
                raise RuntimeError(f"{what} claimed nothing in 600 s: {env.log_tail(child)}")
            time.sleep(0.002)
        child_cpu = 0.0 if has_exited(child) else cpu_seconds(child.pid)
        database_cpu = cluster_cpu_seconds(env.pg)
    code, child_cpu_end = wait_with_cpu(child, timeout=600)
    return code, child_cpu_end - child_cpu, cluster_cpu_seconds(env.pg) - database_cpu


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    child: subprocess.Popen[Any] | None = None,
) -> None:
    """Poll `predicate` until true. Raises TimeoutError (or RuntimeError when `child` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if child is not None and child.poll() is not None:
            raise RuntimeError(f"child exited with {child.returncode} while waiting for {what}")
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def checkpoint(database_url: str) -> None:
    """Flush dirty buffers so a checkpoint does not land in the middle of a measurement."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def sql_rows(database_url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def json_line(text: str) -> dict[str, Any]:
    """The last line of `text` that parses as a JSON object (children print results last)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    raise ValueError(f"no JSON result in output: {text[-500:]!r}")


# ---------------------------------------------------------------------------------------------
# machine facts


def machine_facts(database_url: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    facts["CPU"] = model or platform.processor() or "unknown"
    facts["cores (logical)"] = str(os.cpu_count())
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    facts["OS"] = f"{platform.system()} {platform.release()}"
    facts["Python"] = platform.python_version()
    with psycopg.connect(database_url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        facts["PostgreSQL"] = str(version[0]) if version else "?"
        durability = []
        for name in ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method"):
            row = conn.execute(f"SHOW {name}").fetchone()
            durability.append(f"{name}={row[0] if row else '?'}")
        facts["Postgres durability"] = ", ".join(durability)
    versions = []
    dists = ("psycopg", "uvicorn", "uvloop", "httptools", "starlette", "pgqueuer", "pyvips", "pillow", "weasyprint")
    for dist in dists:
        with contextlib.suppress(Exception):
            from importlib.metadata import version as dist_version

            versions.append(f"{dist} {dist_version(dist)}")
    facts["packages"] = ", ".join(versions)
    with contextlib.suppress(OSError):
        facts["load average at start"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return facts


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"
