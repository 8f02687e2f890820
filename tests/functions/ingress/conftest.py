"""Fixtures of the ingress tests: a live app (real uvicorn on loopback, real Postgres) per test."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from functions.registry import seed_queues
from infra.local.s3 import LocalS3
from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app

OpenApp = Callable[..., contextlib.AbstractContextManager[LiveApp]]


@pytest.fixture
def open_app(database_url: str, s3: LocalS3) -> OpenApp:
    """`with open_app(**setting_overrides) as app:` serves the app; no dispatcher unless asked."""

    @contextlib.contextmanager
    def opened(**overrides: Any) -> Iterator[LiveApp]:
        overrides.setdefault("run_dispatcher", False)
        settings = make_settings(database_url, s3, **overrides)
        seed_queues(database_url, settings)
        with live_app(settings) as live:
            yield live

    return opened


@pytest.fixture
def app(open_app: OpenApp) -> Iterator[LiveApp]:
    with open_app() as live:
        yield live


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """The response is problem+json with `status`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    return body
