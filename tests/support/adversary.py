"""The live environment of the adversarial test (tests/test_adversary.py) and its small helpers.

The environment is the whole service on loopback: its own Postgres cluster (so the test may
restart it), the session's moto S3 with a fresh bucket, the API with the dispatcher in-process,
and the local launcher's machine processes. The webhooks queue is paused, so every completion
callback stays a row the test can count (no delivery is attempted). `stopped` lists machines the
test froze with SIGSTOP; `resume_all()` wakes them, and leaving the environment always does.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, PngImagePlugin

from functions.registry import seed_queues
from infra.local.postgres import LocalPostgres
from infra.local.s3 import LocalS3
from shared import telemetry
from shared.db.migrate import migrate
from shared.storage import Storage
from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app, wait_until

RESCUE_AFTER_SECONDS = 5  # heartbeats every 0.5 s: a frozen or killed holder is rescued within ~6 s


@dataclass
class AdversaryEnv:
    app: LiveApp
    pg: LocalPostgres
    storage: Storage
    effects_dir: Path
    stopped: dict[int, str] = field(default_factory=dict)  # pid -> machine id, frozen by the test
    ever_stopped: set[str] = field(default_factory=set)  # machine ids the test ever froze
    restarted_at: float = -1e9  # time.monotonic() of the last database restart
    dispatcher_errors: list[str] = field(default_factory=list)  # why the in-process dispatcher lost leadership

    @property
    def bucket(self) -> str:
        return self.storage.bucket

    def sql(self, query: str, params: tuple | dict | None = None) -> list[tuple]:
        return self.app.sql(query, params)

    def health(self) -> httpx.Response:
        with httpx.Client(base_url=self.app.url, trust_env=False, timeout=10) as client:
            return client.get("/health")

    def metrics(self) -> str:
        with httpx.Client(base_url=self.app.url, trust_env=False, timeout=10) as client:
            return client.get("/metrics").text

    def resume_all(self) -> None:
        for pid in list(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            del self.stopped[pid]

    def object_exists(self, key: str) -> bool:
        try:
            self.storage.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # botocore ClientError: 404 when gone
            if "404" in str(exc) or "Not Found" in str(exc):
                return False
            raise
        return True


@contextlib.contextmanager
def adversary_env(tmp_path: Path, s3: LocalS3) -> Iterator[AdversaryEnv]:
    pg = LocalPostgres(tmp_path / "pg", durable=False)
    pg.start()
    try:
        migrate(pg.url)
        settings = make_settings(
            pg.url,
            s3,
            default_function_modules=["tests.support.adversary_functions"],
            local_machine_log_dir=str(tmp_path / "machine-logs"),
            lifeline_rescue_after=RESCUE_AFTER_SECONDS,
            rate_limit_per_minute=1_000_000,  # rate limiting is not under test; every check is a request
            machine_idle_seconds=2.0,
            machine_concurrency=2,
            queue_default_limit=3,
            queue_documents_limit=2,
            queue_images_limit=2,
            queue_exports_limit=2,
            worker_default_timeout=30_000,
        )
        seed_queues(pg.url, settings)
        storage = Storage(settings)
        storage.ensure_bucket()
        effects = tmp_path / "effects"
        effects.mkdir()
        with live_app(settings) as app:
            env = AdversaryEnv(app=app, pg=pg, storage=storage, effects_dir=effects)

            def on_event(event: telemetry.Event) -> None:
                if event.name == "plugin:error":
                    env.dispatcher_errors.append(str(event.get("error"))[:300])

            unsubscribe = telemetry.subscribe(on_event)
            try:
                with app.admin() as admin:
                    paused = admin.post("/admin/queues/webhooks/pause")
                assert paused.status_code == 200, paused.text
                wait_until("the dispatcher to lead", lambda: env.health().json().get("dispatcher") == "leader")
                yield env
            finally:
                unsubscribe()
                env.resume_all()
    finally:
        pg.destroy()


def is_descendant(pid: int) -> bool:
    """Whether `pid` is a process this test started (a child or grandchild: machines are forked
    by the fork server, itself our child). Nothing else is ever signalled."""
    me = os.getpid()
    for _ in range(4):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me:
            return True
        if ppid <= 1:
            return False
        pid = ppid
    return False


def presigned_key(url: str, bucket: str) -> str | None:
    """The object key a presigned (path-style) URL reaches, as an HTTP client sends it (dot
    segments resolved), or None when it does not point into the bucket."""
    path = urllib.parse.unquote(httpx.URL(url).path)
    prefix = f"/{bucket}/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def walk_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, string) for every string in a JSON value."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from walk_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk_strings(item, f"{path}.{index}")


def tenant_png(color: tuple[int, int, int], marker: str) -> bytes:
    """A 16x16 PNG of one colour carrying `marker` in a text chunk (uploads are recognisable)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("marker", marker)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue() + marker.encode()  # trailing bytes: kept verbatim, ignored by decoders


def mean_color(data: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        pixels = list(rgb.getdata())  # type: ignore[arg-type]
    return tuple(sum(p[i] for p in pixels) // len(pixels) for i in range(3))


_METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if not match or match["name"] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match["value"])
    return total


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate` until it is truthy (True) or `timeout` passes (False); never raises."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
