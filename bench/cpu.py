"""CPU time of processes and of a whole Postgres cluster, from Linux /proc (standard library only:
bench/export_rss.py's measured child imports it too, and must not grow for it)."""

from __future__ import annotations

import os
from pathlib import Path


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """(own + reaped children's CPU ticks, parent pid) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]), int(fields[1])


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """CPU time used so far by `pid` (threads and reaped children included), and with
    `with_children` by its live children too: for a postmaster, the whole cluster."""
    if not with_children:
        return _cpu_ticks(pid)[0] / os.sysconf("SC_CLK_TCK")
    # A child reaped between reading the parent and finding the child is in neither count: read
    # again until no child was reaped during the scan (the parent's own count did not move).
    for _ in range(50):
        before, _ = _cpu_ticks(pid)
        children = 0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ticks, parent = _cpu_ticks(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue  # exited meanwhile
                if parent == pid:
                    children += ticks
        after, _ = _cpu_ticks(pid)
        if after == before:
            break
    return (after + children) / os.sysconf("SC_CLK_TCK")


def postmaster_pid(data_dir: Path) -> int:
    """The pid of the cluster running in `data_dir` (first line of postmaster.pid)."""
    return int((data_dir / "postmaster.pid").read_text().split()[0])
