"""Migration 0011 must apply to the databases it exists for: ones already holding a job whose time
no reader can load (an adversarial review found the CHECK's validation aborted the migration, and
with it the release that ships the fix)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from infra.local.postgres import LocalPostgres
from shared.db.migrate import MIGRATIONS_DIR, migrate


@pytest.fixture
def database_before_0011(pg: LocalPostgres, tmp_path: Path) -> Iterator[str]:
    name = f"cp_m11_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg.url_for(name)
    for path in MIGRATIONS_DIR.glob("00*.sql"):
        if path.name < "0011":
            shutil.copy(path, tmp_path / path.name)
    migrate(url, directory=tmp_path)
    try:
        yield url
    finally:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_0011_applies_over_unreadable_times_and_leaves_them_readable(database_before_0011: str) -> None:
    with psycopg.connect(database_before_0011, autocommit=True) as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, state, scheduled_at) VALUES"
            " ('default', 'echo', 't', 'scheduled', '9999-12-31T23:59:59-01:00'),"
            " ('default', 'echo', 't', 'scheduled', '0001-01-01T00:00:00+01:00'),"
            " ('default', 'echo', 't', 'scheduled', '2030-01-01T00:00:00Z')"
        )
    migrate(database_before_0011)
    with psycopg.connect(database_before_0011, autocommit=True) as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        times = [row[0] for row in conn.execute("SELECT scheduled_at FROM jobs ORDER BY id")]
    # Each now within what the service reads (years 1-9999 in UTC), at the nearest end; the
    # ordinary one untouched.
    assert times[2] == datetime(2030, 1, 1, tzinfo=UTC)
    assert times[0].year == 9999 and times[1].year == 1
