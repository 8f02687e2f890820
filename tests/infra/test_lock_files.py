"""requirements.lock (everything, for `make install`) and requirements.runtime.lock (the image) pin
every package with its sha256 hashes, agree with each other, and are installed with hashes checked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FULL = ROOT / "requirements.lock"
RUNTIME = ROOT / "requirements.runtime.lock"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
    assert match, spec
    return normalise(match.group(0))


def parse_lock(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, sha256 hashes), from a `uv pip compile --generate-hashes` file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)\s*", line)
        assert match, f"{path.name}: not a pinned requirement with sha256 hashes: {line!r}"
        name = normalise(match.group(1))
        assert name not in pins, f"{path.name}: {name} twice"
        pins[name] = (match.group(2), frozenset(re.findall(r"sha256:([0-9a-f]{64})", match.group(3))))
    return pins


def pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_every_locked_package_is_pinned_with_hashes() -> None:
    assert len(parse_lock(FULL)) > 50
    assert len(parse_lock(RUNTIME)) > 20


def test_the_runtime_lock_is_the_full_lock_restricted_to_runtime_dependencies() -> None:
    full, runtime = parse_lock(FULL), parse_lock(RUNTIME)
    for name, (version, hashes) in runtime.items():
        assert name in full, name
        assert full[name][0] == version, (name, version, full[name][0])
        assert hashes == full[name][1], name
    project = pyproject()["project"]
    assert {requirement_name(spec) for spec in project["dependencies"]} <= set(runtime)
    dev_only = {requirement_name(spec) for extra in project["optional-dependencies"].values() for spec in extra}
    dev_only -= {requirement_name(spec) for spec in project["dependencies"]}
    assert not dev_only & set(runtime), dev_only & set(runtime)


def test_the_unofficial_swagger_ui_fork_is_gone() -> None:
    project = pyproject()["project"]
    everything = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    assert not [spec for spec in everything if "swagger" in spec]
    assert not [name for name in (*parse_lock(FULL), *parse_lock(RUNTIME)) if "swagger" in name]


def test_make_installs_with_hashes_and_locks_with_hashes() -> None:
    makefile = re.sub(r"\\\n", " ", (ROOT / "Makefile").read_text())
    installs = [line for line in makefile.splitlines() if "uv pip install" in line and "-r requirements.lock" in line]
    assert installs and all("--require-hashes" in line for line in installs)
    compiles = [line for line in makefile.splitlines() if "uv pip compile" in line]
    assert sorted(re.findall(r" -o (\S+)", " ".join(compiles))) == sorted([FULL.name, RUNTIME.name])
    assert all("--generate-hashes" in line for line in compiles)
    assert re.search(r"^UV_VERSION := \d+\.\d+\.\d+$", makefile, re.M)  # uv itself stays pinned
