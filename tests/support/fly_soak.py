"""The chaos soak through LAUNCHER=fly: dispatcher -> FlyLauncher -> emulator -> real machine processes.

Jobs go to every queue at a steady rate (cheap ones: `record_run` on default writes one marker file
per execution; webhooks go to a loopback receiver; emails to a local SMTP server; small images,
invoices and exports) while Fly has a bad day: the emulator's rate limiter is on, and every few
seconds a random set of faults is switched on (5xx, resets and 429s on any call, machines
invisible after create, image pulls with 412 on start/stop, no capacity in the primary region,
OOM kills, machines that never boot or whose launch fails), plus a short revoked-token episode.

At the end (`SoakReport.problems()` is empty when all holds): no job lost (every job final and
completed), no side effect more often than the attempts recorded on its job (and never twice for
one attempt), no machine left in the emulator besides the warm pool's idle ones, one leadership
for the whole run, and no action called faster than Fly's documented limits (the emulator's
recorder replays every call through Fly's token buckets). Lost and duplicated are judged from job
states, attempts and side-effect counters only.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from functions.registry import seed_queues
from infra.fly_emulator import ActionRate, Chaos, Emulator, running_emulator
from shared import telemetry
from shared.storage import Storage
from shared.webhook_signing import webhook_id
from tests.conftest import make_settings
from tests.support import images
from tests.support.live import LiveApp, live_app
from tests.support.receivers import Receiver, http_receiver
from tests.support.smtp import SmtpTestServer, running_smtp_server

TOKEN = "fly-soak-token"
WORKER_APP = "cp-worker"
FINAL = frozenset({"completed", "discarded", "cancelled"})
# Share of jobs per queue: cheap ones mostly, every queue at least a little.
MIX = (("default", 0.6), ("webhooks", 0.17), ("emails", 0.1), ("images", 0.06), ("exports", 0.04), ("documents", 0.03))


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakConfig:
    seconds: float  # how long jobs keep coming at `jobs_per_second` (longer when the ingress is slow)
    jobs_per_second: float = 20.0  # about what this 2-core box sustains under the faults below
    seed: int = 20261201

    @property
    def jobs(self) -> int:
        """How many jobs the soak posts: `seconds` worth at `jobs_per_second`."""
        return max(1, round(self.seconds * self.jobs_per_second))

    @property
    def drain_seconds(self) -> float:
        """After the last job: time to finish everything."""
        return max(150.0, self.seconds / 4)


@dataclass
class SoakReport:
    jobs: int = 0
    by_queue: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    retried: int = 0  # jobs that needed more than one attempt
    rescued: int = 0  # jobs the lifeline took back from a machine that died holding them
    machines_oom_killed: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    rates: dict[str, ActionRate] = field(default_factory=dict)
    limiter_rejections: int = 0
    machines_created: int = 0
    machines_left: list[str] = field(default_factory=list)
    pool_machines_idle: int = 0
    leaderships: int = 0
    dispatcher_errors: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent per phase
    backlog: dict[str, int] = field(default_factory=dict)  # jobs not final when posting stopped, per queue
    details: list[str] = field(default_factory=list)  # rows of the first duplicated jobs

    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} jobs lost: {self.lost[:10]}")
        if self.duplicated:
            found.append(f"{len(self.duplicated)} side effects duplicated: {self.duplicated[:10]}")
        if self.machines_left:
            found.append(f"machines left: {self.machines_left}")
        if self.leaderships != 1:
            found.append(f"led {self.leaderships} times")
        over = {a: r.over_limit for a, r in self.rates.items() if r.over_limit}
        if over or self.limiter_rejections:
            found.append(f"calls over Fly's limits: {over}, limiter 429s: {self.limiter_rejections}")
        return found

    def lines(self) -> list[str]:
        out = [
            f"fly soak: {self.jobs} jobs in {self.seconds:.0f} s ({dict(self.by_queue)})",
            "  phases: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.phases.items()),
            f"  backlog when posting stopped: {self.backlog}",
            f"  final states: {dict(self.states)}; retried: {self.retried}; rescued from dead machines:"
            f" {self.rescued} (machines OOM-killed: {self.machines_oom_killed})",
            f"  lost: {len(self.lost)}  duplicated: {len(self.duplicated)}  machines left: {len(self.machines_left)}"
            f" (+{self.pool_machines_idle} idle warm-pool machines, by design)",
            *[f"    {d}" for d in [*self.duplicated[:8], *self.details]],
            f"  machines created: {self.machines_created}; leaderships: {self.leaderships}",
            f"  faults injected: {dict(sorted(self.faults.items()))}; limiter 429s: {self.limiter_rejections}",
            "  API calls per action (calls, mean/s, busiest second of one identifier, over Fly's limit):",
        ]
        for action, rate in sorted(self.rates.items()):
            out.append(
                f"    {action:<8} {rate.calls:>6}  {rate.per_second:6.2f}/s  busiest {rate.busiest_second:>2}/s"
                f"  over {rate.over_limit}"
            )
        return out


@contextmanager
def _watch_leadership() -> Iterator[Counter[str]]:
    seen: Counter[str] = Counter()

    def keep(event: telemetry.Event) -> None:
        if event.name == "plugin:start" and event.get("role") == "leader":
            seen["leader"] += 1
        elif event.name == "plugin:error" and event.get("plugin") == "dispatcher":
            seen["error"] += 1

    unsubscribe = telemetry.subscribe(keep)
    try:
        yield seen
    finally:
        unsubscribe()


class _BadDay(threading.Thread):
    """Switches random faults on and off every few seconds until stopped."""

    KINDS = ("call_5xx", "call_reset", "call_429", "invisible", "image_pull", "primary_full", "oom")
    RARE = ("never_boot", "fail_launch")

    def __init__(self, emulator: Emulator, seed: int, seconds: float) -> None:
        super().__init__(name="fly-bad-day", daemon=True)
        self._emulator = emulator
        self._random = random.Random(seed)
        self._seconds = seconds
        self.stop = threading.Event()

    def run(self) -> None:
        faults = self._emulator.faults
        started = time.monotonic()
        revoked = False
        while not self.stop.wait(self._random.uniform(2.0, 4.0)):
            elapsed = time.monotonic() - started
            if not revoked and elapsed > self._seconds / 3:
                revoked = True  # one short episode of a revoked token, then it is "rotated" back
                faults.fail_auth(401)
                faults.injected["auth_401"] += 1
                self.stop.wait(1.5)
                faults.fail_auth(None)
            on = {k for k in self.KINDS if self._random.random() < 0.7}
            rates: dict[str, Any] = {
                "call_5xx": 0.2,
                "call_reset": 0.08,
                "call_429": 0.15,
                "invisible": 0.5,
                "image_pull": 0.5,
                "primary_full": 0.5,
                "oom": 0.3,
            }
            chosen = {k: v for k, v in rates.items() if k in on}
            chosen.update({k: 0.15 for k in self.RARE if self._random.random() < 0.5})
            if self._random.random() < 0.2:
                faults.unreachable_host()
                faults.injected["unreachable_host"] += 1
            faults.set_chaos(
                Chaos(
                    seed=self._random.randrange(1 << 30),
                    invisible_seconds=2.0,
                    image_pull_seconds=2.0,
                    oom_after_seconds=5.0,  # killed within 5 s of starting: mid-job, often
                    primary_region="iad",
                    **chosen,
                )
            )
        faults.set_chaos(None)


def _upload(app: LiveApp, data: bytes) -> str:
    with app.client() as client:
        ticket = client.post("/uploads", json={"filename": "s.png", "contentType": "image/png", "size": len(data)})
    ticket.raise_for_status()
    body = ticket.json()
    httpx.put(body["url"], content=data, headers=body["headers"], timeout=30, trust_env=False).raise_for_status()
    return str(body["key"])


def _body(queue: str, n: int, *, markers: Path, receiver: Receiver, image_key: str) -> dict[str, Any]:
    options = {"options": {"maxAttempts": 10}}
    if queue == "default":
        seconds = random.Random(n).choice((0.0, 0.05, 0.2))
        return {"function": "record_run", "args": {"marker_dir": str(markers), "seconds": seconds}, **options}
    if queue == "webhooks":
        return {"url": receiver.url, "event": "soak", "payload": {"n": n}, **options}
    if queue == "emails":
        return {"to": f"user{n}@example.com", "subject": f"soak {n}", "text": "hello", **options}
    if queue == "images":
        return {
            "imageId": f"soak-{n}",
            "sourceKey": image_key,
            "operations": {"resize": {"width": 16, "height": 16, "fit": "inside"}, "format": "png"},
            **options,
        }
    if queue == "documents":
        item = {"description": "Soak", "quantity": 1, "unitPrice": 1}
        data = {"number": f"S-{n}", "date": "2026-12-01", "seller": {"name": "S"}, "customer": {"name": "C"}}
        return {"template": "invoice", "filename": f"S-{n}.pdf", "data": {**data, "items": [item]}, **options}
    return {"dataset": "jobs", "format": "csv", "filters": {"queue": "documents"}, **options}


def _post_jobs(app: LiveApp, config: SoakConfig, **context: Any) -> dict[int, tuple[str, int]]:
    """Post `config.jobs` jobs, paced at `config.jobs_per_second`; returns job id -> (queue, n).

    The count is fixed, not the time: on a loaded box the ingress answers slower and posting takes
    longer than `config.seconds`, but the soak still judges every job it meant to send.
    """
    chooser = random.Random(config.seed)
    queues, weights = zip(*MIX, strict=True)
    posted: dict[int, tuple[str, int]] = {}
    started = time.monotonic()
    with app.client() as client:
        n = 0
        while n < config.jobs:
            due = min(config.jobs, int((time.monotonic() - started) * config.jobs_per_second) + 1)
            while n < due:
                queue = chooser.choices(queues, weights)[0]
                response = client.post(f"/jobs/{queue}", json=_body(queue, n, **context))
                response.raise_for_status()
                posted[int(response.json()["id"])] = (queue, n)
                n += 1
            time.sleep(0.02)
    return posted


def _wait_final(app: LiveApp, jobs: dict[int, tuple[str, int]], deadline: float) -> None:
    while time.monotonic() < deadline:
        rows = app.sql("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND state <> ALL(%s)", (list(jobs), list(FINAL)))
        if rows[0][0] == 0:
            return
        time.sleep(0.5)


def _wait_machines_gone(emulator: Emulator, deadline: float) -> None:
    while time.monotonic() < deadline and _working_machines(emulator):
        time.sleep(0.5)


def _idle_pool(machine: dict[str, Any]) -> bool:
    config = machine.get("config") or machine.get("incomplete_config") or {}
    pooled = (config.get("metadata") or {}).get("cp_pool") == "warm"
    return pooled and machine["state"] in ("created", "stopped")


def _working_machines(emulator: Emulator) -> list[dict[str, Any]]:
    return [m for m in emulator.not_destroyed() if not _idle_pool(m)]


def _side_effects(
    jobs: dict[int, tuple[str, int]], markers: Path, receiver: Receiver, smtp: SmtpTestServer, report: SoakReport
) -> Counter[int]:
    """Side effects per job: marker files (one per execution, named job-attempt-pid), webhook
    deliveries (by webhook-id) and emails (by subject). Runs of one attempt twice are duplicates."""
    runs: Counter[tuple[int, int]] = Counter()
    for marker in markers.iterdir():
        job_part, attempt_part, _ = marker.name.split("-", 2)
        runs[(int(job_part), int(attempt_part))] += 1
    per_job: Counter[int] = Counter()
    for (run_job, run_attempt), count in runs.items():
        per_job[run_job] += count
        if count > 1:
            report.duplicated.append(f"job {run_job} attempt {run_attempt} ran {count} times")
    ids = {webhook_id(j): j for j, (q, _) in jobs.items() if q == "webhooks"}
    for request in list(receiver.requests):
        if (job := ids.get(request.headers.get("webhook-id", ""))) is not None:
            per_job[job] += 1
    subjects = {f"soak {n}": j for j, (q, n) in jobs.items() if q == "emails"}
    for message in list(smtp.messages):
        if (job := subjects.get(str(message.parsed()["Subject"]))) is not None:
            per_job[job] += 1
    return per_job


def _judge(
    app: LiveApp,
    jobs: dict[int, tuple[str, int]],
    markers: Path,
    receiver: Receiver,
    smtp: SmtpTestServer,
    report: SoakReport,
) -> None:
    # Side effects first, attempts after: attempts only grow, so a machine still at work between
    # the two reads cannot make an effect look like it had no attempt.
    per_job = _side_effects(jobs, markers, receiver, smtp, report)
    rows = app.sql("SELECT id, state, attempt FROM jobs WHERE id = ANY(%s)", (list(jobs),))
    attempts = {int(r[0]): int(r[2]) for r in rows}
    for job_id, state, attempt in rows:
        report.states[state] += 1
        report.retried += attempt > 1
        if state != "completed":
            report.lost.append(int(job_id))
    report.lost += [j for j in jobs if j not in attempts]
    rescued = app.sql(
        """SELECT count(*) FROM jobs WHERE id = ANY(%s) AND errors @> '[{"kind": "rescued"}]'""", (list(jobs),)
    )
    report.rescued = int(rescued[0][0])
    report.machines_oom_killed = int(app.sql("SELECT count(*) FROM machines WHERE oom_killed")[0][0])
    for job, count in per_job.items():
        if count > attempts.get(job, 0):
            report.duplicated.append(f"job {job}: {count} side effects for {attempts.get(job)} attempts")
    if report.duplicated:
        suspects = [int(d.split()[1].rstrip(":")) for d in report.duplicated]
        details = app.sql(
            "SELECT id, queue, attempt, errors::text FROM jobs WHERE id = ANY(%s) ORDER BY id LIMIT 5", (suspects,)
        )
        report.details += [str(row) for row in details]


def run_fly_soak(database_url: str, s3: Any, tmp_path: Path, config: SoakConfig) -> SoakReport:
    """Run the soak; returns its report (see the module docstring for what it checks)."""
    report = SoakReport()
    markers = tmp_path / "markers"
    markers.mkdir()
    with (
        running_smtp_server() as smtp,
        http_receiver([(200, {}, 0.0)]) as receiver,
        _watch_leadership() as leadership,
    ):
        common: dict[str, Any] = {
            "default_function_modules": ["tests.support.functions"],
            "outbound_allowlist": ["127.0.0.1"],
            "email_from": "Soak <soak@cp.test>",
            "machine_max_jobs": 100,
            "queue_default_limit": 20,
            "machine_concurrency": 4,
            "machine_idle_seconds": 2.0,
            "lifeline_rescue_after": 20,
            "rate_limit_per_minute": 1_000_000,  # the API's per-tenant limit is not under test here
            **smtp.settings_overrides(),
        }
        machine_settings = make_settings(database_url, s3, **common)
        seed_queues(database_url, machine_settings)
        Storage(machine_settings).ensure_bucket()
        with running_emulator(base_env=machine_settings.machine_env(), token=TOKEN, apps=[WORKER_APP]) as emulator:
            settings = make_settings(
                database_url,
                s3,
                **common,
                bucket_name=machine_settings.bucket_name,
                launcher="fly",
                fly_api_hostname=emulator.url,
                fly_api_token=TOKEN,
                fly_worker_app=WORKER_APP,
                worker_image="registry.fly.io/cp-worker:soak",
                fly_regions=["iad", "ewr"],
                warm_pool_size=1,
                machine_boot_grace_seconds=8.0,  # covers the 2 s image pulls; bounds never-booting machines
                fly_leftover_seconds=5.0,
                fly_gone_confirm_seconds=5.0,
            )
            emulator.limiter.enabled = True
            emulator.faults.list_lag_seconds = 1.0
            emulator.faults.masked_state = ("pending", 0.5)  # a state the launcher does not know, briefly
            started = time.monotonic()
            with live_app(settings) as app:
                report.phases["setup"] = time.monotonic() - started
                image_key = _upload(app, images.png_with_alpha((32, 24)))
                bad_day = _BadDay(emulator, config.seed, config.seconds)
                bad_day.start()
                try:
                    jobs = _post_jobs(app, config, markers=markers, receiver=receiver, image_key=image_key)
                finally:
                    bad_day.stop.set()
                    bad_day.join(10)
                emulator.faults.set_chaos(None)
                emulator.faults.masked_state = None
                report.phases["posting"] = time.monotonic() - started - report.phases["setup"]
                backlog = app.sql(
                    "SELECT queue, count(*) FROM jobs WHERE state <> ALL(%s) GROUP BY queue", (list(FINAL),)
                )
                report.backlog = {str(queue): int(count) for queue, count in backlog}
                mark = time.monotonic()
                deadline = mark + config.drain_seconds
                _wait_final(app, jobs, deadline)
                report.phases["jobs draining"] = time.monotonic() - mark
                mark = time.monotonic()
                _wait_machines_gone(emulator, deadline)
                report.phases["machines going"] = time.monotonic() - mark
                report.seconds = time.monotonic() - started
                report.jobs = len(jobs)
                report.by_queue = Counter(queue for queue, _ in jobs.values())
                _judge(app, jobs, markers, receiver, smtp, report)
            report.faults = Counter(emulator.faults.injected)
            report.rates = emulator.rate_report()
            report.limiter_rejections = sum(emulator.limiter.rejected.values())
            report.machines_created = len(emulator.machines)
            report.machines_left = [f"{m['id']} ({m['state']})" for m in _working_machines(emulator)]
            report.pool_machines_idle = sum(_idle_pool(m) for m in emulator.not_destroyed())
        report.leaderships = leadership["leader"]
        report.dispatcher_errors = leadership["error"]
    return report
