"""`python -m infra.vendor_swagger_ui [--version X]`: vendor Swagger UI from the official npm package.

GET /documentation serves Swagger UI from functions/ingress/static/swagger-ui/, files copied out of
`swagger-ui-dist`, the package the swagger-api project publishes to npm. This script updates them:

1. asks the npm registry for the version's metadata (default: the `latest` dist-tag) and checks it
   is swagger-ui-dist at the version asked for;
2. downloads the tarball from the package's own place in the registry and checks it against the
   sha512 `dist.integrity` the registry published, before opening it;
3. copies the few files the page needs, plus the licences, and writes manifest.json: version,
   tarball URL, integrity, and the sha256 of every file copied.

`--check` verifies the vendored files against manifest.json without the network (the test suite
does the same); it exits 1 and lists every difference.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import io
import json
import shutil
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx

ROOT: Final = Path(__file__).resolve().parents[1]
DEST: Final = ROOT / "functions" / "ingress" / "static" / "swagger-ui"
REGISTRY: Final = "https://registry.npmjs.org"
PACKAGE: Final = "swagger-ui-dist"
MANIFEST: Final = "manifest.json"
# What the page (functions/ingress/docs.py) loads, and the licences that must travel with it:
# swagger-ui-bundle.js.LICENSE.txt lists the third-party code bundled into the script.
FILES: Final = (
    "swagger-ui-bundle.js",
    "swagger-ui-bundle.js.LICENSE.txt",
    "swagger-ui.css",
    "favicon-32x32.png",
    "LICENSE",
    "NOTICE",
)
# The tarball is about 4 MB; anything far larger is not the package we expect.
MAX_DOWNLOAD: Final = 64 * 1024 * 1024

Fetch = Callable[[str], bytes]


class VendorError(Exception):
    """The registry's answer or the tarball is not what we accept; nothing was written."""


def http_fetch(url: str) -> bytes:
    with httpx.Client(timeout=60.0, follow_redirects=False) as client, client.stream("GET", url) as response:
        response.raise_for_status()
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_DOWNLOAD:
                raise VendorError(f"{url}: more than {MAX_DOWNLOAD} bytes")
        return bytes(body)


def sha512_digests(integrity: str) -> list[bytes]:
    """The sha512 digests of a Subresource Integrity string (`sha512-<base64>`, space-separated).

    Only sha512 counts: npm's legacy `shasum` is sha1, too weak to trust a download on."""
    digests = []
    for token in integrity.split():
        algorithm, _, value = token.partition("-")
        if algorithm != "sha512":
            continue
        try:
            digest = base64.b64decode(value.split("?")[0], validate=True)
        except binascii.Error as exc:
            raise VendorError(f"unreadable integrity {token!r}") from exc
        if len(digest) == hashlib.sha512().digest_size:
            digests.append(digest)
    if not digests:
        raise VendorError(f"the registry published no sha512 integrity, only {integrity!r}")
    return digests


def check_integrity(data: bytes, integrity: str) -> None:
    actual = hashlib.sha512(data).digest()
    if not any(hmac.compare_digest(actual, expected) for expected in sha512_digests(integrity)):
        got = "sha512-" + base64.b64encode(actual).decode()
        raise VendorError(f"tarball integrity mismatch: the registry published {integrity}, the download is {got}")


def metadata(version: str | None, *, registry: str, fetch: Fetch) -> dict[str, Any]:
    """The registry's document for one version; checked to be the package and version asked for."""
    wanted = version or "latest"
    try:
        doc = json.loads(fetch(f"{registry}/{PACKAGE}/{wanted}"))
    except ValueError as exc:
        raise VendorError(f"the registry's answer for {PACKAGE}@{wanted} is not JSON") from exc
    if not isinstance(doc, dict) or doc.get("name") != PACKAGE:
        raise VendorError(f"asked for {PACKAGE}, the registry answered for {doc.get('name')!r}")
    if version is not None and doc.get("version") != version:
        raise VendorError(f"asked for {PACKAGE}@{version}, the registry answered with {doc.get('version')!r}")
    dist = doc.get("dist")
    if not isinstance(dist, dict) or not isinstance(dist.get("integrity"), str):
        raise VendorError(f"{PACKAGE}@{doc.get('version')}: no dist.integrity in the registry's answer")
    return doc


