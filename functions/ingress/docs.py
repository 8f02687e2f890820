"""GET /documentation (Swagger UI) and /documentation/json (the OpenAPI document).

Swagger UI's files are vendored in static/swagger-ui/ from the official npm package
swagger-ui-dist (manifest.json there names the version, the registry's integrity hash and each
file's sha256; `python -m infra.vendor_swagger_ui` updates them) and are served by this app, so
the page works without any external network access. Its start-up code is a file too, not an
inline script, so the Content-Security-Policy can forbid inline scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .openapi import build_document

# Shipped inside the package (pyproject package-data), so it is there wherever the code is.
SWAGGER_UI_DIR: Final = Path(__file__).resolve().parent / "static" / "swagger-ui"

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
        return HTMLResponse(PAGE)

    async def init_script(self, request: Request) -> Response:
        return Response(INIT_SCRIPT, media_type="text/javascript")

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/documentation", self.page, methods=["GET"]),
            Route("/documentation/json", self.json, methods=["GET"]),
            # An asset of the page, like the static files: not part of the API document.
            Route("/documentation/swagger-init.js", self.init_script, methods=["GET"], include_in_schema=False),
            # check_dir: a build that lost the files fails at start-up, not on the first page view.
            Mount("/documentation/static", StaticFiles(directory=SWAGGER_UI_DIR, check_dir=True), name="swagger-ui"),
        ]


def document_dict() -> dict[str, Any]:
    """The document as a dict (tests, `python -m functions.ingress.docs > openapi.json`)."""
    return build_document()


if __name__ == "__main__":
    import sys

    sys.stdout.write(orjson.dumps(build_document(), option=orjson.OPT_INDENT_2).decode() + "\n")
