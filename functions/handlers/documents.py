"""The `documents` function: render one PDF from a built-in template or tenant HTML, store it.

Rendering runs in its own thread under a deadline of 75% of WORKER_DOCUMENTS_TIMEOUT, leaving
the rest for the upload; past it the thread is interrupted (render_thread.py) and the job is
discarded with kind "render-timeout", since the same input would time out again. The machine's
per-function timeout stays the hard stop for anything the interrupt cannot reach.

Result: `{"outputs": [{"name", "key", "contentType": "application/pdf", "size"}], "pages": n}`
(the outputs recorded by the machine),
plus `skippedResources` (`[{"url", "reason"}]`) when some images, stylesheets or fonts were
refused or failed and the document was rendered without them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Final

from functions.handlers.base import HandlerContext, HandlerResult, parse_args
from functions.handlers.lib.render_thread import RenderTimedOut, run_with_deadline
from shared.db.models import Job
from shared.errors import PermanentJobError
from shared.functions import FunctionSpec, Guest
from shared.schemas.documents import DocumentsRequest
from shared.settings import Settings

if TYPE_CHECKING:
    from functions.handlers.lib.document_render import RenderedDocument

logger = logging.getLogger(__name__)

PDF: Final = "application/pdf"
RENDER_SHARE_OF_TIMEOUT: Final = 0.75

FUNCTION: Final = FunctionSpec(
    queue="documents",
    worker="RenderDocument",
    summary="Render a PDF from a built-in template or sandboxed HTML",
    request=DocumentsRequest,
    limit=5,
    timeout_seconds=120,
    max_attempts=3,
    guest=Guest(cpu_kind="shared", cpus=2, memory_mb=2048),  # WeasyPrint: layout and fonts
)

# Rendered once at machine boot so fonts, Pango and WeasyPrint's own stylesheets are loaded
# before the first real job (drain mode pays this once, not per job).
_WARM_UP_REQUEST: Final = {
    "template": "invoice",
    "data": {
        "number": "WARM-UP",
        "date": "2025-01-01",
        "seller": {"name": "Seller", "address": ["1 Street"]},
        "customer": {"name": "Customer", "email": "customer@example.com"},
        "items": [{"description": "Item", "quantity": 1, "unitPrice": 1}],
        "taxRate": 10,
        "notes": "Warm-up",
    },
}


def render_timeout_seconds(settings: Settings) -> float:
    """How long one document may take to render on this machine."""
    return FUNCTION.timeout_for(settings) * RENDER_SHARE_OF_TIMEOUT


def parse_request(args: dict[str, object]) -> DocumentsRequest:
    """The job's arguments as a request. Raises PermanentJobError (kind "invalid-args") if they do not validate."""
    return parse_args(DocumentsRequest, dict(args))


async def render(request: DocumentsRequest, settings: Settings, *, name: str) -> RenderedDocument:
    """Render `request` in a thread under the render deadline.

    Raises PermanentJobError: "render-timeout" past the deadline, "template-error",
    "document-too-large" or "render-error" for input that cannot render.
    """
    from functions.handlers.lib.document_render import render_document  # WeasyPrint: documents machines only

    seconds = render_timeout_seconds(settings)
    deadline = time.monotonic() + seconds
    try:
        return await run_with_deadline(
            partial(render_document, request, settings=settings, deadline=deadline), seconds=seconds, name=name
        )
    except RenderTimedOut as exc:
        if not exc.stopped:
            # Stuck in one long C call: the machine's own timeout and exit are what end it now.
            logger.warning("document:render-thread-still-running", extra={"renderThread": name})
        raise PermanentJobError(str(exc), kind="render-timeout") from None


async def run(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Render the job's document and store it as the output `filename` of this attempt."""
    request = parse_request(job.args)
    rendered = await render(request, ctx.settings, name=f"document-{job.id}")
    await asyncio.to_thread(ctx.outputs.put_bytes, request.filename, rendered.pdf, PDF)
    result: HandlerResult = {"pages": rendered.pages}
    if rendered.skipped:
        result["skippedResources"] = rendered.skipped
    return result


async def warm(ctx: HandlerContext) -> None:
    """Render a small invoice once (nothing stored) so the first job does not pay for loading fonts."""
    await render(DocumentsRequest.model_validate(_WARM_UP_REQUEST), ctx.settings, name="document-warm-up")
