"""A stand-in for flyctl on PATH, for the provisioning tests: it behaves as the real flyctl does
wherever the provisioner depends on it, including where flyctl is unkind.

Its world (apps, secrets set and secrets live on machines, releases, Managed Postgres clusters,
tokens) is a JSON file (FAKE_FLY_STATE); every call is appended to FAKE_FLY_LOG with its stdin.
Run with `python -IS` (no site packages): it imports nothing outside the standard library.

Behaviour and where it comes from (github.com/superfly/flyctl at ad0172f, internal/command/...):
- `postgres list --json` prints the sentence "No postgres clusters found", not JSON, when there are
  none (postgres/list.go: the check comes before the --json branch).
- `mpg list --json` likewise prints "No managed postgres clusters found in organization <org>"
  (mpg/list.go); otherwise JSON of []ManagedCluster (internal/uiex/mpg/v1/client.go), its
  `organization` a fly-go Organization (no json tags: "Slug", "RawSlug", ...).
- `mpg create` waits until the cluster is ready and prints text only, including the ID and the
  pooled connection string (mpg/create.go, mpg/v2/run_create.go).
- `mpg status <id> --json` prints {"data": ManagedCluster, "credentials": {"status", "user",
  "password", "dbname", "pgbouncer_uri"}} (mpg/v2/run_status.go, internal/uiex/mpg/v2/client.go).
  The URI is the pooled one, host pgbouncer.<cluster>.flympg.net; the direct one is
  direct.<cluster>.flympg.net (https://fly.io/docs/mpg/client-configuration/).
- `mpg databases list <id> --json` prints "No databases found for cluster <id>" when empty;
  `mpg databases create <id> --name N` (mpg/databases.go, mpg/v2/run_databases.go).
- `mpg attach <id> --app A [--database D]` refuses when A already has the variable, sets it to the
  pooled URI with the default credentials and path /D, and deploys nothing (mpg/v2/run_attach.go:
  appsecrets.Update only).
- `secrets import` parses stdin like a dotenv file: cuts a value at its first `#` unless an odd
  number of `"` precede it, strips one pair of surrounding `"` or `'`, reads `\"\"\"` blocks over
  several lines, drops a trailing CR, trims the key and leading spaces of the value, and stops
  silently at a line of 64 KiB (secrets/parser.go; bufio.Scanner's error is never checked).
- `secrets set NAME=VALUE ...` splits each argument at its first `=` and keeps the rest as is; a
  value `-` reads stdin (at most 64 KiB), trimmed of white space (secrets/set.go,
  internal/cmdutil/flags.go, helpers/stdin.go).
- `--stage` sets secrets without touching machines; without it an app with machines is redeployed
  with them, and an app never deployed gets "Secrets are staged for the first deployment"
  (secrets/secrets.go DeploySecrets).
- `secrets deploy` fails with "no machines available to deploy" unless the app was deployed and has
  machines (secrets/deploy.go).
- `secrets list --json` prints [{"name", "digest", "status"}], status "Staged" for a secret no
  machine runs with (every secret of an app without machines) (secrets/list.go).
- `tokens create deploy --json` prints {"token": ...} (tokens/create.go).
- Flags a command does not define fail as cobra does: "unknown flag: --x".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import urllib.parse
from typing import Any, NoReturn

VALUE_FLAGS = {"--app", "--org", "--name", "--region", "--plan", "--volume-size", "--database", "--username"}
VALUE_FLAGS |= {"--variable-name", "--config", "--image-label", "--expiry", "--pg-major-version"}
SHORT = {"-a": "--app", "-o": "--org", "-n": "--name", "-r": "--region", "-d": "--database", "-u": "--username"}
SHORT |= {"-c": "--config", "-x": "--expiry", "-j": "--json", "-y": "--yes"}
SECRET_FLAGS = {"--app", "--config", "--detach", "--stage", "--dns-checks"}
COMMAND_FLAGS: dict[tuple[str, ...], set[str]] = {
    ("apps", "list"): {"--json", "--org", "--quiet", "--verbose"},
    ("apps", "create"): {"--org", "--name", "--json", "--network", "--yes", "--save", "--generate-name"},
    ("secrets", "list"): {"--app", "--config", "--json"},
    ("secrets", "import"): SECRET_FLAGS,
    ("secrets", "set"): SECRET_FLAGS,
    ("secrets", "unset"): SECRET_FLAGS,
    ("secrets", "deploy"): {"--app", "--config", "--detach", "--dns-checks"},
    ("postgres", "list"): {"--json"},
    ("mpg", "list"): {"--json", "--org", "--deleted"},
    ("mpg", "create"): {"--region", "--org", "--name", "--v2", "--plan", "--volume-size", "--pg-major-version"},
    ("mpg", "status"): {"--json"},
    ("mpg", "databases", "list"): {"--json"},
    ("mpg", "databases", "create"): {"--name"},
    ("mpg", "attach"): {"--app", "--config", "--variable-name", "--database", "--username"},
    ("storage", "create"): {"--name", "--org", "--yes", "--app", "--public"},
    ("tokens", "create", "deploy"): {"--app", "--config", "--json", "--name", "--expiry"},
    ("releases",): {"--app", "--config", "--json", "--image"},
    ("deploy",): {"--config", "--app", "--build-only", "--push", "--image-label", "--remote-only"},
}
SCAN_MAX = 64 * 1024  # bufio.MaxScanTokenSize
STDIN_MAX = 64 * 1024  # secrets set NAME=-: helpers.ReadStdin(64 * 1024)
# Go's unicode.IsSpace (strings.TrimSpace).
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
GO_SPACE += "\u2028\u2029\u202f\u205f\u3000"


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_args(argv: list[str]) -> tuple[tuple[str, ...], list[str], dict[str, Any]]:
    """(command, positional arguments, flags) the way cobra reads them (flags anywhere)."""
    for length in (3, 2, 1):
        if tuple(argv[:length]) in COMMAND_FLAGS:
            command = tuple(argv[:length])
            break
    else:
        fail(f"unknown command {argv}")
    positional: list[str] = []
    flags: dict[str, Any] = {}
    rest = argv[len(command) :]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("-") and arg != "-":
            name, has_value, value = arg.partition("=")
            name = SHORT.get(name, name)
            if name not in COMMAND_FLAGS[command]:
                fail(f"unknown flag: {name}")
            if name in VALUE_FLAGS and not has_value:
                i += 1
                value = rest[i]
            flags[name] = value if name in VALUE_FLAGS else True
        else:
            positional.append(arg)
        i += 1
    return command, positional, flags


def scan_lines(data: bytes) -> list[str]:
    """bufio.Scanner with ScanLines: a trailing CR dropped; scanning stops at a line too long."""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    lines = []
    for raw in parts:
        if len(raw) >= SCAN_MAX:
            break  # ErrTooLong, which parseSecrets never looks at
        lines.append((raw[:-1] if raw.endswith(b"\r") else raw).decode("utf-8", "replace"))
    return lines


def parse_import(data: bytes) -> dict[str, str]:
    """flyctl's parseSecrets (secrets/parser.go), step for step."""
    secrets: dict[str, str] = {}
    multiline = False
    key, parts = "", []
    for line in scan_lines(data):
        if multiline:
            if line.endswith('"""'):
                parts.append(line[:-3])
                secrets[key] = "".join(parts)
                multiline, key, parts = False, "", []
            else:
                parts.append(line + "\n")
            continue
        if line.startswith("#") or line.strip(GO_SPACE) == "":
            continue
        if "=" not in line:
            fail(
                f"Failed to parse secrets from stdin: Secrets must be provided as NAME=VALUE pairs ({line} is invalid)"
            )
        name, value = line.split("=", 1)
        name = name.strip(GO_SPACE)
        value = value.lstrip(" ")
        if "#" in value:
            before = value.split("#", 1)[0]
            if before.count('"') % 2 == 0:
                value = before.rstrip(" ")
        if value.startswith('"""') and value.endswith('"""') and len(value) >= 6:
            secrets[name] = value[3:-3]
        elif value.startswith('"""'):
            multiline, key, parts = True, name, [value[3:], "\n"]
        else:
            if (value.startswith('"') and value.endswith('"')) or (value.startswith("'") and value.endswith("'")):
                if len(value) < 2:  # value[1:len(value)-1] on one character
                    fail("panic: runtime error: slice bounds out of range [1:0]", 2)
                value = value[1:-1]
            secrets[name] = value
    return secrets


