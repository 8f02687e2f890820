"""`POST /jobs/batch`: jobs of any queues posted together, tracked as one batch."""

from __future__ import annotations

from typing import Any, Final

from pydantic import Field

from shared.outbound_policy import CallbackUrl

from .common import CamelModel, TenantId

MAX_BATCH_JOBS: Final = 1000


class BatchRequest(CamelModel):
    """Jobs posted together: each item is `{"queue": <function queue>, ...that function's body}`."""

    tenant_id: TenantId | None = None
    jobs: list[dict[str, Any]] = Field(
        ...,
        min_length=1,
        max_length=MAX_BATCH_JOBS,
        description='each `{"queue": "emails", ...}` with the body `POST /jobs/{queue}` takes (no `tenantId`, '
        "no `options.unique`)",
    )
    callback_url: CallbackUrl | None = Field(
        None, description="https URL notified once (signed webhook `batch.finished`) when every job is final"
    )
