"""The provisioning steps, in order. Each checks whether its work is already done before acting.

1. apps: the API app and the worker app (`fly apps list --json`, `fly apps create`)
2. Postgres: a cluster (`fly postgres list --json`, `fly postgres create`), attached to both apps
   into one database (`fly postgres attach`, which sets DATABASE_URL; skipped where it is set)
3. Tigris: one bucket (`fly storage create`, app-less so it prints its keys), keys set on both apps
4. the dispatcher's deploy token, scoped to the worker app (`fly tokens create deploy`), checked
   with one Machines API call, set on the API as FLY_API_TOKEN
5. the remaining secrets of each app (generated or taken from this process's environment)
6. the worker image (`fly deploy --build-only --push`), WORKER_IMAGE on the API, and the API
   deploy (which runs the migration as release_command), unless the API already runs this label
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.launchers.fly_api import authorization_header
from shared.launchers.fly_config import META_ROLE, ROLE_FUNCTION

from .flyctl import Fly, ProvisionError

ROOT = Path(__file__).resolve().parents[2]
INTERNAL_MACHINES_API = "http://_api.internal:4280"  # what the API app uses from inside Fly (reference 1)
STORAGE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "BUCKET_NAME")
SMTP_VARS = ("SMTP_HOST", "SMTP_PORT", "SMTP_USER", "SMTP_PASSWORD", "SMTP_STARTTLS", "EMAIL_FROM")
_DONE_STATUSES = frozenset({"complete", "completed", "succeeded", "successful"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    org: str
    api_app: str
    worker_app: str
    region: str
    postgres_app: str
    bucket: str
    image_label: str
    database_name: str = "content_processor"
    pg_vm_size: str = "shared-cpu-2x"
    pg_cluster_size: int = 2
    pg_volume_gb: int = 40
    token_expiry: str = "8760h"  # noqa: S105 - a lifetime, not a secret
    machines_api_url: str = "https://api.machines.dev"
    api_config: str = "fly.api.toml"  # relative to the repository root, where fly runs
    worker_config: str = "fly.worker.toml"

    @property
    def worker_image(self) -> str:
        return f"registry.fly.io/{self.worker_app}:{self.image_label}"


def _names(listing: str | None, *keys: str) -> set[str]:
    """Names from a `--json` listing (a list of objects); empty for None or an empty answer."""
    if not listing or not listing.strip():
        return set()
    try:
        items = json.loads(listing)
    except ValueError as exc:
        raise ProvisionError(f"unexpected fly output (not JSON): {listing[:200]!r}") from exc
    return {str(item[k]) for item in items or [] if isinstance(item, dict) for k in keys if k in item}


def _webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def parse_storage_keys(output: str) -> dict[str, str]:
    """`KEY: value` lines printed by `fly storage create`. Raises ProvisionError if keys are missing."""
    found = dict(re.findall(r"^\s*([A-Z][A-Z0-9_]+):\s+(\S+)\s*$", output, re.M))
    missing = [k for k in STORAGE_KEYS if k not in found]
    if missing:
        raise ProvisionError(
            f"`fly storage create` did not print {', '.join(missing)}; the keys are shown only once: "
            "create new ones in the Tigris dashboard (`fly storage dashboard`) and set them on both apps"
        )
    keys = {k: found[k] for k in STORAGE_KEYS}
    keys["AWS_REGION"] = found.get("AWS_REGION", "auto")
    return keys


def _release_done(listing: str | None, label: str) -> bool:
    if not listing or not listing.strip():
        return False
    for release in json.loads(listing) or []:
        if not isinstance(release, dict):
            continue
        image = str(release.get("ImageRef") or release.get("imageRef") or "")
        status = str(release.get("Status") or release.get("status") or "").lower()
        if image.endswith(f":{label}") and status in _DONE_STATUSES:
            return True
    return False


def verify_token(url: str, app: str, token: str) -> int:
    """GET the worker app's machines with the new token (a real Machines API call); the status."""
    response = httpx.get(
        f"{url.rstrip('/')}/v1/apps/{app}/machines",
        params={f"metadata.{META_ROLE}": ROLE_FUNCTION},
        headers={"Authorization": authorization_header(token)},
        timeout=30,
        trust_env=False,
    )
    return response.status_code


