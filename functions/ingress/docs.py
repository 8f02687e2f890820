"""GET /documentation (Swagger UI) and /documentation/json (the OpenAPI document).

Swagger UI's files come from the swagger_ui_bundle package and are served by this app, so the
page works without any external network access. Its start-up code is a file too, not an
inline script, so the Content-Security-Policy can forbid inline scripts.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from .openapi import build_document

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
            Route("/documentation/swagger-init.js", self.init_script, methods=["GET"]),
            Mount("/documentation/static", app=StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui"),
        ]


def document_dict() -> dict[str, Any]:
    """The document as a dict (tests, `python -m functions.ingress.docs > openapi.json`)."""
    return build_document()


if __name__ == "__main__":
    import sys

    sys.stdout.write(orjson.dumps(build_document(), option=orjson.OPT_INDENT_2).decode() + "\n")
