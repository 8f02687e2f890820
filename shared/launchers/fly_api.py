"""A small Machines API client for one app: retries, the ambiguous 408, and error translation.

Facts it relies on (fly-machines-api.md):
- auth (1): fly-go strips any scheme and sends `FlyV1 <tok>` for macaroon tokens (`fm1r_`,
  `fm1a_`, `fm2_` prefixes), `Bearer <tok>` otherwise;
- transient statuses (2.5): flyctl treats 408, 429 and every 5xx as transient; FLAME also retries
  create on 409/412 ("flyd … not having capacity", "can't find capacity");
- a 408 (or a lost response) on create is ambiguous: the machine may exist. Like flyctl's
  blue-green deploy, every create carries a unique launch id in `config.metadata`, and before
  retrying we list machines filtered by it (`metadata.<key>=<value>`, 3.3);
- capacity is per region: 503 `insufficient_capacity` (fly-go flaps_error.go), 409/412 (FLAME)
  and 403 "over the allowed quota" (Kilo-Org/cloud#516) move the create on to the next region of
  the list (Fly docs, machine-placement: "fall back to another region"); they are clear answers
  (nothing was created) and, when every region refuses, "try later", never "never";
- every call waits for its turn under Fly's per-action rate limits (fly_pacing), and every
  answer feeds the token alert (fly_alerts).

Errors leave this module only as LauncherUnavailable (try again later) or LauncherRejected (do
not retry). Messages carry the operation, the status and Fly's error text; never headers, the
token or a machine's env.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

import httpx
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from shared.errors import LauncherRejected, LauncherUnauthorized, LauncherUnavailable

from .fly_alerts import AUTH_STATUSES, AuthWatch, is_quota_answer
from .fly_config import META_LAUNCH_ID
from .fly_pacing import Pacer

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Statuses worth another try, each for its reason:
RETRYABLE_STATUSES: Final = frozenset(
    {
        408,  # request timed out: transient, but ambiguous for create (see module docstring)
        429,  # rate limited: 1 req/s per action with a burst of 3 (reference 2.4)
        500,
        502,
        503,
        504,  # Fly API server errors; 503 also "insufficient_capacity"
    }
)
# Only create moves on to the next region on these: capacity answers, as FLAME reads them.
CREATE_CAPACITY_STATUSES: Final = frozenset({409, 412})

_MACAROON_PREFIXES: Final = ("fm1r_", "fm1a_", "fm2_")


def authorization_header(token: str) -> str:
    """The Authorization value for `token`, as fly-go builds it (reference 1 and 13)."""
    tok = token.strip()
    for scheme in ("Bearer ", "FlyV1 "):
        if tok.startswith(scheme):
            tok = tok[len(scheme) :].strip()
    return ("FlyV1 " if tok.startswith(_MACAROON_PREFIXES) else "Bearer ") + tok


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter between tries of one API call."""

    attempts: int = 5
    initial_seconds: float = 0.5
    max_seconds: float = 8.0
    jitter_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_seconds < 0 or self.max_seconds < 0 or self.jitter_seconds < 0:
            raise ValueError("RetryPolicy needs attempts >= 1 and non-negative waits")


DEFAULT_RETRY: Final = RetryPolicy()


class _Transient(Exception):
    """One try failed for a passing reason. `ambiguous`: a write may have happened anyway.
    `no_room`: the region refused the create for capacity or quota (try the next one)."""

    def __init__(self, op: str, detail: str, *, ambiguous: bool, no_room: bool = False) -> None:
        super().__init__(f"{op}: {detail}")
        self.ambiguous = ambiguous
        self.no_room = no_room


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(response: httpx.Response) -> str:
    body = _error_body(response)
    text = body.get("message") or body.get("error") or response.reason_phrase
    return str(text)[:200]


def _no_room(response: httpx.Response) -> bool:
    """A create answer saying this region cannot take the machine now (nothing was created)."""
    status = response.status_code
    if status == 503:
        return _error_body(response).get("status") == "insufficient_capacity"
    return status in CREATE_CAPACITY_STATUSES or is_quota_answer(status, _error_text(response))


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    logger.warning("fly api call failed, retrying", extra={"attempt": state.attempt_number, "error": str(error)})


