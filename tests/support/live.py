"""A real uvicorn server on a loopback port running the app, for end-to-end tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import httpx
import psycopg
import uvicorn

from functions.ingress.app import create_app
from infra.local.postgres import free_port
from shared.settings import Settings
from shared.tokens import mint_token

T = TypeVar("T")


@dataclass
class LiveApp:
    url: str
    settings: Settings
    server: uvicorn.Server

    def token(self, tenant: str | None = "tenant-1", scopes: str = "jobs:write jobs:read", ttl: int = 3600) -> str:
        return mint_token(self.settings, subject="test", tenant_id=tenant, scopes=scopes.split(), ttl_seconds=ttl)

    def client(self, tenant: str | None = "tenant-1", scopes: str = "jobs:write jobs:read") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(tenant, scopes)}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)

    def admin(self) -> httpx.Client:
        return self.client(None, "admin jobs:read jobs:write")

    def wait_for_job(self, job_id: int, states: set[str], *, timeout: float = 60.0) -> dict:
        """Poll the job until it reaches one of `states` (raises TimeoutError with its last view)."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        with self.admin() as client:
            while time.monotonic() < deadline:
                last = client.get(f"/jobs/{job_id}").json()
                if last.get("state") in states:
                    return last
                time.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not reach {states}: {last}")

    def sql(self, query: str, params: tuple | dict | None = None) -> list[tuple]:
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


def wait_until(what: str, predicate: Callable[[], T], timeout: float = 60.0) -> T:
    """Poll `predicate` until it returns something truthy; fail the test naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def live_app(settings: Settings) -> Iterator[LiveApp]:
    """Serve `create_app(settings)` on 127.0.0.1 until the block ends; machines are stopped after."""
    port = free_port()
    asgi = create_app(settings)
    config = uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield LiveApp(url=f"http://127.0.0.1:{port}", settings=settings, server=server)
    finally:
        # What SIGTERM does to the app in production (a signal cannot reach a server in a thread).
        begin_shutdown = getattr(asgi.state, "begin_shutdown", None)
        if begin_shutdown is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # its loop already closed: nothing to end
                begin_shutdown()
        server.should_exit = True
        thread.join(30)
