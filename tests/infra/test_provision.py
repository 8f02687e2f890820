"""`python -m infra.provision` against a fake `fly` on PATH that records every call.

The fake keeps its world (apps, secrets, clusters, releases) in a JSON file, so one test can run
the provisioner twice and see the second run find everything in place. The deploy-token check is
a real Machines API call, answered by the emulator.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.fly_emulator import Emulator, running_emulator
from infra.provision.flyctl import ProvisionError
from infra.provision.plan import parse_storage_keys

ROOT = Path(__file__).resolve().parents[2]
API, WORKER, PG, BUCKET, ORG, LABEL = "cp-api", "cp-worker", "cp-api-db", "cp-outputs", "acme", "test-1"
DEPLOY_TOKEN = "FlyV1 fm2_fake-deploy-token"

FAKE_FLY = r"""
import json, os, sys
state_path, log_path = os.environ["FAKE_FLY_STATE"], os.environ["FAKE_FLY_LOG"]
state = json.load(open(state_path))
args = sys.argv[1:]
stdin = sys.stdin.read() if args[:2] == ["secrets", "import"] else ""
with open(log_path, "a") as log:
    log.write(json.dumps({"argv": args, "stdin": stdin}) + "\n")

def opt(name):
    return args[args.index(name) + 1]

def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)

def save():
    json.dump(state, open(state_path, "w"))

secrets = state.setdefault("secrets", {})
match args[:2]:
    case ["apps", "list"]:
        print(json.dumps([{"Name": a, "Organization": {"Slug": "acme"}} for a in state["apps"]]))
    case ["apps", "create"]:
        state["apps"].append(args[2]); secrets[args[2]] = []; save()
    case ["secrets", "list"]:
        if opt("--app") not in state["apps"]:
            fail("app not found")
        print(json.dumps([{"Name": n, "Digest": "x"} for n in secrets[opt("--app")]]))
    case ["secrets", "import"]:
        names = [line.split("=", 1)[0] for line in stdin.splitlines() if line]
        secrets[opt("--app")] = sorted(set(secrets[opt("--app")]) | set(names)); save()
    case ["postgres", "list"]:
        print(json.dumps([{"Name": c} for c in state["postgres"]]))
    case ["postgres", "create"]:
        state["postgres"].append(opt("--name")); save()
    case ["postgres", "attach"]:
        app = opt("--app")
        if "DATABASE_URL" in secrets[app]:
            fail(f'consumer app "{app}" already contains a secret named DATABASE_URL')
        secrets[app].append("DATABASE_URL"); save()
        print(f"The following secret was added to {app}:\n  DATABASE_URL=postgres://{app}:pw@{args[2]}.flycast:5432/db")
    case ["storage", "create"]:
        print("Your Tigris project (x) is ready.\n\nSet one or more of the following secrets on your target app.")
        print("AWS_ENDPOINT_URL_S3: https://fly.storage.tigris.dev\nAWS_ACCESS_KEY_ID: tid_fake")
        print(f"AWS_SECRET_ACCESS_KEY: tsec_fake\nBUCKET_NAME: {opt('--name')}")
    case ["tokens", "create"]:
        print(json.dumps({"token": state["token"]}))
    case ["releases", _]:
        print(json.dumps(state["releases"].get(opt("--app"), [])))
    case ["deploy", _] if "--build-only" in args:
        print(f"image: registry.fly.io/{opt('--app')}:{opt('--image-label')}")
    case ["deploy", _]:
        image = f"registry.fly.io/{opt('--app')}:{opt('--image-label')}"
        release = {"Version": 1, "Status": "complete", "ImageRef": image}
        state["releases"].setdefault(opt("--app"), []).insert(0, release)
        save()
    case _:
        fail(f"fake fly: unknown command {args}")
