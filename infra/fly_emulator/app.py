"""The emulator's HTTP surface: `/v1/apps/{app}/machines…` per the reference (sections 3 and 11).

Choices the reference leaves open are marked "unverified" and follow its recommendations: 412
for start from a running state and for delete of a running machine without force, 409 for lease
conflicts, 400 for "machine failed to reach desired state". Test hooks live under `/_emu/`.

Every API call passes, in order: the token (or an injected 401/403, faults.py), the per-action
rate limiter (ratelimit.py, when enabled), injected call faults, then the handler. Machines a
fault keeps invisible answer 404 to every per-machine call and are missing from list.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from . import wire
from .actions import classify
from .answers import (
    capacity_error,
    error,
    fault_answer,
    precondition_error,
    quota_error,
    silence_dropped_connections,
)
from .faults import Faults
from .guests import guest_error
from .machines import ACTIVE_STATES, STARTABLE_STATES, Lease, Machine, Store
from .ratelimit import RateLimiter
from .recorder import Recorder
from .supervisor import Supervisor

LEASE_HEADER = "fly-machine-lease-nonce"
_SETTLED = frozenset({"started", "stopped", "suspended", "failed", "destroyed"})
_WAITABLE = frozenset({"started", "stopped", "suspended", "destroyed", "failed", "settled"})


def _token_of(header: str) -> str:
    tok = header.strip()
    for scheme in ("Bearer ", "FlyV1 "):  # accept Bearer, Bearer FlyV1 and FlyV1 (reference 1)
        if tok.startswith(scheme):
            tok = tok[len(scheme) :].strip()
    return tok


@dataclass(slots=True, kw_only=True)
class EmulatorState:
    store: Store
    supervisor: Supervisor
    faults: Faults
    limiter: RateLimiter
    token: str
    apps: frozenset[str] | None
    default_region: str


Handler = Callable[[Request, EmulatorState], Awaitable[JSONResponse]]


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state: EmulatorState = request.app.state.emulator
        header = request.headers.get("authorization")
        if not header or not hmac.compare_digest(_token_of(header).encode(), _token_of(state.token).encode()):
            return error(401, "unauthorized")
        if state.faults.auth_status is not None and not request.url.path.startswith("/_emu/"):
            status = state.faults.auth_status
            return error(status, "unauthorized" if status == 401 else "forbidden: token not allowed for this app")
        app = request.path_params.get("app")
        if app is not None and state.apps is not None and app not in state.apps:
            return error(404, "app not found")
        action = classify(request.method, request.url.path)
        if action is None:
            return await handler(request, state)
        if not state.limiter.allow(*action):
            await request.body()
            return error(429, "rate limit exceeded")  # body unverified (reference 2.4)
        fault = state.faults.take_call(action[0])
        if fault is None:
            return await handler(request, state)
        status, acted = fault
        if acted:
            await handler(request, state)
        else:
            await request.body()  # read it anyway, so the recorder keeps what was sent
        return fault_answer(action[0], status)

    return endpoint


def _machine(request: Request, state: EmulatorState) -> Machine | JSONResponse:
    machine = state.store.visible(request.path_params["app"], request.path_params["machine_id"])
    return machine if machine is not None else error(404, "machine not found")


def _lease_conflict(request: Request, machine: Machine) -> JSONResponse | None:
    """Mutations on a leased machine need its nonce (reference 3.11; the 409 is mudflaps' choice)."""
    lease = machine.lease_active()
    if lease is not None and request.headers.get(LEASE_HEADER) != lease.nonce:
        return error(409, f"lease currently held by {lease.owner}")
    return None


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def create_machine(request: Request, state: EmulatorState) -> JSONResponse:
    body = await _json_body(request)
    config = body.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("image"), str) or not config["image"]:
        return error(422, "config.image is required")
    if (invalid := guest_error(config.get("guest"))) is not None:
        return error(422, f"invalid guest: {invalid}")  # status unverified; flyctl checks sizes client-side
    app = request.path_params["app"]
    taken = {m.name for m in state.store.in_app(app) if m.state != "destroyed"}
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        return error(422, "name must be a string")  # status unverified; real Fly refuses it
    if name and name in taken:
        return error(422, "Validation failed: Name has already been taken", code="name_taken")
    while not name or name in taken:  # a name Fly makes up is never refused as taken
        name = wire.machine_name()
    placed = _place(str(body.get("region") or state.default_region), state.faults)
    if isinstance(placed, JSONResponse):
        return placed
    machine = Machine(id=wire.machine_id(), app=app, name=str(name), region=placed, config=config)
    fate = state.faults.fate_of_new_machine()
    now = time.monotonic()
    machine.visible_at = now + fate.invisible_seconds
    machine.preparing_until = now + fate.image_pull_seconds
    machine.host_unreachable = fate.unreachable
    if fate.masked_state is not None:
        machine.masked = (fate.masked_state[0], now + fate.masked_state[1])
    machine.add_event("launch", "created", "user")
    nonce = None
    if body.get("lease_ttl"):
        nonce = wire.nonce()
        machine.lease = Lease(
            nonce=nonce,
            expires_at=int(time.time()) + int(body["lease_ttl"]),
            owner="emulator@localhost",
            description="",
            version=machine.instance_id,
        )
    state.store.add(machine)
    answer = machine.view(with_nonce=nonce)  # the answer says `created`; the boot goes on (reference 3.1)
    if not body.get("skip_launch"):
        state.supervisor.boot(machine)
    return JSONResponse(answer)


