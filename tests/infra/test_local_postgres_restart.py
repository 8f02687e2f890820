"""A local cluster restarts after its parents' permissions were tightened since it first started
(another pytest session resets /tmp/pytest-of-<user> to 0700 when it starts, which once failed
test_db_restart in a fresh clone with "could not access directory ...: Permission denied")."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from infra.local.postgres import LocalPostgres


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user the server runs as us: no parents to reach")
def test_a_cluster_restarts_after_a_parent_was_reset_to_0700(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    pg = LocalPostgres(parent / "pg", durable=False)
    pg.start()
    try:
        pg.stop()
        parent.chmod(0o700)  # what a new pytest session does to its root
        pg.start()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pg.destroy()
