"""Run the Machines API emulator (a TEST DOUBLE) as a server on a loopback port.

    python -m infra.fly_emulator --port 4280 --token dev-token --app cp-worker \
        --secrets-file .emulator-secrets.env

Point the service at it with FLY_API_HOSTNAME=http://127.0.0.1:4280 and FLY_API_TOKEN=dev-token.
The secrets file (KEY=VALUE lines) plays the worker app's secrets: every machine gets them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import uvicorn

from .app import create_app
from .faults import Faults
from .harness import DESTROYED_RETENTION_SECONDS
from .machines import Store
from .ratelimit import RateLimiter
from .recorder import Recorder
from .supervisor import Supervisor


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and `#` comments are skipped. Raises ValueError on a bad line."""
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE")
        env[key.strip()] = value.strip()
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.fly_emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (keep it on loopback)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default=os.environ.get("FLY_EMULATOR_TOKEN"), help="accepted API token")
    parser.add_argument("--app", action="append", dest="apps", help="known app (repeatable; default: any)")
    parser.add_argument("--secrets-file", type=Path, help="KEY=VALUE lines given to every machine")
    parser.add_argument("--secret", action="append", default=[], help="copy this variable from our env (repeatable)")
    parser.add_argument("--log-dir", type=Path, help="where machine output goes (default: a temp dir)")
    parser.add_argument("--region", default="iad")
    parser.add_argument("--rate-limits", action="store_true", help="answer 429 beyond Fly's per-action limits")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or FLY_EMULATOR_TOKEN) is required")
    base_env = read_env_file(args.secrets_file) if args.secrets_file else {}
    base_env.update({name: os.environ[name] for name in args.secret if name in os.environ})
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="fly-emulator-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    store = Store(destroyed_retention_seconds=DESTROYED_RETENTION_SECONDS)
    faults = Faults()
    limiter = RateLimiter()
    limiter.enabled = args.rate_limits
    app = create_app(
        store=store,
        supervisor=Supervisor(store=store, faults=faults, base_env=base_env, log_dir=log_dir),
        faults=faults,
        recorder=Recorder(),
        token=args.token,
        apps=frozenset(args.apps) if args.apps else None,
        default_region=args.region,
        limiter=limiter,
    )
    print(f"fly emulator (test double) on http://{args.host}:{args.port}, machine logs in {log_dir}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
