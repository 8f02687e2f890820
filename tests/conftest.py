"""Real components for the tests: one throwaway Postgres cluster and one moto S3 server per run,
a freshly migrated database per test (copied from a template), and settings pointing at them."""

from __future__ import annotations

import os
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from functions.registry import seed_queues
from infra.local.postgres import LocalPostgres
from infra.local.s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalS3
from shared.db.migrate import migrate
from shared.db.pool import Pool, open_pool
from shared.settings import Settings

TEMPLATE_DB = "cp_template"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _teardown_on_sigterm() -> None:
    # A run stopped with SIGTERM (a timeout, CI cancelling) still tears down its session fixtures,
    # so the Postgres cluster and moto server it started do not outlive it.
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    base = Path(tempfile.mkdtemp(prefix="cp-test-pg-"))
    cluster = LocalPostgres(base / "data", durable=False)
    cluster.start()
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        migrate(cluster.url_for(TEMPLATE_DB))
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    server = LocalS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(pg: LocalPostgres) -> Iterator[str]:
    """A fresh, migrated database for one test (dropped afterwards)."""
    name = f"cp_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    try:
        yield pg.url_for(name)
    finally:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def make_settings(database_url: str, s3: LocalS3 | None = None, **overrides: object) -> Settings:
    """Settings for a test: development mode, fast heartbeats, loopback everything."""
    values: dict[str, object] = {
        "environment": "test",
        "database_url": database_url,
        "database_pool_size": 10,
        "jwt_secret": "test-secret-test-secret-test-secret",
        "heartbeat_interval_seconds": 0.5,
        "dispatcher_poll_seconds": 0.2,
        "dispatcher_maintenance_seconds": 0.5,
        "lifeline_rescue_after": 30,
        "machine_idle_seconds": 1.0,
        "bucket_name": f"cp-test-{uuid.uuid4().hex[:8]}",
        "webhook_signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }
    if s3 is not None:
        values.update(
            aws_endpoint_url_s3=s3.endpoint_url,
            aws_access_key_id=LOCAL_ACCESS_KEY,
            aws_secret_access_key=LOCAL_SECRET_KEY,
            aws_region="us-east-1",
        )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    """A small connection pool on the test's database."""
    opened = await open_pool(database_url, min_size=1, max_size=4)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def settings(database_url: str, s3: LocalS3) -> Settings:
    s = make_settings(database_url, s3)
    seed_queues(database_url, s)
    return s


@pytest.fixture(autouse=True, scope="session")
def _no_proxies() -> None:
    # Tests talk only to loopback; an inherited proxy setting must not reroute them.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
