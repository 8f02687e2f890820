"""Guest sizes validated like Fly's clients do (the API's own answer for a bad size is unverified).

flyctl `internal/machine/update.go`: `cpusPerKind` (shared 1, 2, 4, 6, 8; performance 1, 2, 4,
6, 8, 10, 12, 14, 16, 32, 64, 128), memory in 256 MiB steps for shared and 1024 MiB steps for
performance, at least 256 MiB (shared) or 2048 MiB (performance) per CPU and at most 2048 MiB
(shared) or 8192 MiB (performance) per CPU, the bounds being fly-go's `MIN_MEMORY_MB_PER_*` and
`MAX_MEMORY_MB_PER_*` (machine_types.go). Omitted fields take the docs' defaults (shared, 1 CPU,
256 MB: machines-resource).
"""

from __future__ import annotations

from typing import Any, Final

CPUS_PER_KIND: Final = {"shared": (1, 2, 4, 6, 8), "performance": (1, 2, 4, 6, 8, 10, 12, 14, 16, 32, 64, 128)}
MEMORY_STEP_MB: Final = {"shared": 256, "performance": 1024}
MIN_MEMORY_MB_PER_CPU: Final = {"shared": 256, "performance": 2048}
MAX_MEMORY_MB_PER_CPU: Final = {"shared": 2048, "performance": 8192}


def guest_error(guest: Any) -> str | None:
    """Why `guest` is not a valid size (flyctl's wording), or None when it is."""
    if guest is None:
        return None
    if not isinstance(guest, dict):
        return "invalid guest"
    kind = guest.get("cpu_kind") or "shared"
    cpus = guest.get("cpus") or 1
    memory = guest.get("memory_mb") or 256
    if kind not in CPUS_PER_KIND:
        return "invalid CPU kind"
    if not isinstance(cpus, int) or cpus not in CPUS_PER_KIND[kind]:
        return "invalid number of CPUs"
    if not isinstance(memory, int) or memory % MEMORY_STEP_MB[kind]:
        return "invalid memory size"
    if memory < MIN_MEMORY_MB_PER_CPU[kind] * cpus:
        return "memory size for config is too low"
    if memory > MAX_MEMORY_MB_PER_CPU[kind] * cpus:
        return "memory size for config is too high"
    return None
