"""`python -m infra.provision` against a fake `fly` on PATH (tests/infra/fake_fly.py) that behaves as
the real flyctl does, and records every call.

The fake keeps its world (apps, secrets set and secrets live on machines, Managed Postgres
clusters, releases) in a JSON file, so one test can run the provisioner twice and see the second
run find everything in place. The deploy-token check is a real Machines API call, answered by the
emulator.
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
from infra.provision.flyctl import Fly, ProvisionError, parse_import
from infra.provision.plan import parse_storage_keys

ROOT = Path(__file__).resolve().parents[2]
API, WORKER, PG, BUCKET, ORG, LABEL = "cp-api", "cp-worker", "cp-api-db", "cp-outputs", "acme", "test-1"
DEPLOY_TOKEN = "FlyV1 fm2_fake-deploy-token"
NEW_TOKEN = "FlyV1 fm2_the-next-deploy-token"
CID, PG_PASSWORD, DB = "w6zd9l4kr1xy08ep", "Pg-pass-1", "content_processor"
POOLED = f"postgresql://fly-user:{PG_PASSWORD}@pgbouncer.{CID}.flympg.net/{DB}"
DIRECT = f"postgresql://fly-user:{PG_PASSWORD}@direct.{CID}.flympg.net/{DB}"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with running_emulator(token=DEPLOY_TOKEN, apps=[WORKER]) as emulator:
        yield emulator


def cluster(*, cluster_id: str = CID, status: str = "ready", databases: tuple[str, ...] = ("fly-db", DB)) -> dict:
    """A Managed Postgres cluster as the fake keeps it."""
    return {
        "id": cluster_id, "mpgd_cluster_id": f"mpgd-{cluster_id}", "version": 2, "name": PG, "region": "ams",
        "status": status, "plan": "basic", "disk": 40, "replicas": 1, "ip_assignments": {"direct": "fdaa::2"},
        "attached_apps": [], "org": ORG, "password": PG_PASSWORD, "databases": list(databases),
    }  # fmt: skip


class FakeFly:
    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.fly = self.bin / "fly"
        source = (Path(__file__).parent / "fake_fly.py").read_text()
        self.fly.write_text(f"#!{sys.executable} -IS\n{source}")  # -IS: no site packages, quick start
        self.fly.chmod(self.fly.stat().st_mode | stat.S_IXUSR)
        self.state_path = root / "state.json"
        self.log_path = root / "calls.jsonl"
        self.write({})

    @property
    def env(self) -> dict[str, str]:
        return {"FAKE_FLY_STATE": str(self.state_path), "FAKE_FLY_LOG": str(self.log_path)}

    def write(self, changes: dict[str, Any]) -> None:
        state = {
            "org": ORG, "apps": [], "secrets": {}, "live": {}, "releases": {}, "mpg": [], "postgres": [],
            "tokens": [], "token": DEPLOY_TOKEN, "next_mpg_id": CID, "mpg_password": PG_PASSWORD,
        }  # fmt: skip
        self.state_path.write_text(json.dumps({**state, **changes}))

    @property
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        return state

    def update(self, **changes: Any) -> None:
        self.state_path.write_text(json.dumps({**self.state, **changes}))

    def secrets(self, app: str) -> dict[str, str]:
        """The app's secrets as set (staged or not)."""
        return dict(self.state["secrets"].get(app, {}))

    def live(self, app: str) -> dict[str, str]:
        """The secrets the app's machines run with."""
        return dict(self.state["live"].get(app, {}))

    def calls(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def reset_log(self) -> None:
        self.log_path.unlink(missing_ok=True)

    def call(self, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run the fake directly, as an operator would run fly."""
        env = {**os.environ, **self.env}
        return subprocess.run([str(self.fly), *argv], input=stdin, env=env, capture_output=True, text=True, check=False)

    def run(self, emu: Emulator, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "EMAIL_FROM"))},
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            **self.env,
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


def full_plan(cid: str) -> list[list[str]]:
    """Every command of a run against a fresh organisation, in order."""
    return [
        ["apps", "list", "--json"],
        ["apps", "create", API, "--org", ORG],
        ["apps", "create", WORKER, "--org", ORG],
        ["secrets", "list", "--app", API, "--json"],
        ["secrets", "list", "--app", WORKER, "--json"],
        ["mpg", "list", "--org", ORG, "--json"],
        ["mpg", "create", "--name", PG, "--org", ORG, "--region", "ams", "--plan", "basic", "--volume-size", "40"],
        ["mpg", "list", "--org", ORG, "--json"],
        ["mpg", "databases", "list", cid, "--json"],
        ["mpg", "databases", "create", cid, "--name", DB],
        ["mpg", "status", cid, "--json"],
        ["mpg", "attach", cid, "--app", API, "--database", DB],
        ["secrets", "import", "--app", API, "--stage"],
        ["mpg", "attach", cid, "--app", WORKER, "--database", DB],
        ["secrets", "import", "--app", WORKER, "--stage"],
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


READS = [
    ["apps", "list", "--json"],
    ["secrets", "list", "--app", API, "--json"],
    ["secrets", "list", "--app", WORKER, "--json"],
    ["releases", "--app", API, "--json"],
]
SMTP = {"SMTP_HOST": "smtp.example.com", "SMTP_PASSWORD": "smtp-pass", "EMAIL_FROM": "Ops <ops@example.com>"}


def provisioned(fake: FakeFly, emu: Emulator) -> None:
    """A complete deployment, made by a first run; the call log starts empty after it."""
    result = fake.run(emu, **SMTP)
    assert result.returncode == 0, result.stderr
    fake.reset_log()


def test_a_fresh_organisation_is_provisioned_in_order(fake: FakeFly, emu: Emulator) -> None:
    # A fresh organisation: `fly mpg list --json` answers with a sentence, not JSON.
    assert "No managed postgres clusters found" in fake.call("mpg", "list", "--org", ORG, "--json").stdout
    fake.reset_log()

    result = fake.run(emu, **SMTP)
    assert result.returncode == 0, result.stderr
    assert fake.argvs() == full_plan(CID)

    api, worker = fake.secrets(API), fake.secrets(WORKER)
    # The pool goes through PgBouncer; LISTEN, the leader lock and migrations go direct.
    assert (api["DATABASE_URL"], api["DATABASE_DIRECT_URL"]) == (POOLED, DIRECT)
    assert (worker["DATABASE_URL"], worker["DATABASE_DIRECT_URL"]) == (POOLED, DIRECT)
    assert [a["name"] for a in fake.state["mpg"][0]["attached_apps"]] == [API, WORKER]
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
    assert fake.live(API) == api  # the deploy started the API with every secret

    # The new token was tried on the Machines API before it was stored.
    (check,) = emu.requests_to("GET", f"/v1/apps/{WORKER}/machines")
    assert (check.status, check.headers["authorization"]) == (200, DEPLOY_TOKEN)
    for secret in ("smtp-pass", "tsec_fake", "fm2_fake-deploy-token", api["JWT_SECRET"], PG_PASSWORD):
        assert secret not in result.stdout + result.stderr
        assert not any(secret in arg for argv in fake.argvs() for arg in argv)


def test_a_second_run_finds_everything_and_creates_nothing(fake: FakeFly, emu: Emulator) -> None:
    provisioned(fake, emu)
    before = fake.state

    again = fake.run(emu, **SMTP)
    assert again.returncode == 0, again.stderr
    assert fake.argvs() == READS
    assert fake.state == before
    assert f"{API} already runs {LABEL}" in again.stdout


def test_a_new_image_label_only_builds_and_deploys(fake: FakeFly, emu: Emulator) -> None:
    provisioned(fake, emu)
    assert fake.run(emu, "--image-label", "test-2", **SMTP).returncode == 0
    assert fake.argvs()[len(READS) :] == [
        ["deploy", "--config", "fly.worker.toml", "--app", WORKER, "--build-only", "--push", "--image-label", "test-2",
         "--remote-only"],
        ["secrets", "import", "--app", API, "--stage"],
        ["deploy", "--config", "fly.api.toml", "--app", API, "--image-label", "test-2", "--remote-only"],
    ]  # fmt: skip
    assert fake.live(API)["WORKER_IMAGE"] == f"registry.fly.io/{WORKER}:test-2"


def test_dry_run_prints_the_whole_plan_and_changes_nothing(fake: FakeFly, emu: Emulator) -> None:
    before = fake.state
    result = fake.run(emu, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert fake.state == before
    ran = fake.argvs()
    printed = [line for line in result.stdout.splitlines() if line.startswith(("$ fly ", "GET "))]
    fly_lines = [line for line in printed if line.startswith("$ fly ")]
    commands = [shlex.split(line.removeprefix("$ fly ").split("  ")[0]) for line in fly_lines]
    assert commands == full_plan(f"<id of {PG}>")  # the cluster does not exist yet
    # Only reads of what exists ran; everything else is printed as not run.
    assert [c for c, line in zip(commands, fly_lines, strict=True) if "(dry run: not run)" not in line] == ran
    assert ran == [
        ["apps", "list", "--json"],
        ["secrets", "list", "--app", API, "--json"],
        ["secrets", "list", "--app", WORKER, "--json"],
        ["mpg", "list", "--org", ORG, "--json"],
        ["releases", "--app", API, "--json"],
    ]
    machines_call = [line for line in printed if line.startswith("GET ")]
    url = f"{emu.url}/v1/apps/{WORKER}/machines?metadata.cp_role=function-machine"
    assert machines_call == [f"GET {url}  (checks the new token; dry run: not run)"]
    assert printed[printed.index(machines_call[0]) - 1].startswith("$ fly tokens create deploy")
    assert emu.requests == []  # a dry run makes no Machines API call


def test_the_cluster_can_be_placed_in_another_region(fake: FakeFly, emu: Emulator) -> None:
    result = fake.run(emu, "--dry-run", "--pg-region", "iad")
    assert result.returncode == 0, result.stderr
    create = f"$ fly mpg create --name {PG} --org {ORG} --region iad --plan basic --volume-size 40"
    assert f"{create}  (dry run: not run)" in result.stdout.splitlines()


def test_an_interrupted_run_resumes_where_it_stopped(fake: FakeFly, emu: Emulator) -> None:
    fake.write({"apps": [API, WORKER], "mpg": [cluster()], "secrets": {API: {"DATABASE_URL": POOLED}, WORKER: {}}})
    result = fake.run(emu, **SMTP)
    assert result.returncode == 0, result.stderr
    mpg = [a for a in fake.argvs() if a[0] == "mpg"]
    assert mpg == [
        ["mpg", "list", "--org", ORG, "--json"],
        ["mpg", "databases", "list", CID, "--json"],
        ["mpg", "status", CID, "--json"],
        ["mpg", "attach", CID, "--app", WORKER, "--database", DB],
    ]
    assert not [a for a in fake.argvs() if a[:2] == ["apps", "create"]]
    for app in (API, WORKER):
        assert (fake.secrets(app)["DATABASE_URL"], fake.secrets(app)["DATABASE_DIRECT_URL"]) == (POOLED, DIRECT)


def test_a_database_set_up_before_managed_postgres_is_left_alone(fake: FakeFly, emu: Emulator) -> None:
    legacy = "postgres://cp:pw@cp-api-db.flycast:5432/content_processor"  # unpooled: sessions work on it
    fake.write({"apps": [API, WORKER], "secrets": {API: {"DATABASE_URL": legacy}, WORKER: {"DATABASE_URL": legacy}}})
    result = fake.run(emu, **SMTP)
    assert result.returncode == 0, result.stderr
    assert [a for a in fake.argvs() if a[0] == "mpg"] == [["mpg", "list", "--org", ORG, "--json"]]
    assert "DATABASE_DIRECT_URL" not in fake.secrets(API) | fake.secrets(WORKER)
    assert fake.secrets(API)["DATABASE_URL"] == legacy
    assert f"no Managed Postgres cluster named {PG}" in result.stdout


def test_a_database_url_on_one_app_only_without_a_cluster_stops(fake: FakeFly, emu: Emulator) -> None:
    fake.write({"apps": [API, WORKER], "secrets": {API: {"DATABASE_URL": "postgres://elsewhere/db"}, WORKER: {}}})
    result = fake.run(emu)
    assert result.returncode == 1
    assert f"DATABASE_URL is set on {API} only" in result.stderr
    assert not [a for a in fake.argvs() if a[:2] in (["mpg", "create"], ["mpg", "attach"])]


def test_a_cluster_that_is_not_ready_stops_before_anything_is_attached(fake: FakeFly, emu: Emulator) -> None:
    fake.write({"apps": [API, WORKER], "mpg": [cluster(status="provisioning")]})
    result = fake.run(emu)
    assert result.returncode == 1
    assert "provisioning" in result.stderr and "fly mpg status" in result.stderr
    assert not [a for a in fake.argvs() if a[:2] == ["mpg", "attach"]]


def test_two_clusters_with_the_name_stop_the_run(fake: FakeFly, emu: Emulator) -> None:
    fake.write({"apps": [API, WORKER], "mpg": [cluster(), cluster(cluster_id="other0000000000")]})
    result = fake.run(emu)
    assert result.returncode == 1
    assert CID in result.stderr and "other0000000000" in result.stderr


def test_secret_values_reach_fly_byte_for_byte(fake: FakeFly, emu: Emulator) -> None:
    smtp = {
        "SMTP_HOST": "smtp.example.com",
        "SMTP_USER": " ops user ",  # spaces at both ends
        "SMTP_PASSWORD": "p#ss \"w0rd\" = 'x'",  # cut at '#' by a plain `secrets import` line
        "EMAIL_FROM": '"Ops" <ops@example.com>',
    }
    result = fake.run(emu, **smtp)
    assert result.returncode == 0, result.stderr
    worker = fake.secrets(WORKER)
    assert {k: worker[k] for k in smtp} == smtp
    for value in smtp.values():  # never on a command line, where other users of the machine can read it
        assert not any(value in arg for argv in fake.argvs() for arg in argv)


NASTY = {
    "HASH": "p#ss",
    "HASH_FIRST": "#start",
    "HASH_AFTER_QUOTE": 'a"b#c',
    "QUOTED": '"dq"',
    "SINGLE_QUOTED": "'sq'",
    "TRIPLE": '"""',
    "TRIPLE_FIRST": '"""x',
    "EQUALS": "a=b==c",
    "SPACES": "  both ends  ",
    "TABS": "\ttab\t",
    "EMPTY": "",
    "DASH": "-",
    "NEWLINES": "line one\nline # two\n",
    "LEADING_NEWLINE": "\nafter",
    "CRLF": "a\r\nb",
    "TRAILING_CR": "abc\r",
    "TRIPLE_LINE_END": 'one"""\ntwo',  # a line ending in """ would end an import block early
    "UNICODE": "pässwörd ✓",
    "LONG": "x" * 60_000,
}


def test_the_secret_writer_keeps_every_byte(fake: FakeFly, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.write({"apps": [API]})
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    Fly(str(fake.fly), dry_run=False, cwd=ROOT).set_secrets(API, NASTY)
    assert fake.secrets(API) == NASTY
    for value in NASTY.values():
        if len(value) > 1:
            assert not any(value in arg for argv in fake.argvs() for arg in argv)


def test_a_value_flyctl_cannot_take_whole_is_refused_before_anything_is_written(
    fake: FakeFly, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.write({"apps": [API]})
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    fly = Fly(str(fake.fly), dry_run=False, cwd=ROOT)
    # A space at the start (trimmed from stdin) and a '#' after an even number of quotes once quoted.
    with pytest.raises(ProvisionError, match="SMTP_PASSWORD"):
        fly.set_secrets(API, {"SMTP_HOST": "smtp.example.com", "SMTP_PASSWORD": ' x"#y'})
    with pytest.raises(ProvisionError, match="BIG"):
        fly.set_secrets(API, {"BIG": "x" * 70_000})  # over 64 KiB on one line and on stdin
    assert fake.calls() == []


def test_a_failed_secrets_command_never_quotes_a_value(fake: FakeFly, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.write({"apps": [API]})
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    fly = Fly(str(fake.fly), dry_run=False, cwd=ROOT)
    with pytest.raises(ProvisionError, match="NAME=VALUE pairs") as failed:  # flyctl quotes the line it refused
        fly.act("secrets", "import", "--app", API, "--stage", stdin="no-equals-s3cr3t\n", stdin_names=["X"])
    assert "s3cr3t" not in str(failed.value)


# flyctl's own parser tests (internal/command/secrets/parser_test.go), and the finding.
FLYCTL_PARSER_CASES = [
    ("\n# A comment plus a new line with spaces\n\nFOO=BAR\n# Another comment\nQUX=NAH\n",
     {"FOO": "BAR", "QUX": "NAH"}),
    ("FOO=BAR\r\nQUX=NAH\r\n", {"FOO": "BAR", "QUX": "NAH"}),
    (
        'FOO=BAR\nMULTILINE="""SOMETHING\nANOTHER LINE\n\nENDSHERE"""\nTRAILERENV=what\n'
        'FIN="""Here is the end,\nmy only friend"""\n',
        {
            "FOO": "BAR",
            "MULTILINE": "SOMETHING\nANOTHER LINE\n\nENDSHERE",
            "TRAILERENV": "what",
            "FIN": "Here is the end,\nmy only friend",
        },
    ),
    ("FOO=BAR,BAZ", {"FOO": "BAR,BAZ"}),
    ('FOO="BAR BAZ"', {"FOO": "BAR BAZ"}),
    ("FOO = BAR", {"FOO": "BAR"}),
    ('FOO="BAR BAZ" # comment', {"FOO": "BAR BAZ"}),
    ("FOO='BAR BAZ'\nKEY='value'", {"FOO": "BAR BAZ", "KEY": "value"}),
    ('EMPTY=""""""\nSINGLE="""x"""\nWITHSPACES="""  spaces  """\nNORMAL=regular',
     {"EMPTY": "", "SINGLE": "x", "WITHSPACES": "  spaces  ", "NORMAL": "regular"}),
    ("SMTP_PASSWORD=p#ss", {"SMTP_PASSWORD": "p"}),  # the finding: a password cut at '#'
    ("SMTP_PASSWORD=\"quoted\"", {"SMTP_PASSWORD": "quoted"}),  # and stripped of its quotes
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), FLYCTL_PARSER_CASES)
def test_import_is_parsed_as_flyctl_parses_it(
    text: str, expected: dict[str, str], fake: FakeFly, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_import(text) == expected
    fake.write({"apps": [API]})
    done = fake.call("secrets", "import", "--app", API, "--stage", stdin=text)
    assert done.returncode == 0, done.stderr
    assert fake.secrets(API) == expected


def test_rotating_the_token_ends_with_the_new_token_live(fake: FakeFly, emu: Emulator) -> None:
    provisioned(fake, emu)
    fake.update(token=NEW_TOKEN)
    with running_emulator(token=NEW_TOKEN, apps=[WORKER]) as emu2:
        dry = fake.run(emu2, "--rotate-token", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"$ fly secrets deploy --app {API}  (dry run: not run)" in dry.stdout
        fake.reset_log()

        result = fake.run(emu2, "--rotate-token")
        assert result.returncode == 0, result.stderr
    assert fake.argvs() == [
        *READS[:3],
        ["tokens", "create", "deploy", "--app", WORKER, "--name", f"{API} dispatcher", "--expiry", "8760h", "--json"],
        ["secrets", "import", "--app", API, "--stage"],
        READS[3],
        ["secrets", "deploy", "--app", API],  # the label is unchanged: nothing else would restart the API
    ]  # fmt: skip
    assert fake.live(API)["FLY_API_TOKEN"] == NEW_TOKEN
    assert "fly tokens revoke" in result.stdout  # the old token is revoked by hand, once this is done


def test_a_token_unset_by_hand_is_replaced_and_the_api_restarted(fake: FakeFly, emu: Emulator) -> None:
    provisioned(fake, emu)
    assert fake.call("secrets", "unset", "FLY_API_TOKEN", "--app", API, "--stage").returncode == 0
    fake.update(token=NEW_TOKEN)
    with running_emulator(token=NEW_TOKEN, apps=[WORKER]) as emu2:
        result = fake.run(emu2)
    assert result.returncode == 0, result.stderr
    assert fake.argvs()[-1] == ["secrets", "deploy", "--app", API]
    assert fake.live(API)["FLY_API_TOKEN"] == NEW_TOKEN


def test_secrets_staged_and_never_deployed_are_deployed(fake: FakeFly, emu: Emulator) -> None:
    provisioned(fake, emu)
    assert fake.call("secrets", "set", "--app", API, "--stage", "LOG_LEVEL=debug").returncode == 0
    fake.reset_log()
    result = fake.run(emu, **SMTP)
    assert result.returncode == 0, result.stderr
    assert fake.argvs() == [*READS, ["secrets", "deploy", "--app", API]]
    assert fake.live(API)["LOG_LEVEL"] == "debug"
    # The worker has no machines of its own: `secrets deploy` would fail there, and is never run.
    assert fake.call("secrets", "deploy", "--app", WORKER).returncode == 1


def test_storage_keys_on_one_app_only_stop_with_instructions(fake: FakeFly, emu: Emulator) -> None:
    fake.write({
        "apps": [API, WORKER], "mpg": [cluster()],
        "secrets": {
            API: {"DATABASE_URL": POOLED, "DATABASE_DIRECT_URL": DIRECT, "BUCKET_NAME": "b"},
            WORKER: {"DATABASE_URL": POOLED, "DATABASE_DIRECT_URL": DIRECT},
        },
    })  # fmt: skip
    result = fake.run(emu)
    assert result.returncode == 1
    assert "cannot be read back" in result.stderr
    assert not [a for a in fake.argvs() if a[:2] == ["storage", "create"]]


def test_a_token_the_machines_api_refuses_is_not_stored(fake: FakeFly, emu: Emulator) -> None:
    fake.update(token="FlyV1 fm2_not-accepted")
    result = fake.run(emu)
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    assert "FLY_API_TOKEN" not in fake.secrets(API)


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
