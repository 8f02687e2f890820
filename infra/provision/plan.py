"""The provisioning steps, in order. Each checks whether its work is already done before acting.

1. apps: the API app and the worker app (`fly apps list --json`, `fly apps create`)
2. Managed Postgres (`fly mpg`; Fly no longer supports unmanaged `fly postgres`): a cluster found
   by name or created, a database in it, and on both apps DATABASE_URL (pooled, through PgBouncer:
   `fly mpg attach`) and DATABASE_DIRECT_URL (direct: LISTEN/NOTIFY, the dispatcher's advisory
   lock and migrations need a session of their own, which a transaction pooler does not give)
3. Tigris: one bucket (`fly storage create`, app-less so it prints its keys), keys set on both apps
4. the dispatcher's deploy token, scoped to the worker app (`fly tokens create deploy`), checked
   with one Machines API call, set on the API as FLY_API_TOKEN; `rotate_token` replaces it
5. the remaining secrets of each app (generated or taken from this process's environment)
6. the worker image (`fly deploy --build-only --push`), WORKER_IMAGE on the API, and the API
   deploy (which runs the migration as release_command), unless the API already runs this label
7. when no deploy happened but the API has secrets its machines do not run with yet (this run's,
   or staged earlier): `fly secrets deploy`. Staged secrets reach no machine until a deploy, so
   without this a rotated token would stay unused. The worker app has no machines of its own
   (`secrets deploy` refuses such an app); the machines the dispatcher creates read its secrets.

flyctl facts this relies on (github.com/superfly/flyctl at ad0172f, internal/command/...):
`mpg list --json` prints "No managed postgres clusters found in organization <org>" when there are
none, and JSON of clusters ({"id", "name", "status", …}) otherwise (mpg/list.go); `mpg create`
waits until the cluster is ready and prints text only (mpg/v2/run_create.go); `mpg status <id>
--json` prints {"data": {…, "status"}, "credentials": {"user", "password", "dbname",
"pgbouncer_uri"}} (mpg/v2/run_status.go, internal/uiex/mpg/v2/client.go); `mpg attach` sets the
pooled URI with the default credentials and the --database path, refuses when the variable is set,
and deploys nothing (mpg/v2/run_attach.go); `secrets list --json` gives each secret a "status",
"Staged" while no machine runs with it (secrets/list.go); `secrets deploy` restarts the app's
machines with the current secrets (secrets/deploy.go). The direct URL is the pooled one with host
direct.<cluster>.flympg.net instead of pgbouncer.<cluster>.flympg.net
(https://fly.io/docs/mpg/client-configuration/).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import urllib.parse
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
DATABASE_VARS = ("DATABASE_URL", "DATABASE_DIRECT_URL")
_DONE_STATUSES = frozenset({"complete", "completed", "succeeded", "successful"})
_PENDING_STATUSES = frozenset({"staged", "partial"})  # secrets not (yet) on every machine
# "No postgres clusters found", "No managed postgres clusters found in organization x", "No databases
# found for cluster x": what flyctl prints, even with --json, for an empty list.
_NOTHING_FOUND = re.compile(r"No [\w ]+ found\b[^\n]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    org: str
    api_app: str
    worker_app: str
    region: str
    postgres_app: str  # the Managed Postgres cluster's name
    bucket: str
    image_label: str
    database_name: str = "content_processor"
    pg_plan: str = "basic"
    pg_region: str | None = None  # default: region (Managed Postgres runs in fewer regions than machines)
    pg_volume_gb: int = 40
    token_expiry: str = "8760h"  # noqa: S105 - a lifetime, not a secret
    rotate_token: bool = False
    machines_api_url: str = "https://api.machines.dev"
    api_config: str = "fly.api.toml"  # relative to the repository root, where fly runs
    worker_config: str = "fly.worker.toml"

    @property
    def worker_image(self) -> str:
        return f"registry.fly.io/{self.worker_app}:{self.image_label}"


def parse_listing(output: str | None) -> list[dict[str, Any]]:
    """The objects of a `--json` listing; [] for None, nothing, or flyctl's "No … found" sentence."""
    text = (output or "").strip()
    if not text or _NOTHING_FOUND.fullmatch(text):
        return []
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise ProvisionError(f"unexpected fly output (not JSON): {text[:200]!r}") from exc
    return [item for item in items or [] if isinstance(item, dict)]