def _place(requested: str, faults: Faults) -> str | JSONResponse:
    """The first region of a comma-separated preference list that can take a machine.

    Fly's docs (machines/guides-examples/machine-placement): given "a prioritized list … It tries
    each in order until it finds one that works" (e.g. `iad,dfw`). Aliases (`us`, `eu`) are not
    expanded here. When none works, the answer is that of the first region.
    """
    regions = [r.strip() for r in requested.split(",") if r.strip()]
    refusals = []
    for region in regions:
        refusal = faults.region_refusal(region)
        if refusal is None:
            return region
        refusals.append((region, refusal))
    region, refusal = refusals[0]
    return quota_error(region) if refusal == "quota" else capacity_error(region)


async def list_machines(request: Request, state: EmulatorState) -> JSONResponse:
    q = request.query_params
    include_deleted = q.get("include_deleted") == "true"
    states = {s for s in q.get("state", "").split(",") if s}
    metadata = {k.removeprefix("metadata."): v for k, v in q.multi_items() if k.startswith("metadata.")}
    out = []
    now = time.monotonic()
    lag = state.faults.list_lag_seconds
    for machine in state.store.in_app(request.path_params["app"]):
        if not machine.visible(now):
            continue
        view = machine.view(summary=q.get("summary") == "true")
        lagging = machine.destroyed_at is not None and now - machine.destroyed_at < lag
        if lagging:  # list has not caught up with the destroy yet
            view["state"] = machine.state_before_destroy
        elif machine.state == "destroyed" and not include_deleted:
            continue
        if states and view["state"] not in states:
            continue
        if q.get("region") and machine.region != q["region"]:
            continue
        if any(machine.metadata.get(k) != v for k, v in metadata.items()):
            continue
        out.append(view)
    return JSONResponse(out)


async def get_machine(request: Request, state: EmulatorState) -> JSONResponse:
    machine = _machine(request, state)
    if isinstance(machine, JSONResponse):
        return machine
    view = machine.view()
    lease = machine.lease_active()
    if request.query_params.get("include_leases") == "true" and lease is not None:
        view["lease"] = {"description": lease.description, "expires_at": lease.expires_at, "owner": lease.owner}
    return JSONResponse(view)


async def start_machine(request: Request, state: EmulatorState) -> JSONResponse:
    machine = _machine(request, state)
    if isinstance(machine, JSONResponse):
        return machine
    if conflict := _lease_conflict(request, machine):
        return conflict
    if machine.state == "destroyed":
        return error(404, "machine not found")
    if machine.preparing(time.monotonic()) or machine.state not in STARTABLE_STATES or machine.boot_pending:
        return precondition_error(machine.state)
    previous = machine.state
    machine.restart_count = 0
    state.supervisor.boot(machine)
    return JSONResponse({"previous_state": previous, "migrated": False, "new_host": ""})