def unpack(data: bytes, version: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """FILES and package.json out of an npm tarball (everything under `package/`).

    Members are read, never extracted, so no name or link in the archive can write elsewhere."""
    wanted = {f"package/{name}": name for name in (*FILES, "package.json")}
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = wanted.get(member.name)
            if name is None:
                continue
            if name in found:
                raise VendorError(f"{member.name} appears twice in the tarball")
            reader = tar.extractfile(member) if member.isreg() else None
            if reader is None:
                raise VendorError(f"{member.name} in the tarball is not a regular file")
            found[name] = reader.read()
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise VendorError(f"the tarball lacks {', '.join(missing)}")
    package = json.loads(found.pop("package.json"))
    if package.get("name") != PACKAGE or package.get("version") != version:
        raise VendorError(f"package.json in the tarball names {package.get('name')}@{package.get('version')}")
    return found, package


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vendor(
    version: str | None, *, dest: Path = DEST, registry: str = REGISTRY, fetch: Fetch = http_fetch
) -> dict[str, Any]:
    """Replace the files in `dest` with those of the verified tarball; returns the new manifest."""
    doc = metadata(version, registry=registry, fetch=fetch)
    resolved = str(doc["version"])
    tarball = str(doc["dist"]["tarball"])
    expected = f"{registry}/{PACKAGE}/-/{PACKAGE}-{resolved}.tgz"
    if tarball != expected:
        raise VendorError(f"the tarball is at {tarball}, not at {expected}")
    integrity = str(doc["dist"]["integrity"])
    data = fetch(tarball)
    check_integrity(data, integrity)  # before tarfile reads a byte of it
    files, package = unpack(data, resolved)
    manifest = {
        "generated_by": "python -m infra.vendor_swagger_ui",
        "package": PACKAGE,
        "version": resolved,
        "license": package.get("license"),
        "tarball": tarball,
        "integrity": integrity,
        "files": {name: sha256(files[name]) for name in FILES},
    }
    # Written beside `dest` and swapped in, so a failure half-way leaves the old files whole.
    new, old = dest.with_name(dest.name + ".new"), dest.with_name(dest.name + ".old")
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    new.mkdir(parents=True)
    for name, content in files.items():
        (new / name).write_bytes(content)
    (new / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return manifest


def read_manifest(dest: Path = DEST) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((dest / MANIFEST).read_text())
    return manifest


def verify_vendored(dest: Path = DEST) -> list[str]:
    """Every difference between `dest` and its manifest (changed, missing or unlisted files)."""
    try:
        listed: dict[str, str] = read_manifest(dest)["files"]
    except (OSError, ValueError, KeyError) as exc:
        return [f"{dest / MANIFEST}: unreadable ({exc})"]
    problems = []
    for name, digest in sorted(listed.items()):
        path = dest / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256(path.read_bytes()) != digest:
            problems.append(f"{name}: sha256 {sha256(path.read_bytes())}, manifest says {digest}")
    for path in sorted(dest.iterdir()):
        if path.name not in listed and path.name != MANIFEST:
            problems.append(f"{path.name}: not in the manifest")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.vendor_swagger_ui", description=__doc__.splitlines()[0])
    parser.add_argument("--version", help=f"{PACKAGE} version (default: the registry's latest)")
    parser.add_argument("--check", action="store_true", help="verify the vendored files offline; change nothing")
    parser.add_argument("--dest", type=Path, default=DEST, help=argparse.SUPPRESS)
    parser.add_argument("--registry", default=REGISTRY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        problems = verify_vendored(args.dest)
        for problem in problems:
            print(f"{args.dest}: {problem}", file=sys.stderr)
        return 1 if problems else 0
    try:
        manifest = vendor(args.version, dest=args.dest, registry=args.registry.rstrip("/"))
    except (VendorError, httpx.HTTPError) as exc:
        print(f"vendor_swagger_ui: {exc}", file=sys.stderr)
        return 1
    print(f"{PACKAGE} {manifest['version']}: tarball matches {manifest['integrity']}")
    print(f"wrote {', '.join(FILES)} and {MANIFEST} to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
