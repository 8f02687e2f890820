"""Leader failover between two dispatcher processes: a frozen leader (SIGSTOP) is replaced within
30 s, and once it thaws it steps down without acting; the two never act as leader at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from functions.dispatcher.lease import connect_leader
from tests.support.live import wait_until

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class DispatcherProcess:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        lines = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                lines.append(line)
        return lines

    def events(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("message") == message]


def _start(database_url: str, log: Path) -> DispatcherProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "ENVIRONMENT": "test",
        "DATABASE_URL": database_url,
        "LAUNCHER": "local",
        "LOG_LEVEL": "debug",  # each duty run is a debug line: the record of acting as leader
        "DISPATCHER_POLL_SECONDS": "0.2",
        "DISPATCHER_MAINTENANCE_SECONDS": "0.5",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "functions.dispatcher"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return DispatcherProcess(process, log)


def _stop(dispatcher: DispatcherProcess) -> None:
    process = dispatcher.process
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _lease(database_url: str) -> tuple[str, int, float] | None:
    """(holder, term, acquired_at as epoch seconds) of the current lease, if any."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT holder, term, extract(epoch FROM acquired_at)::float8 FROM dispatcher_lease"
        ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _holder_is(database_url: str, dispatcher: DispatcherProcess) -> tuple[str, int, float] | None:
    lease = _lease(database_url)
    return lease if lease is not None and f"-{dispatcher.pid}-" in lease[0] else None


@pytest.fixture
def start_dispatcher(database_url: str, tmp_path: Path) -> Iterator[Any]:
    started: list[DispatcherProcess] = []

    def start(name: str) -> DispatcherProcess:
        dispatcher = _start(database_url, tmp_path / f"{name}.log")
        started.append(dispatcher)
        return dispatcher

    try:
        yield start
    finally:
        for dispatcher in started:
            _stop(dispatcher)


def _acts(dispatcher: DispatcherProcess, term: int) -> list[float]:
    """When (wall clock) `dispatcher` decided to run a duty as the leader of `term`."""
    return [line["checkedAt"] for line in dispatcher.events("duty run") if line.get("term") == term]


def _stood_down(dispatcher: DispatcherProcess, term: int) -> bool:
    """`dispatcher` logged the end of `term`, then went back to standing by."""
    messages = [(line.get("message"), line.get("term")) for line in dispatcher.lines()]
    if ("plugin:stop", term) not in messages:
        return False
    return any(message == "dispatcher standing by" for message, _ in messages[messages.index(("plugin:stop", term)) :])


def test_a_frozen_leader_is_replaced_within_30_s_and_steps_down_when_it_thaws(database_url, start_dispatcher):
    first = start_dispatcher("first")
    lease = wait_until("the first dispatcher to lead", lambda: _holder_is(database_url, first), timeout=30)
    assert lease is not None
    first_term = lease[1]
    wait_until("the leader to act", lambda: _acts(first, first_term), timeout=30)
    second = start_dispatcher("second")
    wait_until("the second dispatcher to stand by", lambda: second.events("dispatcher standing by"), timeout=30)

    os.kill(first.pid, signal.SIGSTOP)
    try:
        lease = wait_until("the standby to take over", lambda: _holder_is(database_url, second), timeout=30)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert lease is not None
    _, second_term, second_since = lease
    assert second_term > first_term
    wait_until("the new leader to act", lambda: _acts(second, second_term), timeout=30)

    # Thawed, the old leader finds its term replaced and steps down...
    wait_until("the old leader to step down and stand by", lambda: _stood_down(first, first_term), timeout=30)
    assert _holder_is(database_url, second), "leadership must stay with the new leader"
    # ...without acting on its stale term: every decision it took as leader came before the new
    # term began, and the new leader only acted within its own term. Never both at once.
    assert max(_acts(first, first_term)) < second_since
    assert min(_acts(second, second_term)) >= second_since
    assert {line.get("term") for line in first.events("duty run")} == {first_term}


async def test_the_leader_connection_keeps_alive_on_both_ends(database_url):
    """Keepalives do not decide leadership (the lease does), but free a vanished peer's session."""
    async with await connect_leader(database_url, 10) as conn:
        cur = await conn.execute(
            "SELECT current_setting('tcp_keepalives_idle') AS idle, current_setting('tcp_keepalives_count') AS count,"
            " current_setting('tcp_user_timeout') AS user_timeout"
        )
        assert await cur.fetchone() == {"idle": "5", "count": "3", "user_timeout": "10000"}
        client = conn.info.get_parameters()
        assert client["keepalives"] == "1" and client["tcp_user_timeout"] == "10000"
