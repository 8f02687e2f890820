"""The images function: fetch one image, render each requested output, store them.

Args are an `ImagesRequest` (shared/schemas/images.py). The source comes from `sourceUrl`
through the shared outbound client or from `sourceKey` in the tenant's storage, both capped at
`MAX_SOURCE_BYTES` (decoded bytes for a compressed answer; a bigger source fails with kind
`source-too-large`); the Pillow work (functions/handlers/lib/image_ops.py) runs in a thread so
heartbeats keep flowing. Result: `{"outputs": [{name, key, contentType, size, width, height,
format}], "imageId"}`, outputs recorded through `ctx.outputs` (under the claim's prefix) as
`{name}.{ext}`, in the order of the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from functions.handlers.base import HandlerContext, HandlerResult, parse_args
from shared.db.models import Job
from shared.errors import PermanentJobError, RetryableJobError
from shared.functions import FunctionSpec, Guest
from shared.outbound import ResponseTooLarge, shared_client
from shared.schemas.images import ImageOperations, ImagesRequest

if TYPE_CHECKING:
    from functions.handlers.lib import image_ops

MAX_SOURCE_BYTES: Final = 50 * 1024 * 1024

FUNCTION: Final = FunctionSpec(
    queue="images",
    worker="ProcessImage",
    summary="Resize and convert one image into one or more outputs",
    request=ImagesRequest,
    limit=5,
    timeout_seconds=60,
    max_attempts=5,
    guest=Guest(cpu_kind="shared", cpus=2, memory_mb=2048),  # Pillow: CPU and decoded pixels
)
SOURCE_TIMEOUT_SECONDS: Final = 30.0
_ACCEPT: Final = "image/avif,image/webp,image/png,image/jpeg,image/gif;q=0.9,*/*;q=0.1"
# Answers worth another attempt later; any other non-2xx will not change by retrying.
_RETRYABLE_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})


async def run(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Process the image. Raises PermanentJobError for sources or inputs that can never work."""
    request = _parse(job.args)
    data = await fetch_source(request, ctx=ctx, max_bytes=MAX_SOURCE_BYTES)
    recipes = [recipe(name, operations) for name, operations in request.outputs()]
    from functions.handlers.lib import image_ops  # Pillow: only on the machines that run images

    rendered = await asyncio.to_thread(image_ops.render, data, recipes)
    stored = await asyncio.gather(
        *(asyncio.to_thread(ctx.outputs.store_bytes, item.filename, item.data, item.content_type) for item in rendered)
    )
    for item, (key, size) in zip(rendered, stored, strict=True):  # recorded in the request's order
        ctx.outputs.record(
            name=item.name,
            key=key,
            content_type=item.content_type,
            size=size,
            width=item.width,
            height=item.height,
            format=item.format,
        )
    return {"imageId": request.image_id}


async def warm(ctx: HandlerContext) -> None:
    """Load Pillow and build the storage client before the first job (at boot, in a thread)."""

    def load() -> None:
        from functions.handlers.lib import image_ops  # noqa: F401  (Pillow and its plugins)

        ctx.bucket  # noqa: B018  (the boto3 client, built on first use)

    await asyncio.to_thread(load)


def recipe(name: str, operations: ImageOperations) -> image_ops.Recipe:
    """The fully resolved recipe of one output (defaults filled in)."""
    from functions.handlers.lib import image_ops

    resize = operations.resize
    return image_ops.Recipe(
        name=name,
        width=resize.width if resize else None,
        height=resize.height if resize else None,
        fit=resize.fit if resize else "inside",
        format=operations.format,
        quality=operations.quality,
        optimize=bool(operations.optimize),
        strip_metadata=operations.strip_metadata is not False,
        rotate=operations.rotate or 0,
        grayscale=bool(operations.grayscale),
    )


async def fetch_source(request: ImagesRequest, *, ctx: HandlerContext, max_bytes: int) -> bytes:
    """The source image's bytes, never more than `max_bytes` (after any content decoding).

    Raises PermanentJobError: "forbidden-key" (a key outside the tenant's prefix), "object-not-found",
    "source-too-large" (from either source), "destination-not-allowed", "unsupported-content-encoding",
    "source-unavailable" (a final HTTP error); RetryableJobError for passing HTTP or network failures.
    """
    if request.source_key is not None:
        # ctx.storage is the job tenant's: a key of another tenant is "forbidden-key".
        try:
            return await asyncio.to_thread(ctx.storage.get_bytes, request.source_key, max_bytes=max_bytes)
        except PermanentJobError as exc:
            if exc.kind == "too-large":
                raise _too_large(max_bytes) from exc
            raise
    if request.source_url is None:  # the schema guarantees one source; kept for type narrowing
        raise PermanentJobError("no source given", kind="invalid-args")
    try:
        response = await shared_client(ctx.resources, ctx.settings).request(
            "GET",
            request.source_url,
            headers={"Accept": _ACCEPT},
            timeout_seconds=SOURCE_TIMEOUT_SECONDS,
            max_bytes=max_bytes,
        )
    except ResponseTooLarge as exc:  # a compressed body counts what it decodes to
        raise _too_large(max_bytes) from exc
    if 200 <= response.status_code < 300:
        return response.content
    message = f"source answered HTTP {response.status_code}"
    if response.status_code in _RETRYABLE_STATUSES:
        raise RetryableJobError(message, kind="source-unavailable", retry_after_seconds=_retry_after(response.headers))
    raise PermanentJobError(message, kind="source-unavailable")


def _too_large(max_bytes: int) -> PermanentJobError:
    return PermanentJobError(f"source image is larger than {max_bytes} bytes", kind="source-too-large")


def _parse(args: dict[str, Any]) -> ImagesRequest:
    return parse_args(ImagesRequest, args)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after", "")
    return float(value) if value.isdigit() else None
