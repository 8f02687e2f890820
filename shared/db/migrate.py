"""Apply numbered SQL migrations once each, in order, under an advisory lock.

Run as `python -m shared.db.migrate` (also Fly's release_command).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import psycopg

from shared.settings import load_settings

from .sql import QUERIES

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Any fixed number works; it only has to be the same for every instance migrating this database.
_MIGRATION_LOCK = 7_420_001


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The numbered `NNNN_name.sql` files, in order."""
    return sorted(p for p in directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def migrate(database_url: str, *, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; returns the names applied. Safe to run concurrently."""
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            for path in migration_files(directory):
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text(encoding="utf-8").encode())
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
                applied_now.append(path.name)
                logger.info("migration applied", extra={"migration": path.name})
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


def ensure_queues(
    database_url: str, limits: Mapping[str, int], *, fair: bool = True, tenant_limit: int | None = None
) -> None:
    """Create missing queue rows with these initial limits, fairness and per-tenant cap (runtime
    changes are kept)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, limit in limits.items():
            conn.execute(
                QUERIES["ensure_queue"], {"name": name, "limit": limit, "fair": fair, "tenant_limit": tenant_limit}
            )


def main() -> int:
    settings = load_settings()
    applied = migrate(settings.session_database_url)
    # Queue rows are created by the API and the dispatcher at start, from the functions they run.
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