class Provisioner:
    """Runs the steps against `fly` (and the Machines API for the token check)."""

    def __init__(
        self,
        config: Config,
        fly: Fly,
        *,
        environ: Mapping[str, str] | None = None,
        check_token: Callable[[str, str, str], int] = verify_token,
    ) -> None:
        self.c = config
        self.fly = fly
        self.environ = dict(os.environ if environ is None else environ)
        self.check_token = check_token

    def run(self) -> None:
        """All steps, in order. Raises ProvisionError at the first one that cannot complete."""
        self.apps()
        api_secrets = _names(self.fly.check("secrets", "list", "--app", self.c.api_app, "--json"), "Name", "name")
        worker_secrets = _names(self.fly.check("secrets", "list", "--app", self.c.worker_app, "--json"), "Name", "name")
        self.postgres(api_secrets, worker_secrets)
        self.storage(api_secrets, worker_secrets)
        self.deploy_token(api_secrets)
        self.other_secrets(api_secrets, worker_secrets)
        self.image_and_deploy()
        self.fly.say("done" + (" (dry run: nothing was changed)" if self.fly.dry_run else ""))

    def apps(self) -> None:
        existing = _names(self.fly.check("apps", "list", "--json"), "Name", "name")
        for app in (self.c.api_app, self.c.worker_app):
            if app not in existing:
                self.fly.act("apps", "create", app, "--org", self.c.org)

    def postgres(self, api_secrets: set[str], worker_secrets: set[str]) -> None:
        clusters = _names(self.fly.check("postgres", "list", "--json"), "Name", "name")
        if self.c.postgres_app not in clusters:
            self.fly.act(
                "postgres", "create", "--name", self.c.postgres_app, "--org", self.c.org, "--region", self.c.region,
                "--vm-size", self.c.pg_vm_size, "--initial-cluster-size", str(self.c.pg_cluster_size),
                "--volume-size", str(self.c.pg_volume_gb),
            )  # fmt: skip
        # Each app gets its own database user on the one shared database (attach's defaults).
        for app, present in ((self.c.api_app, api_secrets), (self.c.worker_app, worker_secrets)):
            if "DATABASE_URL" not in present:
                self.fly.act(
                    "postgres", "attach", self.c.postgres_app, "--app", app,
                    "--database-name", self.c.database_name, "--yes",
                )  # fmt: skip
                present.add("DATABASE_URL")

    def storage(self, api_secrets: set[str], worker_secrets: set[str]) -> None:
        on_api, on_worker = "BUCKET_NAME" in api_secrets, "BUCKET_NAME" in worker_secrets
        if on_api and on_worker:
            return
        if on_api != on_worker:
            raise ProvisionError(
                "the Tigris keys are set on only one app and cannot be read back; set AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3 and BUCKET_NAME on the other with `fly secrets set`"
            )
        output = self.fly.act("storage", "create", "--name", self.c.bucket, "--org", self.c.org, "--yes")
        keys = parse_storage_keys(output) if not self.fly.dry_run else dict.fromkeys([*STORAGE_KEYS, "AWS_REGION"], "")
        # The keys are printed once: store them on both apps before anything else can fail.
        for app, present in ((self.c.api_app, api_secrets), (self.c.worker_app, worker_secrets)):
            self.fly.act("secrets", "import", "--app", app, "--stage", secrets=keys)
            present.update(keys)

    def deploy_token(self, api_secrets: set[str]) -> None:
        if "FLY_API_TOKEN" in api_secrets:
            return
        output = self.fly.act(
            "tokens", "create", "deploy", "--app", self.c.worker_app,
            "--name", f"{self.c.api_app} dispatcher", "--expiry", self.c.token_expiry, "--json",
        )  # fmt: skip
        url = f"{self.c.machines_api_url.rstrip('/')}/v1/apps/{self.c.worker_app}/machines"
        if self.fly.dry_run:
            self.fly.say(f"GET {url}?metadata.{META_ROLE}={ROLE_FUNCTION}  (checks the new token; dry run: not run)")
            token = ""
        else:
            token = str(json.loads(output)["token"])
            self.fly.say(f"GET {url}?metadata.{META_ROLE}={ROLE_FUNCTION}  (checks the new token)")
            status = self.check_token(self.c.machines_api_url, self.c.worker_app, token)
            if status != 200:
                raise ProvisionError(f"the new deploy token cannot list {self.c.worker_app}'s machines (HTTP {status})")
        self.fly.act("secrets", "import", "--app", self.c.api_app, "--stage", secrets={"FLY_API_TOKEN": token})
        api_secrets.add("FLY_API_TOKEN")

    def other_secrets(self, api_secrets: set[str], worker_secrets: set[str]) -> None:
        api_wanted = {
            "FLY_WORKER_APP": self.c.worker_app,
            "FLY_API_HOSTNAME": INTERNAL_MACHINES_API,
            "JWT_SECRET": secrets.token_urlsafe(48),
        }
        worker_wanted = {
            "WEBHOOK_SIGNING_SECRET": _webhook_secret(),
            # Settings requires a JWT_SECRET in production; machines verify no tokens, so the worker
            # gets an unrelated random value rather than the API's signing key.
            "JWT_SECRET": secrets.token_urlsafe(48),
            **{name: self.environ[name] for name in SMTP_VARS if self.environ.get(name)},
        }
        if "SMTP_HOST" not in worker_secrets and "SMTP_HOST" not in worker_wanted:
            self.fly.say("note: SMTP_* not in this environment nor on the worker app; emails fail until they are set")
        for app, wanted, present in (
            (self.c.api_app, api_wanted, api_secrets),
            (self.c.worker_app, worker_wanted, worker_secrets),
        ):
            missing = {k: v for k, v in wanted.items() if k not in present}
            if missing:
                self.fly.act("secrets", "import", "--app", app, "--stage", secrets=missing)
                present.update(missing)

    def image_and_deploy(self) -> None:
        releases = self.fly.check("releases", "--app", self.c.api_app, "--json")
        if _release_done(releases, self.c.image_label):
            self.fly.say(f"{self.c.api_app} already runs {self.c.image_label}")
            return
        self.fly.act(
            "deploy", "--config", self.c.worker_config, "--app", self.c.worker_app,
            "--build-only", "--push", "--image-label", self.c.image_label, "--remote-only",
        )  # fmt: skip
        image = {"WORKER_IMAGE": self.c.worker_image}
        self.fly.act("secrets", "import", "--app", self.c.api_app, "--stage", secrets=image)
        self.fly.act(
            "deploy", "--config", self.c.api_config, "--app", self.c.api_app,
            "--image-label", self.c.image_label, "--remote-only",
        )  # fmt: skip


def describe(config: Config) -> dict[str, Any]:
    """What will be provisioned, for the opening lines of the output."""
    return {
        "org": config.org,
        "api app": config.api_app,
        "worker app": config.worker_app,
        "region": config.region,
        "postgres": config.postgres_app,
        "bucket": config.bucket,
        "worker image": config.worker_image,
    }
