"""The OpenAPI 3.1 document covers every route and error, and Swagger UI renders it offline."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route

from functions.ingress.app import routes
from functions.ingress.openapi import build_document
from functions.registry import load_registry
from tests.support.live import LiveApp

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts"
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def _document(app: LiveApp) -> dict:
    with httpx.Client(base_url=app.url, trust_env=False) as client:
        response = client.get("/documentation/json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict = response.json()
    return document


def _documented_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, with path templates as the document names them."""
    served = set()
    for route in routes():
        if isinstance(route, Mount):
            continue  # Swagger UI's static files
        assert isinstance(route, Route)
        if not route.include_in_schema:
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path).replace("{job_id}", "{id}")
        for method in route.methods or ():
            if method == "HEAD":
                continue
            if path == "/jobs/{queue}":
                served |= {(method.lower(), f"/jobs/{queue}") for queue in load_registry()}
            else:
                served.add((method.lower(), path))
    return served


def test_the_document_is_openapi_3_1_and_lists_every_route(app: LiveApp):
    document = _document(app)
    assert document["openapi"] == "3.1.0"
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops if m in HTTP_METHODS}
    assert documented == _documented_routes()


def test_every_operation_documents_its_answers_and_errors(app: LiveApp):
    document = _document(app)
    schemas = document["components"]["schemas"]
    assert {"Problem", "Job", "QueueStatus", "ImagesRequest", "BulkEmailRequest"} <= set(schemas)
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            answers = op["responses"]
            assert any(code.startswith("2") for code in answers), where
            secured = op.get("security", document["security"]) not in ([], [{}])
            if secured and op["operationId"] != "metrics":
                assert {"401", "403", "429"} <= set(answers), where
                assert "Retry-After" in answers["429"]["headers"], where
            if "requestBody" in op:
                assert {"400", "413", "415", "422"} <= set(answers), where
            if path.startswith("/jobs/") and method == "post" and "{id}" not in path:
                assert "409" in answers, where  # Idempotency-Key in flight
                assert any(p["name"] == "Idempotency-Key" for p in op["parameters"]), where
            for code, answer in answers.items():
                if int(code) >= 400:
                    assert answer["content"]["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"
                    }, (where, code)
    assert "404" in document["paths"]["/jobs/{id}"]["get"]["responses"]
    assert "409" in document["paths"]["/jobs/{id}/retry"]["post"]["responses"]
    assert document["paths"]["/health"]["get"]["security"] == []
    body = document["paths"]["/jobs/images"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ImagesRequest"}


def _pydantic_only_keywords(node: object, where: str = "") -> list[str]:
    """Where a schema holds pydantic's `ge`/`le`/`gt`/`lt`, which JSON Schema does not know."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("ge", "le", "gt", "lt"):
                found.append(f"{where}/{key}")
            if key == "properties" and isinstance(value, dict):
                for name, schema in value.items():  # a property may be named anything
                    found += _pydantic_only_keywords(schema, f"{where}/properties/{name}")
            else:
                found += _pydantic_only_keywords(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _pydantic_only_keywords(item, f"{where}/{i}")
    return found


def test_bounds_are_written_as_json_schema_keywords():
    document = build_document()

    assert _pydantic_only_keywords(document) == []
    [ids] = [p for p in document["paths"]["/jobs"]["delete"]["parameters"] if p["name"] == "ids"]
    assert ids["schema"]["items"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}


def test_the_swagger_ui_page_uses_only_its_own_files(app: LiveApp):
    with httpx.Client(base_url=app.url, trust_env=False) as client:
        page = client.get("/documentation")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets and all(not re.match(r"^[a-z]+:|^//", asset) for asset in assets), assets
        assert "<script>" not in page.text  # no inline script: the CSP forbids it
        for asset in assets:
            response = client.get(f"/{asset}")
            assert response.status_code == 200, asset
        bundle = client.get("/documentation/static/swagger-ui-bundle.js")
        assert bundle.headers["content-type"].startswith("text/javascript")


def _chromium(*args: str, profile: Path) -> str:
    """Run headless Chromium on loopback only; kill its whole process group whatever happens."""
    command = [
        shutil.which("chromium") or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        *args,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        out, _ = process.communicate(timeout=120)
        return out
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (make system-deps adds it)")
def test_swagger_ui_renders_every_endpoint_in_headless_chromium(app: LiveApp, tmp_path: Path):
    dom = _chromium("--dump-dom", f"{app.url}/documentation", profile=tmp_path / "profile")
    assert "Unable to render" not in dom
    paths_shown = set(re.findall(r'data-path="([^"]+)"', dom))
    assert paths_shown == set(_document(app)["paths"]), paths_shown
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "swagger-ui.png"
    screenshot.unlink(missing_ok=True)
    _chromium(
        f"--screenshot={screenshot}", "--window-size=1280,4000", f"{app.url}/documentation", profile=tmp_path / "p2"
    )
    assert screenshot.stat().st_size > 50_000  # a rendered page, not a blank one