"""


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with running_emulator(token=DEPLOY_TOKEN, apps=[WORKER]) as emulator:
        yield emulator


class FakeFly:
    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        fly = self.bin / "fly"
        fly.write_text(f"#!{sys.executable} -IS\n{FAKE_FLY}")  # -IS: no site packages, quick start
        fly.chmod(fly.stat().st_mode | stat.S_IXUSR)
        self.state_path = root / "state.json"
        self.log_path = root / "calls.jsonl"
        self.write({"apps": [], "postgres": [], "secrets": {}, "releases": {}, "token": DEPLOY_TOKEN})

    def write(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state))

    @property
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        return state

    def calls(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def imported(self, app: str) -> dict[str, str]:
        """Everything `secrets import` gave `app`, NAME → VALUE."""
        values: dict[str, str] = {}
        for call in self.calls():
            if call["argv"][:2] == ["secrets", "import"] and call["argv"][call["argv"].index("--app") + 1] == app:
                values.update(line.split("=", 1) for line in call["stdin"].splitlines() if line)
        return values

    def reset_log(self) -> None:
        self.log_path.unlink(missing_ok=True)

    def run(self, emu: Emulator, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "EMAIL_FROM"))},
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_FLY_STATE": str(self.state_path),
            "FAKE_FLY_LOG": str(self.log_path),
            **env,
        }
        command = [
            sys.executable, "-m", "infra.provision", "--org", ORG, "--api-app", API, "--worker-app", WORKER,
            "--region", "ams", "--postgres-app", PG, "--bucket", BUCKET, "--image-label", LABEL,
            "--machines-api-url", emu.url, *extra,
        ]  # fmt: skip
        return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def fake(tmp_path: Path) -> FakeFly:
    return FakeFly(tmp_path)


READS = [
    ["apps", "list", "--json"],
    ["secrets", "list", "--app", API, "--json"],
    ["secrets", "list", "--app", WORKER, "--json"],
    ["postgres", "list", "--json"],
    ["releases", "--app", API, "--json"],
]

FULL_PLAN = [
    ["apps", "list", "--json"],
    ["apps", "create", API, "--org", ORG],
    ["apps", "create", WORKER, "--org", ORG],
    ["secrets", "list", "--app", API, "--json"],
    ["secrets", "list", "--app", WORKER, "--json"],
    ["postgres", "list", "--json"],
    ["postgres", "create", "--name", PG, "--org", ORG, "--region", "ams", "--vm-size", "shared-cpu-2x",
     "--initial-cluster-size", "2", "--volume-size", "40"],
    ["postgres", "attach", PG, "--app", API, "--database-name", "content_processor", "--yes"],
    ["postgres", "attach", PG, "--app", WORKER, "--database-name", "content_processor", "--yes"],
    ["storage", "create", "--name", BUCKET, "--org", ORG, "--yes"],
    ["secrets", "import", "--app", API, "--stage"],
    ["secrets", "import", "--app", WORKER, "--stage"],
    ["tokens", "create", "deploy", "--app", WORKER, "--name", f"{API} dispatcher", "--expiry", "8760h", "--json"],
    ["secrets", "import", "--app", API, "--stage"],
    ["secrets", "import", "--app", API, "--stage"],
    ["secrets", "import", "--app", WORKER, "--stage"],
    ["releases", "--app", API, "--json"],
    ["deploy", "--config", "fly.worker.toml", "--app", WORKER, "--build-only", "--push", "--image-label", LABEL,
     "--remote-only"],
    ["secrets", "import", "--app", API, "--stage"],
    ["deploy", "--config", "fly.api.toml", "--app", API, "--image-label", LABEL, "--remote-only"],
]  # fmt: skip


def test_a_fresh_run_provisions_everything_in_order(fake: FakeFly, emu: Emulator) -> None:
    result = fake.run(emu, SMTP_HOST="smtp.example.com", SMTP_PASSWORD="smtp-pass", EMAIL_FROM="Ops <ops@example.com>")
    assert result.returncode == 0, result.stderr
    assert fake.argvs() == FULL_PLAN

    api, worker = fake.imported(API), fake.imported(WORKER)
    storage = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "BUCKET_NAME"}
    assert {k: api[k] for k in storage} == {k: worker[k] for k in storage}
    assert api["BUCKET_NAME"] == BUCKET and api["AWS_REGION"] == "auto"
    assert api["FLY_API_TOKEN"] == DEPLOY_TOKEN
    assert api["FLY_WORKER_APP"] == WORKER
    assert api["FLY_API_HOSTNAME"] == "http://_api.internal:4280"
    assert api["WORKER_IMAGE"] == f"registry.fly.io/{WORKER}:{LABEL}"
    assert worker["WEBHOOK_SIGNING_SECRET"].startswith("whsec_")
    assert (worker["SMTP_HOST"], worker["SMTP_PASSWORD"]) == ("smtp.example.com", "smtp-pass")
    assert "FLY_API_TOKEN" not in worker  # the worker's machines never need the API token
    assert api["JWT_SECRET"] != worker["JWT_SECRET"]  # the API's signing key stays on the API
    assert set(fake.state["secrets"][API]) >= {"DATABASE_URL", "FLY_API_TOKEN", "WORKER_IMAGE", "JWT_SECRET"}
    assert set(fake.state["secrets"][WORKER]) >= {"DATABASE_URL", "BUCKET_NAME", "WEBHOOK_SIGNING_SECRET"}

    # The new token was tried on the Machines API before it was stored.
    (check,) = emu.requests_to("GET", f"/v1/apps/{WORKER}/machines")
    assert (check.status, check.headers["authorization"]) == (200, DEPLOY_TOKEN)
    for secret in ("smtp-pass", "tsec_fake", "fm2_fake-deploy-token", api["JWT_SECRET"]):
        assert secret not in result.stdout + result.stderr


def test_a_second_run_finds_everything_and_creates_nothing(fake: FakeFly, emu: Emulator) -> None:
    assert fake.run(emu, SMTP_HOST="smtp.example.com").returncode == 0
    before = fake.state
    fake.reset_log()

    again = fake.run(emu, SMTP_HOST="smtp.example.com")
    assert again.returncode == 0, again.stderr
    assert fake.argvs() == READS
    assert fake.state == before
    assert f"{API} already runs {LABEL}" in again.stdout


def test_a_new_image_label_only_builds_and_deploys(fake: FakeFly, emu: Emulator) -> None:
    assert fake.run(emu, SMTP_HOST="smtp.example.com").returncode == 0
    fake.reset_log()
    assert fake.run(emu, "--image-label", "test-2", SMTP_HOST="smtp.example.com").returncode == 0
    assert fake.argvs()[len(READS):] == [
        ["deploy", "--config", "fly.worker.toml", "--app", WORKER, "--build-only", "--push", "--image-label", "test-2",
         "--remote-only"],
        ["secrets", "import", "--app", API, "--stage"],
        ["deploy", "--config", "fly.api.toml", "--app", API, "--image-label", "test-2", "--remote-only"],
    ]  # fmt: skip
    assert fake.imported(API)["WORKER_IMAGE"] == f"registry.fly.io/{WORKER}:test-2"


def test_dry_run_prints_the_whole_plan_and_changes_nothing(fake: FakeFly, emu: Emulator) -> None:
    before = fake.state
    result = fake.run(emu, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert fake.state == before
    assert all(argv in READS for argv in fake.argvs())  # only checks ran
    printed = [line for line in result.stdout.splitlines() if line.startswith(("$ fly ", "GET "))]
    fly_lines = [line for line in printed if line.startswith("$ fly ")]
    commands = [shlex.split(line.removeprefix("$ fly ").split("  ")[0]) for line in fly_lines]
    assert commands == FULL_PLAN
    for command, line in zip(commands, fly_lines, strict=True):
        assert ("(dry run: not run)" in line) == (command not in READS), line
    machines_call = [line for line in printed if line.startswith("GET ")]
    url = f"{emu.url}/v1/apps/{WORKER}/machines?metadata.cp_role=function-machine"
    assert machines_call == [f"GET {url}  (checks the new token; dry run: not run)"]
    assert printed.index(machines_call[0]) == 13  # right after the token is created
    assert emu.requests == []  # a dry run makes no Machines API call


def test_an_interrupted_run_resumes_where_it_stopped(fake: FakeFly, emu: Emulator) -> None:
    fake.write({
        "apps": [API, WORKER], "postgres": [PG], "releases": {}, "token": DEPLOY_TOKEN,
        "secrets": {API: ["DATABASE_URL"], WORKER: []},
    })  # fmt: skip
    result = fake.run(emu, SMTP_HOST="smtp.example.com")
    assert result.returncode == 0, result.stderr
    argvs = fake.argvs()
    assert not [a for a in argvs if a[:2] in (["apps", "create"], ["postgres", "create"])]
    assert [a for a in argvs if a[:2] == ["postgres", "attach"]] == [
        ["postgres", "attach", PG, "--app", WORKER, "--database-name", "content_processor", "--yes"]
    ]


def test_storage_keys_on_one_app_only_stop_with_instructions(fake: FakeFly, emu: Emulator) -> None:
    fake.write({
        "apps": [API, WORKER], "postgres": [PG], "releases": {}, "token": DEPLOY_TOKEN,
        "secrets": {API: ["DATABASE_URL", "BUCKET_NAME"], WORKER: ["DATABASE_URL"]},
    })  # fmt: skip
    result = fake.run(emu)
    assert result.returncode == 1
    assert "cannot be read back" in result.stderr
    assert not [a for a in fake.argvs() if a[:2] == ["storage", "create"]]


def test_a_token_the_machines_api_refuses_is_not_stored(fake: FakeFly, emu: Emulator) -> None:
    state = fake.state
    state["token"] = "FlyV1 fm2_not-accepted"
    fake.write(state)
    result = fake.run(emu)
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    assert "FLY_API_TOKEN" not in fake.imported(API)


def test_storage_output_is_parsed_and_old_output_without_values_is_refused() -> None:
    output = (
        "Setting the following secrets on x:\nAWS_ACCESS_KEY_ID: tid_1\n"
        "AWS_ENDPOINT_URL_S3: https://fly.storage.tigris.dev\nAWS_REGION: auto\nAWS_SECRET_ACCESS_KEY: tsec_1\n"
        "BUCKET_NAME: b\n\nSecrets are staged for the first deployment\n"
    )
    assert parse_storage_keys(output) == {
        "AWS_ACCESS_KEY_ID": "tid_1",
        "AWS_SECRET_ACCESS_KEY": "tsec_1",
        "AWS_ENDPOINT_URL_S3": "https://fly.storage.tigris.dev",
        "BUCKET_NAME": "b",
        "AWS_REGION": "auto",
    }
    with pytest.raises(ProvisionError, match="shown only once"):
        parse_storage_keys("Setting the following secrets on x:\nAWS_ACCESS_KEY_ID\nBUCKET_NAME\n")
