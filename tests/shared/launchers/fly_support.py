"""Shared by the FlyLauncher tests: a fake worker image, settings pointing at the emulator, specs.

The emulated machines run a stand-in `functions.machine` (written to a temp dir that comes first
on the machines' PYTHONPATH) whose behaviour the test picks through FAKE_MACHINE in the launch
env: `exit:N` exits with N, `sleep` runs until SIGTERM and then exits 0 (touching
FAKE_MACHINE_READY once its handler is in place: `started` does not mean ready).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.fly_emulator import Emulator, running_emulator
from infra.fly_emulator.supervisor import REPO_ROOT
from shared.launchers.base import MachineSpec
from shared.launchers.fly_api import RetryPolicy
from shared.launchers.fly_config import META_LAUNCH_ID
from shared.settings import Settings

TOKEN = "fm2_launcher-test-token"
APP = "cp-worker"
IMAGE = "registry.fly.io/cp-worker:test"
MACHINES = f"/v1/apps/{APP}/machines"
FAST = RetryPolicy(attempts=4, initial_seconds=0.01, max_seconds=0.05, jitter_seconds=0.01)
WORKER_SECRETS = {"DATABASE_URL": "postgresql://from-worker-secrets/db"}

FAKE_MACHINE = """
import json, os, signal, sys, time
if os.environ.get("FAKE_MACHINE_OUT"):
    with open(os.environ["FAKE_MACHINE_OUT"], "w") as out:
        json.dump(dict(os.environ), out)
kind, _, arg = os.environ.get("FAKE_MACHINE", "exit:0").partition(":")
if kind == "exit":
    sys.exit(int(arg))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if os.environ.get("FAKE_MACHINE_READY"):
    open(os.environ["FAKE_MACHINE_READY"], "w").close()
while True:
    time.sleep(0.05)
"""


@contextmanager
def fake_image_emulator(fake_root: Path, **options: Any) -> Iterator[Emulator]:
    """The emulator, its machines running FAKE_MACHINE as `functions.machine`."""
    (fake_root / "functions").mkdir()
    (fake_root / "functions" / "__init__.py").write_text("")
    (fake_root / "functions" / "machine.py").write_text(FAKE_MACHINE)
    # `python -m` puts the working directory first on sys.path, so the stand-in must be the workdir.
    with running_emulator(
        WORKER_SECRETS, token=TOKEN, apps=[APP], workdir=fake_root, pythonpath=[fake_root, REPO_ROOT], **options
    ) as emulator:
        yield emulator


def fly_settings(emu: Emulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "launcher": "fly",
        "fly_api_token": TOKEN,
        "fly_api_hostname": emu.url,
        "fly_worker_app": APP,
        "worker_image": IMAGE,
        "fly_region": "iad",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def spec(queue: str = "images", job_id: int | None = 42, /, **env: str) -> MachineSpec:
    base = {"JOB_QUEUE": queue, "MACHINE_MAX_JOBS": "1", "MACHINE_IDLE_SECONDS": "1"}
    if job_id is not None:
        base["JOB_ID"] = str(job_id)
    return MachineSpec(queue=queue, job_id=job_id, env={**base, **env})


def creates_for(emu: Emulator, machine_id: str) -> list[Any]:
    """The create requests whose launch id is that of `machine_id`."""
    machine = emu.machine(machine_id)
    assert machine is not None
    launch_id = machine["config"]["metadata"][META_LAUNCH_ID]
    posts = emu.requests_to("POST", MACHINES)
    return [r for r in posts if r.json and meta(r.json).get(META_LAUNCH_ID) == launch_id]


def meta(machine: dict[str, Any]) -> dict[str, str]:
    metadata: dict[str, str] = machine["config"].get("metadata") or {}
    return metadata


async def wait_state(emu: Emulator, machine_id: str, *states: str) -> dict[str, Any]:
    return await asyncio.to_thread(emu.wait_for_state, machine_id, *states)