def read_stdin_value(data: bytes) -> str:
    """helpers.ReadStdin(64 KiB): runes, then strings.TrimSpace."""
    if len(data) > STDIN_MAX:
        fail(f"Input exceeded max length of {STDIN_MAX} bytes")
    return data.decode("utf-8", "replace").strip(GO_SPACE)


class Fly:
    def __init__(
        self,
        state: dict[str, Any],
        command: tuple[str, ...],
        positional: list[str],
        flags: dict[str, Any],
        stdin: io.BytesIO,
    ) -> None:
        self.state = state
        self.command = command
        self.args = positional
        self.flags = flags
        self.stdin = stdin  # read once: a second `NAME=-` in one call gets nothing

    def save(self) -> None:
        with open(os.environ["FAKE_FLY_STATE"], "w") as f:
            json.dump(self.state, f)

    def flag(self, name: str) -> str:
        if name not in self.flags:
            fail(f"--{name.lstrip('-')} is required when not running interactively")
        return str(self.flags[name])

    def app(self) -> str:
        app = self.flag("--app")
        if app not in self.state["apps"]:
            fail(f"failed retrieving app {app}: Could not find App")
        return app

    def has_machines(self, app: str) -> bool:
        return bool(self.state["releases"].get(app))  # the build-only worker app never gets any

    def secrets(self, app: str) -> dict[str, str]:
        values: dict[str, str] = self.state["secrets"].setdefault(app, {})
        return values

    def apply(self, app: str, changed: dict[str, str | None]) -> None:
        """appsecrets.Update, then DeploySecrets unless --stage."""
        current = self.secrets(app)
        for name, value in changed.items():
            if value is None:
                current.pop(name, None)
            else:
                current[name] = value
        if self.flags.get("--stage"):
            print("Secrets have been staged, but not set on VMs. Deploy or update machines in this app for the")
            print("secrets to take effect.")
        elif not self.has_machines(app):
            print("Secrets are staged for the first deployment")
        else:
            self.state["live"][app] = dict(current)
        self.save()

    def cluster(self, cluster_id: str) -> dict[str, Any]:
        for cluster in self.state["mpg"]:
            if cluster["id"] == cluster_id:
                return dict(cluster)
        fail(f'managed postgres cluster "{cluster_id}" not found')

    def public(self, cluster: dict[str, Any]) -> dict[str, Any]:
        org = cluster["org"]
        shown = {k: v for k, v in cluster.items() if k not in {"org", "password", "databases"}}
        shown["organization"] = {"ID": f"org-{org}", "Name": org, "Slug": org, "RawSlug": org, "Type": "SHARED"}
        return shown

    def pooled_uri(self, cluster: dict[str, Any], database: str) -> str:
        password = urllib.parse.quote(cluster["password"], safe="")
        return f"postgresql://fly-user:{password}@pgbouncer.{cluster['id']}.flympg.net/{database}"

    def run(self) -> None:
        state, args = self.state, self.args
        match self.command:
            case ("apps", "list"):
                print(json.dumps([{"Name": a, "Organization": {"Slug": state["org"]}} for a in state["apps"]]))
            case ("apps", "create"):
                state["apps"].append(args[0])
                self.save()
            case ("secrets", "list"):
                app = self.app()
                live = state["live"].get(app, {})
                rows = [
                    {
                        "name": name,
                        "digest": hashlib.sha256(value.encode()).hexdigest()[:16],
                        "status": "Deployed" if self.has_machines(app) and live.get(name) == value else "Staged",
                    }
                    for name, value in sorted(self.secrets(app).items())
                ]
                print(json.dumps(rows))
            case ("secrets", "import"):
                app = self.app()
                parsed = parse_import(self.stdin.read())
                if not parsed:
                    fail("requires at least one SECRET=VALUE pair")
                self.apply(app, dict(parsed))
            case ("secrets", "set"):
                app = self.app()
                values: dict[str, str | None] = {}
                for arg in args:
                    if "=" not in arg:
                        fail(f"could not parse secrets: '{arg}': must be in the format NAME=VALUE")
                    name, given = arg.split("=", 1)
                    values[name] = read_stdin_value(self.stdin.read()) if given == "-" else given
                self.apply(app, values)
            case ("secrets", "unset"):
                self.apply(self.app(), dict.fromkeys(args))
            case ("secrets", "deploy"):
                app = self.app()
                if not self.has_machines(app):
                    fail("no machines available to deploy")
                state["live"][app] = dict(self.secrets(app))
                self.save()
            case ("postgres", "list"):
                if not state["postgres"]:
                    print("No postgres clusters found")
                else:
                    print(json.dumps([{"Name": name} for name in state["postgres"]]))
            case ("mpg", "list"):
                org = self.flag("--org")
                clusters = [self.public(c) for c in state["mpg"] if c["org"] == org]
                if not clusters:
                    print(f"No managed postgres clusters found in organization {org}")
                else:
                    print(json.dumps(clusters, indent=2))
            case ("mpg", "create"):
                name, org, region = self.flag("--name"), self.flag("--org"), self.flag("--region")
                plan = str(self.flags.get("--plan", "basic")).lower()
                cluster_id = state["next_mpg_id"]
                cluster = {
                    "id": cluster_id, "mpgd_cluster_id": f"mpgd-{cluster_id}", "version": 2, "name": name,
                    "region": region, "status": "ready", "plan": plan,
                    "disk": int(self.flags.get("--volume-size", 10)), "replicas": 1,
                    "ip_assignments": {"direct": "fdaa:0:1:a7b:1::2"}, "attached_apps": [],
                    "org": org, "password": state["mpg_password"], "databases": ["fly-db"],
                }  # fmt: skip
                state["mpg"].append(cluster)
                self.save()
                print(f"Selected Plan: {plan.title()}\n\nWaiting for cluster {name} ({cluster_id}) to be ready...")
                print(f"\nManaged Postgres cluster created successfully!\n  ID: {cluster_id}\n  Name: {name}")
                print(f"  Organization: {org}\n  Region: {region}\n  Plan: {plan}")
                print(f"  Connection string: {self.pooled_uri(cluster, 'fly-db')}")
            case ("mpg", "status"):
                cluster = self.cluster(args[0])
                credentials = {
                    "status": cluster["status"], "user": "fly-user", "password": cluster["password"],
                    "dbname": "fly-db", "pgbouncer_uri": self.pooled_uri(cluster, "fly-db"),
                }  # fmt: skip
                print(json.dumps({"data": self.public(cluster), "credentials": credentials}, indent=2))
            case ("mpg", "databases", "list"):
                cluster = self.cluster(args[0])
                if not cluster["databases"]:
                    print(f"No databases found for cluster {cluster['id']}")
                else:
                    print(json.dumps([{"name": n} for n in cluster["databases"]]))
            case ("mpg", "databases", "create"):
                cluster_id, name = args[0], self.flag("--name")
                for stored in state["mpg"]:
                    if stored["id"] == cluster_id:
                        stored["databases"].append(name)
                self.save()
                print(f"Creating database {name} in cluster {cluster_id}...\nDatabase created successfully!")
            case ("mpg", "attach"):
                cluster, app = self.cluster(args[0]), self.app()
                variable = str(self.flags.get("--variable-name", "DATABASE_URL"))
                if variable in self.secrets(app):
                    fail(f"app {app} already has {variable} set. Use 'fly secrets unset {variable}' to remove it first")
                uri = self.pooled_uri(cluster, str(self.flags.get("--database", "fly-db")))
                self.secrets(app)[variable] = uri  # appsecrets.Update: set, nothing deployed
                for stored in state["mpg"]:
                    if stored["id"] == cluster["id"]:
                        stored["attached_apps"].append({"name": app, "id": len(stored["attached_apps"]) + 1})
                self.save()
                print(f"\nPostgres cluster {cluster['id']} is being attached to {app}")
                print(f"The following secret was added to {app}:\n  {variable}={uri}")
            case ("storage", "create"):
                print(
                    "Your Tigris project (x) is ready.\n\nSet one or more of the following secrets on your target app."
                )
                print("AWS_ENDPOINT_URL_S3: https://fly.storage.tigris.dev\nAWS_ACCESS_KEY_ID: tid_fake")
                print(f"AWS_SECRET_ACCESS_KEY: tsec_fake\nBUCKET_NAME: {self.flag('--name')}")
            case ("tokens", "create", "deploy"):
                state["tokens"].append({"app": self.app(), "name": self.flags.get("--name"), "token": state["token"]})
                self.save()
                print(json.dumps({"token": state["token"]}) if self.flags.get("--json") else state["token"])
            case ("releases",):
                print(json.dumps(state["releases"].get(self.app(), [])))
            case ("deploy",) if self.flags.get("--build-only"):
                print(f"image: registry.fly.io/{self.app()}:{self.flag('--image-label')}")
            case ("deploy",):
                app = self.app()
                image = f"registry.fly.io/{app}:{self.flag('--image-label')}"
                releases = state["releases"].setdefault(app, [])
                releases.insert(0, {"Version": len(releases) + 1, "Status": "complete", "ImageRef": image})
                state["live"][app] = dict(self.secrets(app))  # machines replaced with the current secrets
                self.save()


def main() -> None:
    argv = sys.argv[1:]
    command, positional, flags = parse_args(argv)
    with open(os.environ["FAKE_FLY_STATE"]) as f:
        state = json.load(f)
    piped = command == ("secrets", "import") or (
        command == ("secrets", "set") and any(a.endswith("=-") for a in positional)
    )
    stdin = sys.stdin.buffer.read() if piped else b""
    with open(os.environ["FAKE_FLY_LOG"], "a") as log:
        log.write(json.dumps({"argv": argv, "stdin": stdin.decode("utf-8", "replace")}) + "\n")
    Fly(state, command, positional, flags, io.BytesIO(stdin)).run()


if __name__ == "__main__":
    main()
