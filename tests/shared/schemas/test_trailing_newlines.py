"""A value ending in a newline is not a value without one: Python's `$` matches before a final
"\n", so every anchored pattern is applied with `fullmatch`. One case per validator that had it."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from shared.errors import PermanentJobError
from shared.keys import check_tenant_key
from shared.schemas.documents import DocumentsRequest
from shared.schemas.emails import EmailRequest
from shared.schemas.images import ImagesRequest
from shared.schemas.webhooks import WebhookRequest

CONTEXT = {"tenant_id": "t1"}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (WebhookRequest, {"url": "https://example.com/x", "event": "e", "headers": {"X-A": "v\n"}}),
        (WebhookRequest, {"url": "https://example.com/x", "event": "e", "headers": {"X-A\n": "v"}}),
        (
            EmailRequest,
            {
                "to": "a@example.com",
                "subject": "hi",
                "text": "x",
                "attachments": [{"filename": "a.pdf", "key": "tenants/t1/uploads/a.pdf\n"}],
            },
        ),
        (ImagesRequest, {"imageId": "i", "sourceKey": "tenants/t1/uploads/a.jpg\n"}),
        (DocumentsRequest, {"template": "letter", "filename": "a.pdf\n", "data": {}}),
    ],
)
def test_a_trailing_newline_is_refused(model: type[pydantic.BaseModel], body: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        model.model_validate(body, context=CONTEXT)


def test_a_storage_key_with_a_trailing_newline_is_outside_every_prefix() -> None:
    with pytest.raises(PermanentJobError):
        check_tenant_key("t1", "tenants/t1/uploads/a.jpg\n")
