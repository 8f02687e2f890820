"""DATABASE_DIRECT_URL: connections that need a session of their own (LISTEN, advisory locks,
migrations) use it; everything else keeps DATABASE_URL, which may go through a pooler.

Fly Managed Postgres gives two URLs: the pooled one (PgBouncer) for the application, and the direct
one "for migrations, advisory locks, or LISTEN/NOTIFY" (https://fly.io/docs/mpg/client-configuration/).
"""

from __future__ import annotations

import pytest

from functions.registry import seed_queues
from shared.db import migrate as migrate_module
from shared.launchers.fly_config import SECRET_ENV_NAMES
from shared.settings import Settings
from tests.conftest import make_settings
from tests.support.live import live_app, wait_until


def _named(url: str, name: str) -> str:
    """`url` with an application_name, so pg_stat_activity tells which setting a backend came from."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def test_the_session_url_is_the_direct_url_when_set_and_the_database_url_otherwise() -> None:
    pooled, direct = "postgresql://u@pgbouncer.x.flympg.net/db", "postgresql://u@direct.x.flympg.net/db"
    assert Settings(_env_file=None, database_url=pooled).session_database_url == pooled  # type: ignore[call-arg]
    both = Settings(_env_file=None, database_url=pooled, database_direct_url=direct)  # type: ignore[call-arg]
    assert (both.database_url, both.session_database_url) == (pooled, direct)


def test_an_empty_direct_url_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("DATABASE_DIRECT_URL", "")
    assert Settings(_env_file=None).session_database_url == "postgresql://u@h/db"  # type: ignore[call-arg]


def test_the_direct_url_never_goes_into_a_machine_config() -> None:
    assert "DATABASE_DIRECT_URL" in SECRET_ENV_NAMES  # it carries the password, like DATABASE_URL


def test_migrations_take_their_advisory_lock_on_the_direct_url(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, str] = {}
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@pgbouncer.x/db")
    monkeypatch.setenv("DATABASE_DIRECT_URL", "postgresql://u@direct.x/db")
    monkeypatch.setattr(migrate_module, "migrate", lambda url: seen.setdefault("migrate", url) and [])
    assert migrate_module.main() == 0
    assert seen["migrate"] == "postgresql://u@direct.x/db"


def test_every_listen_uses_the_direct_url(database_url, s3, tmp_path) -> None:
    """LISTEN needs a session: the dispatcher leader's connection and each machine's listener
    use DATABASE_DIRECT_URL, while the pools stay on DATABASE_URL (a transaction pooler)."""
    settings = make_settings(
        _named(database_url, "cp_pooled"),
        s3,
        database_direct_url=_named(database_url, "cp_direct"),
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
        machine_idle_seconds=30.0,  # keep the machine (and its LISTEN) alive while we look
    )
    seed_queues(database_url, settings)
    with live_app(settings) as app:
        wait_until("a leader", lambda: app.sql("SELECT 1 FROM dispatcher_lease WHERE expires_at > now()"))

        with app.client() as client:
            response = client.post("/jobs/default", json={"function": "echo", "args": {"x": 1}})
        assert response.status_code == 201, response.text
        app.wait_for_job(response.json()["id"], {"completed"})

        # The machine's listener: its LISTEN is the last statement of its connection.
        def machine_listeners() -> list[tuple]:
            return app.sql("SELECT application_name FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")

        assert {name for (name,) in wait_until("a listening machine", machine_listeners)} == {"cp_direct"}
        # The dispatcher leader's: it LISTENs, then renews its lease, on one connection of its own.
        leader = wait_until(
            "the leader's renewal",
            lambda: app.sql(
                "SELECT application_name FROM pg_stat_activity WHERE query LIKE 'UPDATE dispatcher_lease%'"
            ),
        )
        assert leader and {name for (name,) in leader} == {"cp_direct"}
        pooled = app.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cp_pooled'")
        assert pooled[0][0] > 0  # the pools stay on DATABASE_URL
