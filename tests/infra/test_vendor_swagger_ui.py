"""Swagger UI is vendored from the official swagger-ui-dist package: the committed files match their
manifest, and the script that updates them refuses anything the npm registry did not publish."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import re
import shutil
import tarfile
import tomllib
from pathlib import Path

import pytest

from functions.ingress import docs
from infra import vendor_swagger_ui as vendor

REGISTRY = "https://registry.example"
ROOT = Path(__file__).resolve().parents[2]


# --- the committed files ----------------------------------------------------------------------


def test_the_vendored_files_match_their_manifest() -> None:
    assert vendor.verify_vendored(vendor.DEST) == []


def test_the_manifest_names_the_official_package_and_its_published_integrity() -> None:
    manifest = vendor.read_manifest(vendor.DEST)
    assert manifest["package"] == "swagger-ui-dist"
    version = manifest["version"]
    assert re.fullmatch(r"5\.\d+\.\d+", version)  # 5 and later render OpenAPI 3.1
    assert manifest["tarball"] == f"https://registry.npmjs.org/swagger-ui-dist/-/swagger-ui-dist-{version}.tgz"
    assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", manifest["integrity"])
    assert set(manifest["files"]) == set(vendor.FILES)


def test_the_app_serves_the_vendored_directory_and_the_page_uses_only_its_files() -> None:
    assert docs.SWAGGER_UI_DIR == vendor.DEST
    assets = re.findall(r'(?:src|href)="documentation/static/([^"]+)"', docs.PAGE)
    assert assets and set(assets) <= set(vendor.read_manifest(vendor.DEST)["files"])


def test_the_files_ship_with_the_package() -> None:
    """pyproject's package-data puts every vendored file into the wheel (infra/Dockerfile copies
    functions/ whole)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    patterns = package_data["functions.ingress"]  # the "*" patterns reach no subdirectory
    package = ROOT / "functions" / "ingress"
    for path in vendor.DEST.iterdir():
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns), relative


def test_a_changed_missing_or_extra_file_is_reported(tmp_path: Path) -> None:
    copy = tmp_path / "swagger-ui"
    shutil.copytree(vendor.DEST, copy)
    assert vendor.verify_vendored(copy) == []
    with (copy / "swagger-ui.css").open("a") as f:
        f.write("body{}")
    (copy / "NOTICE").unlink()
    (copy / "extra.js").write_text("alert(1)")
    problems = vendor.verify_vendored(copy)
    assert any("swagger-ui.css" in p and "sha256" in p for p in problems), problems
    assert any("NOTICE" in p and "missing" in p for p in problems), problems
    assert any("extra.js" in p for p in problems), problems


# --- the update script, against a fake registry (no network) ----------------------------------


def tarball(version: str = "5.99.0", *, name: str = "swagger-ui-dist", symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:

        def add(path: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("package.json", json.dumps({"name": name, "version": version, "license": "Apache-2.0"}).encode())
        for file in vendor.FILES:
            if file == symlink:
                info = tarfile.TarInfo(f"package/{file}")
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                add(file, f"contents of {file} {version}".encode())
        add("swagger-ui.js", b"not wanted")
    return buffer.getvalue()


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


class FakeRegistry:
    def __init__(self, data: bytes, *, version: str = "5.99.0", integrity: str | None = None, **overrides: object):
        tgz = f"{REGISTRY}/swagger-ui-dist/-/swagger-ui-dist-{version}.tgz"
        self.metadata: dict[str, object] = {
            "name": "swagger-ui-dist",
            "version": version,
            "dist": {"tarball": tgz, "integrity": integrity or sri(data), "shasum": "ignored"},
        }
        self.metadata.update(overrides)
        self.files = {tgz: data}
        self.asked: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.asked.append(url)
        if url in (f"{REGISTRY}/swagger-ui-dist/latest", f"{REGISTRY}/swagger-ui-dist/5.99.0"):
            return json.dumps(self.metadata).encode()
        return self.files[url]


def test_the_script_writes_the_files_and_a_manifest_that_verifies(tmp_path: Path) -> None:
    data = tarball()
    registry = FakeRegistry(data)
    dest = tmp_path / "swagger-ui"
    manifest = vendor.vendor(None, dest=dest, registry=REGISTRY, fetch=registry)
    assert registry.asked[0] == f"{REGISTRY}/swagger-ui-dist/latest"
    assert sorted(p.name for p in dest.iterdir()) == sorted([*vendor.FILES, vendor.MANIFEST])
    assert (dest / "swagger-ui-bundle.js").read_bytes() == b"contents of swagger-ui-bundle.js 5.99.0"
    assert manifest["version"] == "5.99.0" and manifest["integrity"] == sri(data)
    assert manifest["license"] == "Apache-2.0"
    assert vendor.read_manifest(dest) == manifest
    assert vendor.verify_vendored(dest) == []


def test_a_named_version_is_asked_for_by_that_version(tmp_path: Path) -> None:
    registry = FakeRegistry(tarball())
    vendor.vendor("5.99.0", dest=tmp_path / "ui", registry=REGISTRY, fetch=registry)
    assert registry.asked[0] == f"{REGISTRY}/swagger-ui-dist/5.99.0"


def existing(tmp_path: Path) -> Path:
    dest = tmp_path / "swagger-ui"
    dest.mkdir()
    (dest / "swagger-ui-bundle.js").write_text("the old one")
    return dest


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        # The bytes served are not the ones whose hash the registry published.
        (FakeRegistry(tarball(), integrity=sri(b"something else")), "integrity"),
        # Only a sha1 shasum or another algorithm: not strong enough to accept.
        (FakeRegistry(tarball(), integrity="sha1-" + base64.b64encode(b"x" * 20).decode()), "sha512"),
        # The registry answered for another package, or another version than asked.
        (FakeRegistry(tarball(), name="swagger-ui-bundle-v2"), "swagger-ui-bundle-v2"),
        (FakeRegistry(tarball(), version="5.98.0"), "5.98.0"),
        # A tarball somewhere else than the package's own place in the registry.
        (
            FakeRegistry(
                tarball(),
                dist={"tarball": "https://evil.example/swagger-ui-dist-5.99.0.tgz", "integrity": sri(tarball())},
            ),
            "evil.example",
        ),
        # Integrity right, but the package inside says it is something else.
        (FakeRegistry(tarball(name="swagger-ui-bundle-v2")), "package.json"),
        # A wanted file that is a link, not a regular file.
        (FakeRegistry(tarball(symlink="swagger-ui.css")), "swagger-ui.css"),
    ],
)
def test_the_script_refuses_and_leaves_the_vendored_files_alone(
    tmp_path: Path, registry: FakeRegistry, message: str
) -> None:
    dest = existing(tmp_path)
    with pytest.raises(vendor.VendorError, match=re.escape(message)):
        vendor.vendor("5.99.0", dest=dest, registry=REGISTRY, fetch=registry)
    assert [p.name for p in dest.iterdir()] == ["swagger-ui-bundle.js"]
    assert (dest / "swagger-ui-bundle.js").read_text() == "the old one"
    assert not list(tmp_path.glob("*.new")) and not list(tmp_path.glob("*.old"))


def test_check_mode_exits_non_zero_on_a_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "swagger-ui"
    shutil.copytree(vendor.DEST, copy)
    assert vendor.main(["--check", "--dest", str(copy)]) == 0
    (copy / "favicon-32x32.png").write_bytes(b"")
    assert vendor.main(["--check", "--dest", str(copy)]) == 1
    assert "favicon-32x32.png" in capsys.readouterr().err
