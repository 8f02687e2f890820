"""Reading Machines API objects and building auth headers, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from shared.launchers.fly_api import authorization_header
from shared.launchers.fly_config import SECRET_ENV_NAMES, public_env
from shared.launchers.fly_state import latest_exit, launcher_state, machine_status


def exit_event(code: int, at: int, *, oom: bool = False, monitor: bool = False) -> dict[str, Any]:
    detail = {"exit_code": code, "oom_killed": oom, "requested_stop": False}
    request = {"MonitorEvent": {"exit_event": detail}} if monitor else {"exit_event": detail}
    return {"type": "exit", "status": "stopped", "source": "flyd", "timestamp": at, "request": request}


def test_the_newest_exit_event_wins_whatever_the_order() -> None:
    machine = {"events": [exit_event(1, at=100), {"type": "destroy", "timestamp": 300}, exit_event(2, at=200)]}
    info = latest_exit(machine)
    assert info is not None and info.exit_code == 2


def test_monitor_event_exit_details_are_read_like_fly_go() -> None:
    info = latest_exit({"events": [exit_event(137, at=1, oom=True, monitor=True)]})
    assert info is not None and (info.exit_code, info.oom_killed) == (137, True)


def test_no_exit_event_means_no_exit_info() -> None:
    assert latest_exit({"events": [{"type": "launch", "timestamp": 1}]}) is None
    assert latest_exit({}) is None


@pytest.mark.parametrize(
    ("fly_state", "has_exited", "ours"),
    [
        ("created", False, "launching"),
        ("starting", False, "launching"),
        ("started", False, "running"),
        ("stopping", False, "running"),
        ("stopped", True, "exited"),
        ("destroyed", True, "exited"),
        ("destroyed", False, "failed"),
        ("failed", False, "failed"),
        ("launch_failed", False, "failed"),
        ("pending", False, "launching"),  # a state we do not know is not a death certificate
        ("some-new-state", True, "launching"),
    ],
)
def test_fly_states_map_onto_launcher_states(fly_state: str, has_exited: bool, ours: str) -> None:
    info = latest_exit({"events": [exit_event(0, at=1)]}) if has_exited else None
    assert launcher_state(fly_state, info) == ours


def test_machine_status_reports_queue_and_exit_only_when_over() -> None:
    over = {
        "id": "m1",
        "state": "destroyed",
        "config": {"metadata": {"cp_queue": "images"}},
        "events": [exit_event(3, at=1)],
    }
    assert (machine_status(over).queue, machine_status(over).exit_code) == ("images", 3)
    restarted = {"id": "m2", "state": "started", "config": {}, "events": [exit_event(3, at=1)]}
    assert (machine_status(restarted).state, machine_status(restarted).exit_code) == ("running", None)


@pytest.mark.parametrize(
    ("token", "header"),
    [
        ("fm2_abc", "FlyV1 fm2_abc"),
        ("FlyV1 fm2_abc", "FlyV1 fm2_abc"),
        ("Bearer FlyV1 fm1r_abc", "FlyV1 fm1r_abc"),
        ("fm1a_abc", "FlyV1 fm1a_abc"),
        ("plain", "Bearer plain"),
        (" Bearer plain ", "Bearer plain"),
    ],
)
def test_authorization_header_follows_fly_go(token: str, header: str) -> None:
    assert authorization_header(token) == header


def test_secret_settings_are_never_machine_env() -> None:
    assert {"DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "SMTP_PASSWORD", "FLY_API_TOKEN", "JWT_SECRET"} <= SECRET_ENV_NAMES
    kept, dropped = public_env({"JOB_QUEUE": "images", "database_url": "x", "JWT_SECRET": "y"})
    assert kept == {"JOB_QUEUE": "images"}
    assert dropped == ["JWT_SECRET", "database_url"]
