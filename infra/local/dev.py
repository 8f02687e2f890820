"""`make dev`: the whole system on one machine with embedded defaults.

Starts a Postgres cluster under .local/ when DATABASE_URL is unset (kept across restarts), an
S3-compatible server (moto) when AWS_ENDPOINT_URL_S3 is unset, a mail catcher when SMTP_HOST is
unset, migrates, then serves the API with
the dispatcher and the local launcher inside. Prints the URL, the docs URL and a dev token.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from functions.registry import seed_queues
from infra.local.postgres import LocalPostgres, free_port
from infra.local.s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalS3
from infra.local.smtp import LocalSMTP
from shared.db.migrate import migrate
from shared.logging import configure_logging
from shared.settings import load_settings
from shared.tokens import mint_token

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / ".local"
DEV_PG_PORT = 55432


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _dev_secret(name: str, make: str) -> str:
    """A secret generated once and kept under .local/ so tokens survive restarts."""
    path = LOCAL / name
    if not path.exists():
        LOCAL.mkdir(exist_ok=True)
        path.write_text(make)
        path.chmod(0o600)
    return path.read_text().strip()


def _start_fly_emulator(stack: contextlib.ExitStack) -> None:
    """LAUNCHER=fly without a Machines API: serve the local emulator (a test double) and point at it.

    The emulator hands machines the service settings the way Fly hands them the worker app's
    secrets, and runs each machine's command as a local process.
    """
    from infra.fly_emulator import running_emulator

    machine_env = load_settings(launcher="local").machine_env()
    token = secrets.token_urlsafe(16)
    emulator = stack.enter_context(running_emulator(base_env=machine_env, token=token, apps=["cp-worker"]))
    os.environ.update(
        FLY_API_HOSTNAME=emulator.url, FLY_API_TOKEN=token, FLY_WORKER_APP="cp-worker", WORKER_IMAGE="local/cp-worker"
    )
    print(f"• Fly Machines API emulator (test double) at {emulator.url}, machines run as local processes", flush=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> int:
    LOCAL.mkdir(exist_ok=True)
    postgres: LocalPostgres | None = None
    s3: LocalS3 | None = None
    smtp: LocalSMTP | None = None
    os.environ.setdefault("ENVIRONMENT", "development")
    os.environ.setdefault("HOST", "127.0.0.1")
    os.environ.setdefault("JWT_SECRET", _dev_secret("jwt-secret", secrets.token_urlsafe(32)))
    os.environ.setdefault(
        "WEBHOOK_SIGNING_SECRET",
        _dev_secret("webhook-secret", "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()),
    )
    try:
        if not os.environ.get("DATABASE_URL"):
            postgres = LocalPostgres(LOCAL / "pgdata", port=DEV_PG_PORT if _port_free(DEV_PG_PORT) else free_port())
            postgres.start()
            os.environ["DATABASE_URL"] = postgres.url
            print(f"• Postgres (embedded) at {postgres.url}, data in .local/pgdata", flush=True)
        if not os.environ.get("AWS_ENDPOINT_URL_S3"):
            s3 = LocalS3()
            s3.start()
            os.environ.update(
                AWS_ENDPOINT_URL_S3=s3.endpoint_url,
                AWS_ACCESS_KEY_ID=LOCAL_ACCESS_KEY,
                AWS_SECRET_ACCESS_KEY=LOCAL_SECRET_KEY,
                AWS_REGION="us-east-1",
            )
            print(f"• S3-compatible server (moto, in memory) at {s3.endpoint_url}", flush=True)
        if not os.environ.get("SMTP_HOST"):
            smtp = LocalSMTP(LOCAL / "mail")
            smtp.start()
            os.environ.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port), SMTP_STARTTLS="false")
            print(f"• SMTP mail catcher at 127.0.0.1:{smtp.port}, messages saved in .local/mail/", flush=True)
        emulator = contextlib.ExitStack()
        if os.environ.get("LAUNCHER") == "fly" and not os.environ.get("FLY_API_HOSTNAME"):
            _start_fly_emulator(emulator)
        settings = load_settings()
        configure_logging(settings.log_level, service="api")
        migrate(settings.session_database_url)
        seed_queues(settings.database_url, settings)
        from shared.storage import Storage

        Storage(settings).ensure_bucket()
        token = mint_token(
            settings, subject="dev", tenant_id="dev", scopes=["jobs:write", "jobs:read", "admin"], ttl_seconds=7 * 86400
        )
        base = f"http://{settings.host}:{settings.port}"
        print(f"\n  Content Processor is running at {base}", flush=True)
        print(f"  API docs: {base}/documentation", flush=True)
        print(f"  Dashboard: {base}/dashboard (sign in with the token below)", flush=True)
        print("  Development token (tenant 'dev', scopes jobs:write jobs:read admin, 7 days):\n", flush=True)
        print(f"  export TOKEN={token}\n", flush=True)
        (LOCAL / "dev-token").write_text(token + "\n")
        from functions.ingress.app import create_app

        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; with this handler
        # that ends in an exception rather than the default action, so the services below stop too.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        with emulator:
            uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
        return 0
    finally:
        if smtp is not None:
            smtp.stop()
        if s3 is not None:
            s3.stop()
        if postgres is not None:
            postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
