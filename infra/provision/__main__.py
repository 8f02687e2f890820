"""`python -m infra.provision [--dry-run] [--org ORG] …`: create or complete the Fly deployment.

Every step first checks whether it is done; re-running after a failure, or against a complete
deployment, only does what is missing. `--dry-run` runs the checks and prints every `fly`
command and Machines API call it would make, in order, without changing anything.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tomllib

from .flyctl import Fly, ProvisionError, find_fly
from .plan import ROOT, Config, Provisioner, describe


def _toml(name: str) -> dict[str, object]:
    with (ROOT / name).open("rb") as f:
        return tomllib.load(f)


def default_image_label() -> str:
    """`git-<commit>`, with `-dirty-<time>` when the work tree has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        label = f"git-{git('rev-parse', '--short=12', 'HEAD')}"
        if git("status", "--porcelain", "--untracked-files=no"):
            label += f"-dirty-{int(time.time())}"
        return label
    except (OSError, subprocess.CalledProcessError):
        return f"build-{int(time.time())}"


def parse_config(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    api_toml, worker_toml = _toml("fly.api.toml"), _toml("fly.worker.toml")
    parser = argparse.ArgumentParser(prog="python -m infra.provision", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument("--org", default="personal", help="Fly organization slug")
    parser.add_argument("--api-app", default=str(api_toml["app"]))
    parser.add_argument("--worker-app", default=str(worker_toml["app"]))
    parser.add_argument("--region", default=str(api_toml["primary_region"]))
    parser.add_argument("--postgres-app", help="Managed Postgres cluster name; default: <api app>-db")
    parser.add_argument("--bucket", help="Tigris bucket name (global); default: <api app>-outputs")
    parser.add_argument("--image-label", help="image tag; default: git-<commit>")
    parser.add_argument("--pg-plan", default="basic", help="Managed Postgres plan (`fly mpg create --plan`)")
    parser.add_argument("--pg-region", help="Managed Postgres region; default: --region")
    parser.add_argument("--pg-volume-gb", type=int, default=40)
    parser.add_argument("--token-expiry", default="8760h", help="deploy token lifetime (Go duration)")
    parser.add_argument(
        "--rotate-token", action="store_true", help="replace the dispatcher's deploy token and restart the API with it"
    )
    parser.add_argument("--machines-api-url", default="https://api.machines.dev", help="for the token check")
    parser.add_argument("--fly", help="flyctl executable (default: fly or flyctl on PATH)")
    args = parser.parse_args(argv)
    config = Config(
        org=args.org,
        api_app=args.api_app,
        worker_app=args.worker_app,
        region=args.region,
        postgres_app=args.postgres_app or f"{args.api_app}-db",
        bucket=args.bucket or f"{args.api_app}-outputs",
        image_label=args.image_label or default_image_label(),
        pg_plan=args.pg_plan,
        pg_region=args.pg_region,
        pg_volume_gb=args.pg_volume_gb,
        token_expiry=args.token_expiry,
        rotate_token=args.rotate_token,
        machines_api_url=args.machines_api_url,
    )
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_config(argv)
    fly = Fly(find_fly(args.fly), dry_run=args.dry_run, cwd=ROOT)
    for key, value in describe(config).items():
        fly.say(f"# {key}: {value}")
    try:
        Provisioner(config, fly).run()
    except ProvisionError as exc:
        print(f"provisioning stopped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