class MachinesAPI:
    """The Machines API of one Fly app, through an injected httpx client."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        app: str,
        token: SecretStr,
        retry: RetryPolicy = DEFAULT_RETRY,
        pacer: Pacer | None = None,
    ) -> None:
        self._http = http
        self._app = app
        self._base = f"{base_url.rstrip('/')}/v1/apps/{app}/machines"
        self._token = token
        self._retry = retry
        self.pacer = pacer or Pacer()
        self.auth = AuthWatch()

    def __repr__(self) -> str:  # the token stays out of reprs and logs
        return f"MachinesAPI({self._base!r})"

    async def _send(
        self, op: str, method: str, path: str = "", *, action: str, machine_id: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One paced request; `action` and `machine_id` are what Fly's rate limit is scoped to."""
        await self.pacer.wait(action, machine_id or self._app)
        headers = {"Authorization": authorization_header(self._token.get_secret_value())}
        try:
            response = await self._http.request(method, self._base + path, headers=headers, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _Transient(op, f"cannot reach the Machines API ({type(exc).__name__})", ambiguous=False) from exc
        except httpx.TransportError as exc:
            # The request may have been delivered and acted on; only the answer was lost.
            raise _Transient(op, f"no answer from the Machines API ({type(exc).__name__})", ambiguous=True) from exc
        self.auth.observe(op, response.status_code, _error_text(response) if response.status_code >= 400 else "")
        return response

    @staticmethod
    def _raise_for(op: str, response: httpx.Response) -> NoReturn:
        status = response.status_code
        if status in RETRYABLE_STATUSES:
            ambiguous = status == 408 or status >= 500
            raise _Transient(op, f"Fly answered {status}: {_error_text(response)}", ambiguous=ambiguous)
        if status in AUTH_STATUSES and not is_quota_answer(status, _error_text(response)):
            raise LauncherUnauthorized(f"{op}: Fly answered {status}: {_error_text(response)}")
        raise LauncherRejected(f"{op}: Fly answered {status}: {_error_text(response)}")

    async def _retrying(
        self,
        op: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        at_once: Callable[[RetryCallState], bool] = lambda _: False,
    ) -> T:
        """Run `attempt` under the retry policy. Raises LauncherUnavailable when tries run out."""
        try:
            async for try_ in self._tries(at_once=at_once):
                with try_:
                    return await attempt()
        except _Transient as exc:
            raise LauncherUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover - tenacity re-raises or returns

    def _tries(self, *, at_once: Callable[[RetryCallState], bool] = lambda _: False) -> AsyncRetrying:
        """The retry policy; a failed try for which `at_once` holds is retried without waiting."""
        backoff = wait_exponential_jitter(
            initial=self._retry.initial_seconds, max=self._retry.max_seconds, jitter=self._retry.jitter_seconds
        )
        return AsyncRetrying(
            stop=stop_after_attempt(self._retry.attempts),
            wait=lambda state: 0.0 if at_once(state) else backoff(state),
            retry=retry_if_exception_type(_Transient),
            before_sleep=_log_retry,
            reraise=True,
        )

    async def create(
        self, body: Mapping[str, Any], *, launch_id: str, regions: Sequence[str | None] = (None,)
    ) -> dict[str, Any]:
        """Create a machine; `launch_id` must be in `body.config.metadata[cp_launch_id]`.

        Tries `regions` in order (None: let Fly choose), moving on at once when a region has no
        room, and around again after a backoff. After an ambiguous failure it looks the machine
        up by launch id before trying again, so one call never creates two machines. Raises
        LauncherUnavailable (also when no region has room) or LauncherRejected.
        """
        ambiguous = False
        turn = 0  # index into `regions` of the next try

        async def attempt() -> dict[str, Any]:
            nonlocal ambiguous, turn
            if ambiguous:
                found = await self._find_launch(launch_id)
                if found is not None:
                    logger.info("fly create had succeeded silently", extra={"machineId": found.get("id")})
                    return found
            region = regions[turn % len(regions)]
            placed = {k: v for k, v in body.items() if k != "region"} | ({"region": region} if region else {})
            response = await self._send("create machine", "POST", json=placed, action="create")
            if response.status_code == 200:
                machine: dict[str, Any] = response.json()
                return machine
            if _no_room(response):
                turn += 1
                where = f" in {region}" if region else ""
                detail = f"no room{where}: Fly answered {response.status_code}: {_error_text(response)}"
                raise _Transient("create machine", detail, ambiguous=False, no_room=True)
            try:
                self._raise_for("create machine", response)
            except _Transient as exc:
                ambiguous = ambiguous or exc.ambiguous
                raise

        def next_region_waiting(state: RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome else None
            return isinstance(error, _Transient) and error.no_room and turn % len(regions) != 0

        try:
            return await self._retrying("create machine", attempt, at_once=next_region_waiting)
        except LauncherUnavailable:
            if ambiguous:  # one last look: the final try may have created it
                try:
                    found = await self._find_launch(launch_id)
                except _Transient:
                    found = None
                if found is not None:
                    return found
            raise

    async def _find_launch(self, launch_id: str) -> dict[str, Any] | None:
        params = {f"metadata.{META_LAUNCH_ID}": launch_id}
        response = await self._send("find machine by launch id", "GET", params=params, action="list")
        if response.status_code != 200:
            self._raise_for("find machine by launch id", response)
        machines = response.json()
        return machines[0] if machines else None

    async def get(self, machine_id: str) -> dict[str, Any] | None:
        """The machine, or None when Fly no longer knows it (404)."""

        async def attempt() -> dict[str, Any] | None:
            response = await self._send("get machine", "GET", f"/{machine_id}", action="get", machine_id=machine_id)
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                self._raise_for("get machine", response)
            machine: dict[str, Any] = response.json()
            return machine

        return await self._retrying("get machine", attempt)

    async def list(self, *, metadata: Mapping[str, str], states: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Machines whose metadata has every `metadata` pair (destroyed ones excluded)."""
        params = {f"metadata.{k}": v for k, v in metadata.items()}
        if states:
            params["state"] = ",".join(states)

        async def attempt() -> list[dict[str, Any]]:
            response = await self._send("list machines", "GET", params=params, action="list")
            if response.status_code != 200:
                self._raise_for("list machines", response)
            machines: list[dict[str, Any]] = response.json()
            return machines

        return await self._retrying("list machines", attempt)

    async def start(self, machine_id: str) -> bool:
        """Start a stopped or created machine; False when it cannot be started (gone, running)."""

        async def attempt() -> bool:
            response = await self._send(
                "start machine", "POST", f"/{machine_id}/start", action="start", machine_id=machine_id
            )
            if response.status_code == 200:
                return True
            if response.status_code in (400, 404, 409, 412):
                return False
            self._raise_for("start machine", response)

        return await self._retrying("start machine", attempt)

    async def stop(self, machine_id: str, *, signal: str, timeout_seconds: int) -> bool:
        """Ask a machine to stop; False when it is not running (or gone)."""
        body = {"signal": signal, "timeout": f"{timeout_seconds}s"}

        async def attempt() -> bool:
            response = await self._send(
                "stop machine", "POST", f"/{machine_id}/stop", json=body, action="stop", machine_id=machine_id
            )
            if response.status_code == 200:
                return True
            if response.status_code in (400, 404, 409, 412):
                return False
            self._raise_for("stop machine", response)

        return await self._retrying("stop machine", attempt)

    async def destroy(self, machine_id: str, *, force: bool) -> None:
        """Destroy a machine (killing it with `force`); no error when it is already gone."""
        # The docs name the parameter `force`, fly-go sends `kill` (reference 3.9): send both.
        params = {"force": "true", "kill": "true"} if force else {}

        async def attempt() -> None:
            response = await self._send(
                "destroy machine", "DELETE", f"/{machine_id}", params=params, action="delete", machine_id=machine_id
            )
            if response.status_code in (200, 404):
                return
            self._raise_for("destroy machine", response)

        await self._retrying("destroy machine", attempt)
