"""Configuration is checked at start, with every problem in one message."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from functions.ingress.app import create_app
from functions.registry import load_registry
from shared.configuration import ConfigurationError, configuration_problems
from shared.functions import Registry
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]


def test_every_problem_is_listed_at_once() -> None:
    settings = make_settings(
        "postgresql://unused.invalid/none", jwt_secret=None, webhook_signing_secret=None, queue_imagez_limit=3
    )
    with pytest.raises(ConfigurationError) as caught:
        create_app(settings)
    problems = caught.value.problems
    assert any("QUEUE_IMAGEZ_LIMIT names no function" in p for p in problems)
    assert any(p.startswith("JWT_SECRET is not set") for p in problems)
    assert any(p.startswith("WEBHOOK_SIGNING_SECRET is not set") for p in problems)
    assert str(caught.value).count("\n  - ") == len(problems) == 3


def test_a_short_jwt_secret_and_an_unknown_timeout_are_problems() -> None:
    settings = make_settings("postgresql://unused.invalid/none", jwt_secret="short", worker_nope_timeout=1000)
    problems = configuration_problems(settings, load_registry(), role="api")
    assert any("shorter than 32" in p for p in problems) and any("WORKER_NOPE_TIMEOUT" in p for p in problems)
    assert configuration_problems(make_settings("postgresql://unused.invalid/none"), load_registry(), role="api") == []


def test_a_rate_key_the_claim_cannot_derive_is_a_problem() -> None:
    registry = load_registry()
    webhooks = replace(registry["webhooks"], rate_key="path:url")
    problems = Registry({**registry, "webhooks": webhooks}).configuration_problems(
        make_settings("postgresql://unused.invalid/none")
    )
    assert problems == ["function 'webhooks' declares rate_key 'path:url' (host:<arg> or domain:<arg>)"]


def test_a_misfire_grace_shorter_than_the_scheduler_interval_is_a_problem() -> None:
    settings = make_settings(
        "postgresql://unused.invalid/none", scheduler_misfire_grace_seconds=1, dispatcher_maintenance_seconds=5
    )
    for role in ("api", "dispatcher"):
        problems = configuration_problems(settings, load_registry(), role=role)  # type: ignore[arg-type]
        assert [p for p in problems if p.startswith("SCHEDULER_MISFIRE_GRACE_SECONDS")], role
    assert configuration_problems(settings, load_registry(), role="machine", queue="default") == []


def test_a_machine_with_bad_configuration_exits_2_saying_why() -> None:
    env = {
        **os.environ,
        "JOB_QUEUE": "default",
        "QUEUE_NOPE_LIMIT": "3",
        "DATABASE_URL": "postgresql://unused.invalid/none",
    }
    done = subprocess.run(
        [sys.executable, "-m", "functions.machine"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "QUEUE_NOPE_LIMIT names no function" in done.stdout + done.stderr
