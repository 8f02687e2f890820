"""GET /documentation (Swagger UI) and /documentation/json (the OpenAPI document).

Swagger UI's files come from the swagger_ui_bundle package and are served by this app, so the
page works without any external network access. Its start-up code is a file too, not an
inline script, so the Content-Security-Policy can forbid inline scripts.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson
import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .openapi import build_document

# Swagger UI renders OpenAPI 3.1 from version 5 on; 4.x shows "Unable to render this definition".
MIN_SWAGGER_UI: Final = (5, 0, 0)
logger = logging.getLogger("functions.ingress.docs")
_VERSION_DIR = re.compile(r"^swagger-ui-(\d+)\.(\d+)\.(\d+)$")

PAGE: Final = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Content Processor API</title>
  <link rel="stylesheet" href="documentation/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="documentation/static/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="documentation/static/swagger-ui-bundle.js"></script>
  <script src="documentation/swagger-init.js"></script>
</body>
</html>
"""

MISSING_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Content Processor API</title></head>
<body><p>Swagger UI 5 is not installed (swagger-ui-bundle-v2). The OpenAPI document is at
<a href="documentation/json">documentation/json</a>.</p></body></html>
"""

# Relative URLs resolve against the page (/documentation), so a path prefix added by a proxy
# keeps working. validatorUrl null: the default validator badge would call an external service.
INIT_SCRIPT: Final = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "documentation/json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""


@cache
def swagger_ui_dir() -> Path | None:
    """The newest Swagger UI the `swagger_ui_bundle` package holds; None when it is older than 5.

    Looked up by version rather than through `swagger_ui_bundle.swagger_ui_path`: both
    swagger-ui-bundle (4.x) and swagger-ui-bundle-v2 (5.x) install that module, and whichever
    was installed last owns its `__init__.py`, while both keep their own vendor folder.
    """
    vendor = Path(swagger_ui_bundle.__file__).parent / "vendor"
    found: list[tuple[tuple[int, ...], Path]] = []
    for path in vendor.iterdir():
        match = _VERSION_DIR.match(path.name)
        if match and (path / "swagger-ui-bundle.js").is_file():
            found.append((tuple(int(part) for part in match.groups()), path))
    if not found or max(found)[0] < MIN_SWAGGER_UI:
        logger.error("Swagger UI 5 or later is needed for OpenAPI 3.1: install swagger-ui-bundle-v2==5.31.0")
        return None
    return max(found)[1]


class Documentation:
    """The document is built once, on first request, and kept."""

    def __init__(self) -> None:
        self._document: bytes | None = None

    def document(self) -> bytes:
        if self._document is None:
            self._document = orjson.dumps(build_document())
        return self._document

    async def json(self, request: Request) -> Response:
        return Response(self.document(), media_type="application/json")

    async def page(self, request: Request) -> Response:
        if swagger_ui_dir() is None:
            return HTMLResponse(MISSING_PAGE, status_code=503)
        return HTMLResponse(PAGE)

    async def init_script(self, request: Request) -> Response:
        return Response(INIT_SCRIPT, media_type="text/javascript")

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/documentation", self.page, methods=["GET"]),
            Route("/documentation/json", self.json, methods=["GET"]),
            # An asset of the page, like the static files: not part of the API document.
            Route("/documentation/swagger-init.js", self.init_script, methods=["GET"], include_in_schema=False),
        ]
        static = swagger_ui_dir()
        if static is not None:
            routes.append(Mount("/documentation/static", app=StaticFiles(directory=str(static)), name="swagger-ui"))
        return routes


def document_dict() -> dict[str, Any]:
    """The document as a dict (tests, `python -m functions.ingress.docs > openapi.json`)."""
    return build_document()


if __name__ == "__main__":
    import sys

    sys.stdout.write(orjson.dumps(build_document(), option=orjson.OPT_INDENT_2).decode() + "\n")
