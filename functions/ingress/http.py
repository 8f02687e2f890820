"""Request plumbing: bounded JSON bodies, pydantic validation to problem+json, request ids."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, BeforeValidator, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import (
    BadRequest,
    PayloadTooLarge,
    ProblemError,
    ServiceUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.storable_json import MESSAGES, unstorable_in_json

M = TypeVar("M", bound=BaseModel)

logger = logging.getLogger("functions.ingress")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_INTEGER_TEXT = re.compile(r"-?[0-9]+")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem_response(error: ProblemError, request: Request | None = None) -> Response:
    """Render a ProblemError as application/problem+json."""
    body = orjson.dumps(error.to_problem(instance=request.url.path if request else None))
    return Response(body, status_code=error.status, media_type="application/problem+json", headers=error.headers)


async def problem_asgi_response(error: ProblemError, scope: Scope, send: Send) -> None:
    """Send `error` as problem+json straight from an ASGI middleware (no Request needed)."""
    body = orjson.dumps(error.to_problem(instance=scope.get("path")))
    response = Response(body, status_code=error.status, media_type="application/problem+json", headers=error.headers)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class UnhandledErrorMiddleware:
    """Turn an unexpected exception into a 500 problem+json inside the middleware stack.

    Starlette's own last-resort handler sits outside every user middleware, so its 500 would
    miss the request id, the security headers and the metrics; this one sits inside them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # too late for a clean answer; the server closes the connection
            if isinstance(exc, psycopg.OperationalError | PoolTimeout):
                # The database is restarting or unreachable: a passing condition, not a bug.
                logger.warning("database unavailable", extra={"error": type(exc).__name__})
                error: ProblemError = ServiceUnavailable(
                    "the database is unavailable; retry shortly", headers={"Retry-After": "5"}
                )
            else:
                logger.exception("unhandled error")
                error = ProblemError("an unexpected error occurred")
            await problem_asgi_response(error, scope, send)


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The request body, refusing with 413 as soon as it exceeds `max_bytes` (chunked bodies too)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, *, max_bytes: int) -> bytes:
    """A JSON body's raw bytes after the media type, size and storability checks (415, 413, 400, 422)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
    body = await read_body(request, max_bytes=max_bytes)
    if not body.strip():
        raise BadRequest("request body is empty; send a JSON object")
    refuse_unstorable(body)
    return body


def refuse_unstorable(body: bytes) -> None:
    """422 naming each value of a JSON body that could not be stored (shared.storable_json's rule).

    Checked here, before any model sees the body, so every route holds every field to it and a
    bad value never reaches an insert shared with other requests.
    """
    problems = unstorable_in_json(body)
    if problems:
        raise ValidationFailed(
            "the request body holds values that cannot be stored",
            errors=[{"path": problem.path, "message": problem.message} for problem in problems],
        )


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as [{path, message}] with dotted paths (`operations.resize.width`)."""
    errors = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"])
        errors.append({"path": path, "message": err["msg"]})
    return errors


def _integer_at(document: Any, loc: tuple[int | str, ...]) -> bool:
    """Replace the whole number written as a float at `loc` (an error's path; a union member's
    name may trail it) by its integer; False when nothing there is one."""
    parent: Any = None
    key: int | str | None = None
    node = document
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            parent, key, node = node, part, node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            parent, key, node = node, part, node[part]
        else:
            break
    if parent is None or not (isinstance(node, float) and node.is_integer()):
        return False
    parent[key] = int(node)
    return True


def _validate_json(model: type[M], body: bytes, context: dict[str, Any] | None) -> M:
    # Strict: an integer is a JSON number, not `true` or `"3"`, as the document says. JSON Schema
    # also counts 3.0 as an integer (Python's json writes timedelta seconds that way), which strict
    # mode refuses: those values alone, where the model wants an integer, are read again as
    # integers; every other number (a tenant's own args) stays as written.
    try:
        return model.model_validate_json(body, context=context, strict=True)
    except ValidationError as exc:
        wanted = [
            err["loc"]
            for err in exc.errors()
            if err["type"] == "int_type" and isinstance(err["input"], float) and err["input"].is_integer()
        ]
        if not wanted:
            raise
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise exc from None
        if not any([_integer_at(document, loc) for loc in wanted]):
            raise
        try:
            normalised = orjson.dumps(document)
        except orjson.JSONEncodeError:  # an integer past 64 bits: the first answer stands
            raise exc from None
        return model.model_validate_json(normalised, context=context, strict=True)


def parse_model(model: type[M], body: bytes, *, context: dict[str, Any] | None = None) -> M:
    """Validate JSON `body` as `model`: 400 for malformed JSON, 422 with paths for bad fields."""
    try:
        return _validate_json(model, body, context)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise BadRequest("malformed JSON body") from exc
        if any(err["type"] == "destination_not_allowed" for err in exc.errors()):
            raise DestinationRefused(
                "a URL in the request points where this service may not connect", errors=validation_errors(exc)
            ) from exc
        raise ValidationFailed("the request body is not valid", errors=validation_errors(exc)) from exc


class DestinationRefused(ValidationFailed):
    """A URL names a loopback, private, metadata or otherwise refused destination (security spec)."""

    type_slug, title = "destination-not-allowed", "Destination not allowed"


def parse_query(model: type[M], data: dict[str, Any]) -> M:
    """Validate query parameters as `model` (422 with paths)."""
    bad = [name for name, value in data.items() for text in _texts(value) if "\x00" in text]
    if bad:
        raise ValidationFailed(
            "the query parameters are not valid",
            errors=[{"path": name, "message": MESSAGES["text"]} for name in bad],
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed("the query parameters are not valid", errors=validation_errors(exc)) from exc


def single_params(request: Request, *repeatable: str) -> dict[str, Any]:
    """The query parameters, each given at most once (422 naming any repeated one), except those
    `repeatable`: each of these is a list of every value given, comma-separated ones split.

    A plain dict of the query would keep a repeated key's last value and drop the others unseen:
    `?n=abc&n=0` would pass as 0. Empty values are kept, so `state=` fails validation rather than
    meaning every state.
    """
    params = request.query_params
    repeated = [name for name in params if name not in repeatable and len(params.getlist(name)) > 1]
    if repeated:
        raise ValidationFailed(
            "the query parameters are not valid",
            errors=[{"path": name, "message": "given more than once"} for name in repeated],
        )
    single: dict[str, Any] = dict(params)
    for name in repeatable:
        if name in params:
            single[name] = [part for value in params.getlist(name) for part in value.split(",")]
    return single


def _integer_text(value: object) -> object:
    # pydantic alone reads `0.0`, ` 0`, `0\n`, `0_0` and a no-break space before digits as 0;
    # an integer query parameter of the document is its digits (and a sign), nothing else.
    if isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value):
        raise ValueError("must be an integer written in digits")
    return value


INTEGER_TEXT = BeforeValidator(_integer_text)
"""Metadata of an integer query parameter: `Annotated[int, Field(ge=..., le=...), INTEGER_TEXT]`.

Placed after the bounds, which then stay `minimum`/`maximum` in the document (before them,
pydantic would write them out as `ge`/`le`, which JSON Schema does not know)."""


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def request_id_of(scope: Scope) -> str:
    """The request's id: a sane X-Request-ID it sent, or a new one (echoed and logged by the edge)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    return uuid.uuid4().hex


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or uuid.uuid4().hex)
