"""The `fly` launcher: one Fly Machine per launch, in FLY_WORKER_APP, from WORKER_IMAGE.

Machines are ephemeral (`auto_destroy` with restart policy `no`, reference 5.2): the machine runs
the machine program (`python -m <module>`), exits when idle or done, and Fly removes it. Its env carries only
the launch contract (JOB_QUEUE, JOB_ID, MACHINE_*); database, storage and SMTP settings reach it
from the worker app's secrets. Metadata marks the machine as ours and names its queue, job and
launch, so `list_machines` can reconcile after a dispatcher restart and a 408 on create can be
resolved without creating a second machine (see fly_api).

With WARM_POOL_SIZE > 0, launches first start an idle pool machine (see fly_pool).

Fly on a bad day (issue 10): creates fall back through FLY_REGIONS on capacity and quota answers
(fly_api); calls are paced under Fly's per-action limits (fly_pacing), and one shared listing,
at most a couple of seconds old, serves the reconciler and the pool (fly_listing); a 401/403 raises the
token alert that `alerts()` reports until a call succeeds again (fly_alerts); and no single
answer ends a machine: a 404 or a state we do not know is `launching` until the evidence is
consistent, and machines Fly left behind are flagged `leftover` after a bound (fly_evidence).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx

from shared.errors import LauncherRejected
from shared.settings import Settings

from .base import MachineProgram, MachineRef, MachineSpec, MachineStatus
from .fly_api import DEFAULT_RETRY, MachinesAPI, RetryPolicy
from .fly_config import (
    META_QUEUE,
    META_ROLE,
    ROLE_FUNCTION,
    STOP_TIMEOUT_SECONDS,
    create_body,
    function_metadata,
    public_env,
)
from .fly_evidence import Evidence
from .fly_listing import Listing
from .fly_pool import WarmPool, is_idle_pool_machine
from .fly_state import machine_metadata, machine_status

logger = logging.getLogger(__name__)

# Create answers at once (the boot continues asynchronously, reference 3.1), so a read timeout
# well under a minute is plenty; connecting should be quick from inside Fly's network.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0, pool=5.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=20, max_keepalive_connections=10)


def build_http_client() -> httpx.AsyncClient:
    """The client FlyLauncher uses when none is injected; environment proxies are ignored."""
    return httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=DEFAULT_LIMITS, trust_env=False)


class FlyLauncher:
    """Launcher on the Fly Machines API."""

    kind = "fly"

    def __init__(
        self,
        settings: Settings,
        *,
        program: MachineProgram,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        """Machines run `program` (its command, and its guest size per queue).

        Raises LauncherRejected when FLY_API_TOKEN, FLY_WORKER_APP or WORKER_IMAGE is unset."""
        token, app = settings.fly_api_token, settings.fly_worker_app
        if token is None or not token.get_secret_value():
            raise LauncherRejected("FLY_API_TOKEN is required for the fly launcher")
        if not app or not settings.worker_image:
            raise LauncherRejected("FLY_WORKER_APP and WORKER_IMAGE are required for the fly launcher")
        self._settings = settings
        self._program = program
        self._owns_http = http is None
        self._http = http or build_http_client()
        self._api = MachinesAPI(
            http=self._http,
            base_url=settings.fly_api_hostname,
            app=app,
            token=token,
            retry=retry,
        )
        self._evidence = Evidence(
            boot_grace_seconds=settings.machine_boot_grace_seconds,
            gone_confirm_seconds=settings.fly_gone_confirm_seconds,
            leftover_seconds=settings.fly_leftover_seconds,
        )
        self._regions: list[str | None] = list(settings.fly_placement) or [None]
        self._listing = Listing(
            lambda: self._api.list(metadata={META_ROLE: ROLE_FUNCTION}),
            on_fetched=self._sighted,
        )
        self._pool = (
            WarmPool(api=self._api, settings=settings, size=settings.warm_pool_size, program=program)
            if settings.warm_pool_size > 0
            else None
        )

    def __repr__(self) -> str:
        return f"FlyLauncher(app={self._settings.fly_worker_app!r})"

    async def launch(self, spec: MachineSpec) -> MachineRef:
        """Start a machine for `spec.queue`. Raises LauncherUnavailable (retry later) or LauncherRejected."""
        env, dropped = public_env(spec.env)
        if dropped:
            # A secret in a machine config would be readable through the API; Fly secrets carry it.
            logger.warning("secret settings left out of machine env", extra={"names": dropped, "queue": spec.queue})
        if self._pool is not None:
            listing = await self._listing.machines()
            ref = await self._pool.take(queue=spec.queue, env=env, listing=listing)
            if ref is not None:
                self._evidence.created(ref.id)
                logger.info("fly pool machine started", extra={"machineId": ref.id, "queue": spec.queue})
                return ref
        launch_id = uuid.uuid4().hex
        body = create_body(
            settings=self._settings,
            program=self._program,
            queue=spec.queue,
            env=env,
            metadata=function_metadata(queue=spec.queue, job_id=spec.job_id, launch_id=launch_id),
        )
        machine = await self._api.create(body, launch_id=launch_id, regions=self._regions)
        machine_id = str(machine["id"])
        self._evidence.created(machine_id)
        logger.info("fly machine created", extra={"machineId": machine_id, "queue": spec.queue, "jobId": spec.job_id})
        return MachineRef(
            id=machine_id,
            detail={
                "name": machine.get("name"),
                "region": machine.get("region"),
                "instance_id": machine.get("instance_id"),
                "launch_id": launch_id,
            },
        )

    async def stop(self, machine_id: str) -> None:
        """SIGTERM the machine (SIGKILL after the stop timeout); no error when it is already gone.

        A machine that is not running (never booted, or stopped) is destroyed instead, and so is
        one last seen left behind, so nothing stays. Raises LauncherUnavailable or LauncherRejected.
        """
        if self._evidence.was_leftover(machine_id):
            await self._api.destroy(machine_id, force=True)
            self._evidence.forget(machine_id)  # a listing taken before the destroy must not flag it again
            logger.info("fly machine left behind destroyed", extra={"machineId": machine_id})
            return
        stopped = await self._api.stop(machine_id, signal="SIGTERM", timeout_seconds=STOP_TIMEOUT_SECONDS)
        if stopped:
            return
        machine = await self._api.get(machine_id)
        if machine is None or machine.get("state") in ("destroying", "destroyed") or is_idle_pool_machine(machine):
            return
        await self._api.destroy(machine_id, force=True)

    async def status(self, machine_id: str) -> MachineStatus:
        """The machine's state. One Fly does not know is `launching` until 404s two reads apart
        (and past the boot grace of our create) say it is gone: then `exited`.
        Raises LauncherUnavailable or LauncherRejected."""
        machine = await self._api.get(machine_id)
        if machine is None:
            gone = self._evidence.missing(machine_id)
            return MachineStatus(id=machine_id, queue=None, state="exited" if gone else "launching")
        return machine_status(machine, leftover=self._evidence.seen(machine))

    async def list_machines(self, *, queue: str | None = None) -> list[MachineStatus]:
        """Our machines in the worker app, as listed at most a couple of seconds ago (idle warm-pool
        machines are capacity, not work, and left out). Raises LauncherUnavailable or LauncherRejected."""
        statuses = []
        for machine in await self._listing.machines():
            if is_idle_pool_machine(machine) or (
                queue is not None and machine_metadata(machine).get(META_QUEUE) != queue
            ):
                continue
            statuses.append(machine_status(machine, leftover=self._evidence.was_leftover(str(machine["id"]))))
        return statuses

    def _sighted(self, machines: list[dict[str, Any]]) -> None:
        for machine in machines:
            self._evidence.seen(machine)

    def alerts(self) -> list[dict[str, Any]]:
        """What needs a human now: the token alert while Fly rejects FLY_API_TOKEN (for /health)."""
        alert = self._api.auth.alert
        return [alert.view()] if alert is not None else []

    async def pool_filled(self) -> None:
        """Wait until the warm pool fills in flight are done (no-op without a pool)."""
        if self._pool is not None:
            await self._pool.filled()

    async def aclose(self) -> None:
        """Finish pool upkeep and close the HTTP client if we built it; machines keep running."""
        if self._pool is not None:
            await self._pool.aclose()
        if self._owns_http:
            await self._http.aclose()