def _names(listing: str | None, *keys: str) -> set[str]:
    """Names from a `--json` listing, under whichever of `keys` flyctl uses for that command."""
    return {str(item[k]) for item in parse_listing(listing) for k in keys if k in item}


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


def database_urls(status_output: str, cluster: str, database: str) -> tuple[str, str]:
    """(pooled, direct) URLs of `database` from `fly mpg status <id> --json`.

    Raises ProvisionError when the cluster is not ready or its pooled URI is not Fly's pgbouncer host.
    """
    try:
        status = json.loads(status_output)
        state, credentials = str(status["data"]["status"]), status["credentials"]
        pooled = urllib.parse.urlsplit(str(credentials["pgbouncer_uri"]))
        user, password = str(credentials["user"]), str(credentials["password"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvisionError(f"unexpected `fly mpg status {cluster} --json` output") from exc
    if state != "ready":
        raise ProvisionError(
            f"Managed Postgres cluster {cluster} is {state}: re-run when `fly mpg status {cluster}` says ready"
        )
    host = pooled.netloc.rpartition("@")[2]
    if not host.startswith("pgbouncer."):
        raise ProvisionError(
            f"cluster {cluster}'s pooled host is not pgbouncer.<cluster>: set DATABASE_DIRECT_URL on both apps "
            "from the dashboard's Connect tab (the direct URL)"
        )
    userinfo = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    path = "/" + urllib.parse.quote(database, safe="")

    def url(netloc_host: str) -> str:
        return urllib.parse.urlunsplit(pooled._replace(netloc=f"{userinfo}@{netloc_host}", path=path))

    return url(host), url("direct." + host.removeprefix("pgbouncer."))


def _release_done(listing: str | None, label: str) -> bool:
    for release in parse_listing(listing):
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
        self.api_pending = False  # the API has secrets its machines do not run with yet

    def run(self) -> None:
        """All steps, in order. Raises ProvisionError at the first one that cannot complete."""
        self.apps()
        api_secrets = self.secret_names(self.c.api_app)
        worker_secrets = self.secret_names(self.c.worker_app)
        self.postgres({self.c.api_app: api_secrets, self.c.worker_app: worker_secrets})
        self.storage(api_secrets, worker_secrets)
        self.deploy_token(api_secrets)
        self.other_secrets(api_secrets, worker_secrets)
        if not self.image_and_deploy() and self.api_pending:
            self.fly.act("secrets", "deploy", "--app", self.c.api_app)
        self.fly.say("done" + (" (dry run: nothing was changed)" if self.fly.dry_run else ""))

    def secret_names(self, app: str) -> set[str]:
        listing = parse_listing(self.fly.check("secrets", "list", "--app", app, "--json"))
        if app == self.c.api_app:
            self.api_pending = any(str(s.get("status", "")).lower() in _PENDING_STATUSES for s in listing)
        return {str(name) for s in listing if (name := s.get("name") or s.get("Name"))}

    def write(self, app: str, values: Mapping[str, str], present: set[str]) -> None:
        """Stage secrets on `app` (every byte kept) and note them as present."""
        self.fly.set_secrets(app, values)
        present.update(values)
        if app == self.c.api_app:
            self.api_pending = True

    def apps(self) -> None:
        existing = _names(self.fly.check("apps", "list", "--json"), "Name", "name")
        for app in (self.c.api_app, self.c.worker_app):
            if app not in existing:
                self.fly.act("apps", "create", app, "--org", self.c.org)

    def _cluster_id(self, *, exists: bool = True) -> str | None:
        listing = self.fly.check("mpg", "list", "--org", self.c.org, "--json", exists=exists)
        if listing is None and not exists:
            return f"<id of {self.c.postgres_app}>"  # created earlier in this dry run
        ids = [str(c["id"]) for c in parse_listing(listing) if c.get("name") == self.c.postgres_app and "id" in c]
        if len(ids) > 1:
            raise ProvisionError(
                f"{len(ids)} Managed Postgres clusters are named {self.c.postgres_app} ({', '.join(ids)}); "
                "pass the one to use with --postgres-app after renaming or destroying the others"
            )
        return ids[0] if ids else None

    def postgres(self, present: dict[str, set[str]]) -> None:
        missing = {app: [v for v in DATABASE_VARS if v not in names] for app, names in present.items()}
        missing = {app: variables for app, variables in missing.items() if variables}
        if not missing:
            return
        cluster = self._cluster_id()
        if cluster is None:
            with_url = [app for app, names in present.items() if "DATABASE_URL" in names]
            if len(with_url) == len(present):
                # Set up before Managed Postgres (unmanaged Fly Postgres, unpooled) or by hand: the data
                # is there, so nothing is replaced; sessions use DATABASE_URL, which is right unpooled.
                self.fly.say(
                    f"note: DATABASE_URL is set on both apps and there is no Managed Postgres cluster named "
                    f"{self.c.postgres_app} in {self.c.org}: the database is left as it is. If DATABASE_URL goes "
                    "through a pooler, set DATABASE_DIRECT_URL on both apps (docs/deploy.md)"
                )
                return
            if with_url:
                raise ProvisionError(
                    f"DATABASE_URL is set on {' and '.join(with_url)} only, and there is no Managed Postgres "
                    f"cluster named {self.c.postgres_app} in {self.c.org}: set it on the other app too, or "
                    "unset it to attach both to a new cluster"
                )
            self.fly.act(
                "mpg", "create", "--name", self.c.postgres_app, "--org", self.c.org,
                "--region", self.c.pg_region or self.c.region, "--plan", self.c.pg_plan,
                "--volume-size", str(self.c.pg_volume_gb),
            )  # fmt: skip
            cluster = self._cluster_id(exists=not self.fly.dry_run)
            if cluster is None:
                raise ProvisionError(f"`fly mpg create` did not leave a cluster named {self.c.postgres_app}")
        created = cluster.startswith("<")  # only in a dry run: nothing to read yet
        databases = _names(self.fly.check("mpg", "databases", "list", cluster, "--json", exists=not created), "name")
        if self.c.database_name not in databases:
            self.fly.act("mpg", "databases", "create", cluster, "--name", self.c.database_name)
        status = self.fly.check("mpg", "status", cluster, "--json", exists=not created)
        direct = "" if status is None else database_urls(status, cluster, self.c.database_name)[1]
        for app, variables in missing.items():
            if "DATABASE_URL" in variables:
                # attach also records the app on the cluster (the dashboard's attached apps).
                self.fly.act("mpg", "attach", cluster, "--app", app, "--database", self.c.database_name)
                present[app].add("DATABASE_URL")
                self.api_pending |= app == self.c.api_app
            if "DATABASE_DIRECT_URL" in variables:
                self.write(app, {"DATABASE_DIRECT_URL": direct}, present[app])

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
            self.write(app, keys, present)

    def deploy_token(self, api_secrets: set[str]) -> None:
        if "FLY_API_TOKEN" in api_secrets and not self.c.rotate_token:
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
        self.write(self.c.api_app, {"FLY_API_TOKEN": token}, api_secrets)
        if self.c.rotate_token:
            self.fly.say(
                f"note: the previous token stays valid until you revoke it, once the API runs the new one: "
                f"`fly tokens list --app {self.c.worker_app}`, then `fly tokens revoke <id>`"
            )

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
                self.write(app, missing, present)

    def image_and_deploy(self) -> bool:
        """Build, push and deploy unless the API already runs this label; whether it deployed."""
        releases = self.fly.check("releases", "--app", self.c.api_app, "--json")
        if _release_done(releases, self.c.image_label):
            self.fly.say(f"{self.c.api_app} already runs {self.c.image_label}")
            return False
        self.fly.act(
            "deploy", "--config", self.c.worker_config, "--app", self.c.worker_app,
            "--build-only", "--push", "--image-label", self.c.image_label, "--remote-only",
        )  # fmt: skip
        self.write(self.c.api_app, {"WORKER_IMAGE": self.c.worker_image}, set())
        self.fly.act(
            "deploy", "--config", self.c.api_config, "--app", self.c.api_app,
            "--image-label", self.c.image_label, "--remote-only",
        )  # fmt: skip
        return True


def describe(config: Config) -> dict[str, Any]:
    """What will be provisioned, for the opening lines of the output."""
    return {
        "org": config.org,
        "api app": config.api_app,
        "worker app": config.worker_app,
        "region": config.region,
        "postgres": f"Managed Postgres {config.postgres_app} ({config.pg_plan}), database {config.database_name}",
        "bucket": config.bucket,
        "worker image": config.worker_image,
    }
