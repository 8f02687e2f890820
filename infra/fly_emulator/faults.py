"""Fault injection for the emulator: Fly on a bad day, every behaviour a switch (reference 11.11, 11a).

Set from a test thread (`emulator.faults.fail_next("get", 503)`) or over HTTP
(`POST /_emu/faults`); consumed by the server thread. Every counter is guarded by one lock.
What each switch imitates, and where that behaviour is documented or observed:

- `fail_next(action, status)`: any call can fail, not only create. flyctl treats 408, 429 and
  every 5xx as transient on every flaps call (`internal/flapsutil/retry.go`,
  `IsTransientFlapsError`), and `fly machine wait` retries 429/5xx and "connection reset by
  peer" (`internal/command/machine/wait.go`, `isRetryableWaitError`); fly-go retries GETs on
  ECONNRESET (`flaps/flaps.go`, `do`). `RESET` drops the connection without an answer;
  `acted=True` performs the action first (flyctl: "a 408 from flaps is *ambiguous* — the
  upstream side-effect may or may not have happened").
- `invisible_seconds`: a machine created moments ago answers 404 and is missing from list.
  flyctl `internal/machine/leasable_machine.go` (`WaitForState`): "Machine not found but we just
  created it - retry with backoff (it may not be visible yet)".
- `list_lag_seconds`: list is eventually consistent: a destroyed machine stays listed in its last
  state for a while (inferred from the same read-after-write lag; Kilo-Org/cloud#1664 observed
  GET answering `destroyed` for a while before 404).
- `image_pull_seconds`: a machine rests in `created` while Fly "fetches your container … and
  builds a root file system … low double digit seconds" (Fly docs, machines/overview); start and
  stop meanwhile answer `412 … unable to start machine from current state: 'created'`
  (observed verbatim in production, hexclave/hexclave#2060).
- `fail_launch(state)`: a machine ends `failed` ("encountered an error and could not start
  successfully", may be recoverable, stays) or `launch_failed` ("will transition to destroyed")
  without ever running (Fly docs, machines/machine-states). Kilo-Org/cloud#1144 met `failed` in
  production.
- `unreachable_host()`: `host_status: unreachable`, and `incomplete_config` in place of `config`
  (fly-go `machine_types.go`: "When `host_status` isn't "ok", the config can't be fully
  retrieved"; flyctl `fly machine list` marks such machines unreachable).
- `masked_state`: a state the client does not know (e.g. `pending`, named by issue 10; no Fly
  source found) reported for a while after create.
- `region_full` / `quota_exceeded`: 503 `{"status":"insufficient_capacity"}` (fly-go
  `flaps/flaps_error_test.go`; docs: "a region we happen to be at capacity for … fall back to
  another region") and 403 `… over the allowed quota. please consider other regions`
  (observed in production, Kilo-Org/cloud#516, #1694).
- `fail_auth(status)`: a revoked or wrong-scope token: 401 on every call (Fly docs status table:
  "The API key used was missing or invalid"), or 403.
- `never_boot`, `oom_kill`, `boot_delay_seconds`: machines that stay `starting`, are OOM-killed
  (exit 137, `oom_killed`), or boot slowly.
- `spawn_lag_seconds`: a loaded host: a machine's process runs this long before the emulator
  records it as started (a stop or destroy in between must still reach the process).
- `chaos`: all of the above at random with given probabilities, counted in `injected` by kind.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

RESET: Final = 0  # pseudo status: close the connection without answering
LaunchFailure = Literal["failed", "launch_failed"]
_ERROR_STATUSES: Final = (500, 502, 503, 504)


@dataclass(frozen=True, slots=True, kw_only=True)
class Chaos:
    """Probabilities of faults, drawn independently per call or per machine."""

    seed: int = 0
    call_5xx: float = 0.0  # any call answers 500/502/503/504 (a create may have acted)
    call_reset: float = 0.0  # any call loses its connection (a create may have acted)
    call_429: float = 0.0  # any call answers 429 regardless of the limiter
    invisible: float = 0.0  # a new machine is invisible for `invisible_seconds`
    invisible_seconds: float = 2.0
    image_pull: float = 0.0  # a new machine rests in `created` for `image_pull_seconds` (412 on start/stop)
    image_pull_seconds: float = 2.0
    primary_full: float = 0.0  # a create in `primary_region` meets insufficient_capacity
    primary_region: str = "iad"
    oom: float = 0.0  # a booted machine is OOM-killed after `oom_after_seconds`
    oom_after_seconds: float = 1.0
    never_boot: float = 0.0  # a machine stays `starting` until stopped or destroyed
    fail_launch: float = 0.0  # a machine ends `failed` or `launch_failed` without running

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> Chaos:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in spec.items() if k in names})


@dataclass(slots=True)
class MachineFate:
    """What a new machine will suffer, decided when it is created."""

    invisible_seconds: float = 0.0
    image_pull_seconds: float = 0.0
    masked_state: tuple[str, float] | None = None
    unreachable: bool = False


@dataclass(slots=True)
class _Call:
    status: int
    acted: bool


@dataclass
class Faults:
    """What the next requests or machines should suffer."""

    boot_delay_seconds: float = 0.0
    spawn_lag_seconds: float = 0.0
    oom_after_seconds: float = 0.2
    invisible_seconds: float = 0.0
    list_lag_seconds: float = 0.0
    image_pull_seconds: float = 0.0
    launch_failed_seconds: float = 0.5  # `launch_failed` -> `destroyed`
    masked_state: tuple[str, float] | None = None
    auth_status: int | None = None
    full_regions: set[str] = field(default_factory=set)
    over_quota_regions: set[str] = field(default_factory=set)
    injected: Counter[str] = field(default_factory=Counter)
    _chaos: Chaos | None = None
    _random: random.Random = field(default_factory=random.Random)
    _calls: dict[str, deque[_Call]] = field(default_factory=dict)
    _never_boot: int = 0
    _oom: int = 0
    _unreachable: int = 0
    _launch_failures: deque[LaunchFailure] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- switches ---------------------------------------------------------------------------

    def fail_next(self, action: str, status: int, *, times: int = 1, acted: bool = False) -> None:
        """The next `times` calls of `action` answer `status` (RESET: no answer); `acted`: after acting."""
        with self._lock:
            self._calls.setdefault(action, deque()).extend(_Call(status, acted) for _ in range(times))

    def fail_next_creates(self, status: int, *, times: int = 1) -> None:
        """The next `times` creates answer `status` (429, 503, 412…) and create nothing."""
        self.fail_next("create", status, times=times)

    def create_but_time_out(self, *, times: int = 1) -> None:
        """The next `times` creates make the machine, then answer 408 (flyctl's "silent success")."""
        self.fail_next("create", 408, times=times, acted=True)

    def never_boot(self, *, times: int = 1) -> None:
        """The next `times` machines that boot stay in `starting` forever."""
        with self._lock:
            self._never_boot += times

    def oom_kill(self, *, times: int = 1) -> None:
        """The next `times` processes started are killed as out of memory (exit 137, oom_killed)."""
        with self._lock:
            self._oom += times

    def fail_launch(self, state: LaunchFailure = "failed", *, times: int = 1) -> None:
        """The next `times` machines that boot end in `state` without running."""
        with self._lock:
            self._launch_failures.extend([state] * times)

    def unreachable_host(self, *, times: int = 1) -> None:
        """The next `times` machines created report `host_status: unreachable`, `incomplete_config`."""
        with self._lock:
            self._unreachable += times

    def fail_auth(self, status: int | None = 401) -> None:
        """Every API call answers `status` (401 revoked token, 403 wrong scope) until set to None."""
        self.auth_status = status

    def region_full(self, region: str, full: bool = True) -> None:
        """Creates placed in `region` answer 503 insufficient_capacity."""
        with self._lock:
            (self.full_regions.add if full else self.full_regions.discard)(region)

    def quota_exceeded(self, region: str, exceeded: bool = True) -> None:
        """Creates placed in `region` answer 403 "over the allowed quota"."""
        with self._lock:
            (self.over_quota_regions.add if exceeded else self.over_quota_regions.discard)(region)

    def set_chaos(self, chaos: Chaos | None) -> None:
        with self._lock:
            self._chaos = chaos
            self._random = random.Random(chaos.seed if chaos else 0)

    def update(self, spec: dict[str, Any]) -> None:
        """Apply a JSON fault spec (POST /_emu/faults): the switches above by name."""
        for status in spec.get("create_statuses", []):
            self.fail_next_creates(int(status))
        for call in spec.get("calls", []):
            self.fail_next(
                str(call["action"]), int(call["status"]), times=int(call.get("times", 1)), acted=bool(call.get("acted"))
            )
        self.create_but_time_out(times=int(spec.get("create_but_time_out", 0)))
        self.never_boot(times=int(spec.get("never_boot", 0)))
        self.oom_kill(times=int(spec.get("oom_kill", 0)))
        self.unreachable_host(times=int(spec.get("unreachable_host", 0)))
        for name in (
            "boot_delay_seconds",
            "spawn_lag_seconds",
            "invisible_seconds",
            "list_lag_seconds",
            "image_pull_seconds",
        ):
            if name in spec:
                setattr(self, name, float(spec[name]))
        if "auth_status" in spec:
            self.fail_auth(spec["auth_status"])
        for region in spec.get("full_regions", []):
            self.region_full(str(region))
        for region in spec.get("over_quota_regions", []):
            self.quota_exceeded(str(region))
        if "chaos" in spec:
            self.set_chaos(Chaos.from_json(spec["chaos"]) if spec["chaos"] else None)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()
            self._never_boot = self._oom = self._unreachable = 0
            self._launch_failures.clear()
            self.full_regions.clear()
            self.over_quota_regions.clear()
            self.injected.clear()
            self._chaos = None
        self.boot_delay_seconds = self.invisible_seconds = self.list_lag_seconds = self.image_pull_seconds = 0.0
        self.spawn_lag_seconds = 0.0
        self.masked_state = None
        self.auth_status = None

    # -- consumed by the server ---------------------------------------------------------------

    def take_call(self, action: str) -> tuple[int, bool] | None:
        """(status, acted) this call of `action` must answer, or None to serve it normally."""
        with self._lock:
            queued = self._calls.get(action)
            if queued:
                call = queued.popleft()
                return call.status, call.acted
            chaos = self._chaos
            if chaos is None:
                return None
            roll = self._random.random()
            # A create that fails may still have made the machine (the ambiguous answer).
            acted = action == "create" and self._random.random() < 0.5
            if roll < chaos.call_5xx:
                self.injected["5xx"] += 1
                return self._random.choice(_ERROR_STATUSES), acted
            roll -= chaos.call_5xx
            if roll < chaos.call_reset:
                self.injected["reset"] += 1
                return RESET, acted
            roll -= chaos.call_reset
            if roll < chaos.call_429:
                self.injected["429"] += 1
                return 429, False
            return None

    def region_refusal(self, region: str) -> Literal["quota", "capacity"] | None:
        """Why a create cannot be placed in `region` now, or None."""
        with self._lock:
            if region in self.over_quota_regions:
                return "quota"
            if region in self.full_regions:
                return "capacity"
            chaos = self._chaos
            if chaos and region == chaos.primary_region and self._random.random() < chaos.primary_full:
                self.injected["capacity"] += 1
                return "capacity"
            return None

    def fate_of_new_machine(self) -> MachineFate:
        with self._lock:
            fate = MachineFate(
                invisible_seconds=self.invisible_seconds,
                image_pull_seconds=self.image_pull_seconds,
                masked_state=self.masked_state,
            )
            if self._unreachable > 0:
                self._unreachable -= 1
                fate.unreachable = True
            chaos = self._chaos
            if chaos is not None:
                if self._random.random() < chaos.invisible:
                    self.injected["invisible"] += 1
                    fate.invisible_seconds = max(fate.invisible_seconds, chaos.invisible_seconds)
                if self._random.random() < chaos.image_pull:
                    self.injected["image_pull"] += 1
                    fate.image_pull_seconds = max(fate.image_pull_seconds, chaos.image_pull_seconds)
            return fate

    def take_never_boot(self) -> bool:
        return self._take("_never_boot", "never_boot", lambda c: c.never_boot)

    def take_oom(self) -> float | None:
        """Seconds after which to OOM-kill a machine that just started, or None."""
        if self._take("_oom", "oom", lambda c: c.oom):
            with self._lock:
                chaos = self._chaos
                if chaos is not None and chaos.oom > 0:
                    return self._random.uniform(0.1, chaos.oom_after_seconds)
            return self.oom_after_seconds
        return None

    def take_launch_failure(self) -> LaunchFailure | None:
        with self._lock:
            if self._launch_failures:
                return self._launch_failures.popleft()
            chaos = self._chaos
            if chaos is not None and self._random.random() < chaos.fail_launch:
                self.injected["fail_launch"] += 1
                return self._random.choice(("failed", "launch_failed"))
            return None

    def _take(self, name: str, kind: str, probability: Any) -> bool:
        with self._lock:
            left = int(getattr(self, name))
            if left > 0:
                setattr(self, name, left - 1)
                return True
            chaos = self._chaos
            if chaos is not None and self._random.random() < probability(chaos):
                self.injected[kind] += 1
                return True
            return False