async def stop_machine(request: Request, state: EmulatorState) -> JSONResponse:
    machine = _machine(request, state)
    if isinstance(machine, JSONResponse):
        return machine
    if conflict := _lease_conflict(request, machine):
        return conflict
    if machine.state in ("destroyed", "destroying"):
        return error(404, "machine not found")
    if machine.preparing(time.monotonic()):  # "412 on start/stop" while the image is prepared (issue 10)
        return precondition_error(machine.state)
    if machine.state in ("stopped", "stopping", "suspended"):
        return JSONResponse({"ok": True})
    body = await _json_body(request)
    state.supervisor.stop(machine, signal_name=body.get("signal"), timeout=body.get("timeout"))
    return JSONResponse({"ok": True})


async def delete_machine(request: Request, state: EmulatorState) -> JSONResponse:
    machine = _machine(request, state)
    if isinstance(machine, JSONResponse):
        return machine
    if conflict := _lease_conflict(request, machine):
        return conflict
    if machine.state in ("destroyed", "destroying"):
        return error(404, "machine not found")
    q = request.query_params
    force = q.get("force") == "true" or q.get("kill") == "true"  # docs say force, fly-go sends kill
    if machine.state in ACTIVE_STATES and not force:
        return error(412, f"unable to destroy machine, not currently stopped (state: {machine.state})")  # unverified
    state.supervisor.destroy(machine, kill=True)
    return JSONResponse({"ok": True})


