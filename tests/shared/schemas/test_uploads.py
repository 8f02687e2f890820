"""shared/schemas/uploads.py: what `POST /uploads` accepts and where uploads go."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.keys import check_tenant_key
from shared.schemas.uploads import MAX_UPLOAD_BYTES, UploadRequest, UploadResponse, upload_key


def test_a_plain_request_is_accepted_and_the_type_lower_cased() -> None:
    request = UploadRequest.model_validate_json(b'{"filename": "IMG_0001.jpg", "contentType": "Image/JPEG", "size": 1}')

    assert (request.filename, request.content_type, request.size) == ("IMG_0001.jpg", "image/jpeg", 1)


@pytest.mark.parametrize(
    "body",
    [
        {"filename": "../etc/passwd", "contentType": "image/jpeg", "size": 10},
        {"filename": "a/b.jpg", "contentType": "image/jpeg", "size": 10},
        {"filename": "..", "contentType": "image/jpeg", "size": 10},
        {"filename": ".hidden", "contentType": "image/jpeg", "size": 10},
        {"filename": "x" * 201, "contentType": "image/jpeg", "size": 10},
        {"filename": "", "contentType": "image/jpeg", "size": 10},
        {"filename": "photo jpg", "contentType": "image/jpeg", "size": 10},
        {"filename": "photo.jpg", "contentType": "image/jpeg\r\nX-Evil: 1", "size": 10},
        {"filename": "photo.jpg", "contentType": "image/jpeg; charset=x", "size": 10},
        {"filename": "photo.jpg", "contentType": "jpeg", "size": 10},
        {"filename": "page.html", "contentType": "text/html", "size": 10},
        {"filename": "logo.svg", "contentType": "image/svg+xml", "size": 10},
        {"filename": "photo.jpg", "contentType": "image/jpeg", "size": 0},
        {"filename": "photo.jpg", "contentType": "image/jpeg", "size": MAX_UPLOAD_BYTES + 1},
        {"filename": "photo.jpg", "contentType": "image/jpeg", "size": 10, "extra": True},
    ],
)
def test_unsafe_requests_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        UploadRequest.model_validate(body)


def test_upload_keys_are_fresh_and_inside_the_tenant_prefix() -> None:
    first, second = upload_key("acme", "photo.jpg"), upload_key("acme", "photo.jpg")

    assert first != second
    for key in (first, second):
        assert key.startswith("tenants/acme/uploads/") and key.endswith("/photo.jpg")
        assert check_tenant_key("acme", key) == key


def test_response_is_camel_case() -> None:
    from datetime import UTC, datetime

    response = UploadResponse(
        key="k", url="https://u", headers={"Content-Type": "image/png"}, expires_at=datetime(2030, 1, 1, tzinfo=UTC)
    )

    assert response.model_dump(mode="json", by_alias=True) == {
        "key": "k",
        "url": "https://u",
        "method": "PUT",
        "headers": {"Content-Type": "image/png"},
        "expiresAt": "2030-01-01T00:00:00Z",
    }
