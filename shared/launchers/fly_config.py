"""What a function machine looks like on Fly: guest size per queue, metadata, and the create body.

Pure functions, no I/O. Field names follow the Machines API reference (section 5): `init.cmd`,
`guest`, `auto_destroy`, `restart.policy`, `metadata`, `stop_config`, `dns`.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Final

from pydantic import SecretStr

from shared.functions import Guest
from shared.settings import Settings

from .base import MachineProgram

# Seconds between SIGTERM and SIGKILL when a machine is stopped: the machine's grace period to
# finish or hand back what it holds. Sent as a Go duration string (reference 2.3).
STOP_TIMEOUT_SECONDS: Final = 30

# Metadata keys (free-form, filterable in List; `fly_*` keys are reserved by Fly).
META_ROLE: Final = "cp_role"
ROLE_FUNCTION: Final = "function-machine"  # the marker that a machine is ours
META_QUEUE: Final = "cp_queue"
META_JOB_ID: Final = "cp_job_id"
META_LAUNCH_ID: Final = "cp_launch_id"  # unique per launch: finds a "silent success" after a 408
META_POOL: Final = "cp_pool"  # "warm" on warm-pool machines
META_POOL_CONFIG: Final = "cp_pool_config"  # fingerprint of the config a pool machine was made with


def _secret_env_names() -> frozenset[str]:
    names = {"DATABASE_URL", "DATABASE_DIRECT_URL", "AWS_ACCESS_KEY_ID", "SMTP_USER"}
    for name, field in Settings.model_fields.items():
        if field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation):
            names.add(name.upper())
    return frozenset(names)


# Service settings that must reach a Fly machine only through the worker app's secrets: the
# machine config is readable by anyone holding the API token, and is echoed in API responses.
SECRET_ENV_NAMES: Final = _secret_env_names()


def public_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Split `env` into what may go into a machine config and the names that were dropped."""
    kept = {k: v for k, v in env.items() if k.upper() not in SECRET_ENV_NAMES}
    return kept, sorted(set(env) - set(kept))


def function_metadata(*, queue: str, job_id: int | None, launch_id: str) -> dict[str, str]:
    """Metadata of an on-demand function machine."""
    metadata = {META_ROLE: ROLE_FUNCTION, META_QUEUE: queue, META_LAUNCH_ID: launch_id}
    if job_id is not None:
        metadata[META_JOB_ID] = str(job_id)
    return metadata


def pool_fingerprint(*, image: str, guest: Guest, env: Mapping[str, str]) -> str:
    """A short digest of what a warm-pool machine was built from; a change retires the pool."""
    material = json.dumps({"image": image, "guest": asdict(guest), "env": dict(sorted(env.items()))}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def create_body(
    *,
    settings: Settings,
    program: MachineProgram,
    queue: str,
    env: Mapping[str, str],
    metadata: Mapping[str, str],
    skip_launch: bool = False,
    auto_destroy: bool = True,
) -> dict[str, Any]:
    """The `POST /v1/apps/{app}/machines` body for one function machine of `queue` running `program`.

    Mirrors flyctl's release-command machine and FLAME (reference 5.4): `init.cmd`, restart
    policy `no` with `auto_destroy` (which only works with policy `no`), no services, and
    `dns.skip_registration`. Raises ValueError when WORKER_IMAGE is unset.
    """
    if not settings.worker_image:
        raise ValueError("WORKER_IMAGE is required for the fly launcher")
    config: dict[str, Any] = {
        "image": settings.worker_image,
        "init": {"cmd": list(program.command)},
        "env": dict(env),
        "guest": asdict(program.guests(queue)),
        "auto_destroy": auto_destroy,
        "restart": {"policy": "no"},
        "stop_config": {"signal": "SIGTERM", "timeout": f"{STOP_TIMEOUT_SECONDS}s"},
        "dns": {"skip_registration": True},
        "metadata": dict(metadata),
    }
    body: dict[str, Any] = {"config": config}
    if settings.fly_region:
        body["region"] = settings.fly_region
    if skip_launch:
        body["skip_launch"] = True
    return body