async def wait_machine(request: Request, state: EmulatorState) -> JSONResponse:
    q = request.query_params
    wanted = {s for value in q.getlist("state") for s in value.split(",") if s} or {"started"}
    if not wanted <= _WAITABLE:
        return error(400, f"invalid state: {', '.join(sorted(wanted - _WAITABLE))}")
    if "settled" in wanted:
        wanted |= _SETTLED
    timeout = wire.wait_timeout(q.get("timeout"))
    if timeout is None:
        # The API enforces [1s, 1m0s] and answers invalid_argument (OpenRouterLabs/spawn#1619);
        # fly-go clamps before sending (flaps_machines_wait.go, WithWaitTimeout).
        return error(400, "invalid_argument: wait timeout must be between 1s and 1m0s")
    deadline = time.monotonic() + timeout
    app, machine_id = request.path_params["app"], request.path_params["machine_id"]
    while True:
        machine = state.store.visible(app, machine_id)
        if machine is None:
            return error(404, "machine not found")
        if machine.state in wanted:
            answer = {"ok": True, "state": machine.state, "version": machine.instance_id}
            return JSONResponse({**answer, "event_id": machine.events[0]["id"]})
        if machine.state == "destroyed":
            return error(404, "machine not found")
        unreachable = "started" in wanted and machine.state in ("stopped", "failed") and not machine.boot_pending
        if unreachable and machine.has_exited():
            return error(400, f"machine failed to reach desired state, started != {machine.state}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return error(408, "deadline exceeded waiting for machine state")
        await state.store.changed(min(remaining, 1.0))


async def list_events(request: Request, state: EmulatorState) -> JSONResponse:
    machine = _machine(request, state)
    if isinstance(machine, JSONResponse):
        return machine
    try:
        limit = min(max(int(request.query_params.get("limit", "20")), 1), 50)
    except ValueError:
        return error(400, "limit must be an integer")
    return JSONResponse(machine.view()["events"][:limit])


def _lease_envelope(lease: Lease) -> dict[str, Any]:
    return {"status": "success", "data": lease.view()}


async def create_lease(request: Request, state: EmulatorState) -> JSONResponse:
    machine = _machine(request, state)
    if isinstance(machine, JSONResponse):
        return machine
    body = await _json_body(request)
    ttl = int(body.get("ttl") or request.query_params.get("ttl") or 30)  # body per docs, ?ttl= per fly-go
    current = machine.lease_active()
    offered = request.headers.get(LEASE_HEADER)
    if current is not None and offered != current.nonce:
        return error(409, f"lease currently held by {current.owner}")
    if current is not None:  # refresh
        current.expires_at = int(time.time()) + ttl
        return JSONResponse(_lease_envelope(current), status_code=201)
    machine.lease = Lease(
        nonce=wire.nonce(),
        expires_at=int(time.time()) + ttl,
        owner="emulator@localhost",
        description=str(body.get("description", "")),
        version=wire.ulid(),
    )
    state.store.touch()
    return JSONResponse(_lease_envelope(machine.lease), status_code=201)


async def get_lease(request: Request, state: EmulatorState) -> JSONResponse:
    machine = _machine(request, state)
    if isinstance(machine, JSONResponse):
        return machine
    lease = machine.lease_active()
    return JSONResponse(_lease_envelope(lease)) if lease else error(404, "lease not found")


async def release_lease(request: Request, state: EmulatorState) -> JSONResponse:
    machine = _machine(request, state)
    if isinstance(machine, JSONResponse):
        return machine
    lease = machine.lease_active()
    if lease is None:
        return error(404, "lease not found")
    if request.headers.get(LEASE_HEADER) != lease.nonce:
        return error(409, f"lease currently held by {lease.owner}")
    machine.lease = None
    state.store.touch()
    return JSONResponse({"status": "success", "data": {"ok": True}})


async def emu_exit(request: Request, state: EmulatorState) -> JSONResponse:
    """Test hook (reference 11.3): end a machine's process with a given exit code / OOM."""
    machine = next((m for m in state.store.all() if m.id == request.path_params["machine_id"]), None)
    if machine is None:
        return error(404, "machine not found")
    body = await _json_body(request)
    ok = state.supervisor.force_exit(
        machine, exit_code=int(body.get("exit_code", 0)), oom_killed=bool(body.get("oom_killed", False))
    )
    return JSONResponse({"ok": True}) if ok else error(409, "machine has no running process")


async def emu_faults(request: Request, state: EmulatorState) -> JSONResponse:
    """Test hook: inject faults over HTTP (see Faults.update; `rate_limits` switches the limiter)."""
    spec = await _json_body(request)
    state.faults.update(spec)
    if "rate_limits" in spec:
        state.limiter.enabled = bool(spec["rate_limits"])
    return JSONResponse({"ok": True})


_MACHINE = "/v1/apps/{app}/machines/{machine_id}"


def create_app(
    *,
    store: Store,
    supervisor: Supervisor,
    faults: Faults,
    recorder: Recorder,
    token: str,
    apps: frozenset[str] | None = None,
    default_region: str = "iad",
    limiter: RateLimiter | None = None,
) -> ASGIApp:
    """The emulator ASGI app. Machine processes are killed when its lifespan ends."""
    routes = [
        Route("/v1/apps/{app}/machines", _endpoint(list_machines), methods=["GET"]),
        Route("/v1/apps/{app}/machines", _endpoint(create_machine), methods=["POST"]),
        Route(_MACHINE, _endpoint(get_machine), methods=["GET"]),
        Route(_MACHINE, _endpoint(delete_machine), methods=["DELETE"]),
        Route(_MACHINE + "/start", _endpoint(start_machine), methods=["POST"]),
        Route(_MACHINE + "/stop", _endpoint(stop_machine), methods=["POST"]),
        Route(_MACHINE + "/wait", _endpoint(wait_machine), methods=["GET"]),
        Route(_MACHINE + "/events", _endpoint(list_events), methods=["GET"]),
        Route(_MACHINE + "/lease", _endpoint(create_lease), methods=["POST"]),
        Route(_MACHINE + "/lease", _endpoint(get_lease), methods=["GET"]),
        Route(_MACHINE + "/lease", _endpoint(release_lease), methods=["DELETE"]),
        Route("/_emu/machines/{machine_id}/exit", _endpoint(emu_exit), methods=["POST"]),
        Route("/_emu/faults", _endpoint(emu_faults), methods=["POST"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await supervisor.shutdown()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.router.redirect_slashes = False  # an unknown path is a 404, as on the real API
    app.state.emulator = EmulatorState(
        store=store,
        supervisor=supervisor,
        faults=faults,
        limiter=limiter or RateLimiter(),
        token=token,
        apps=apps,
        default_region=default_region,
    )
    silence_dropped_connections()

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return error(404, "not found")

    app.add_exception_handler(404, not_found)
    return recorder.wrap(app)
