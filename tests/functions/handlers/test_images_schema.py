"""shared/schemas/images.py: what `POST /jobs/images` accepts, and how variants inherit."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.schemas.images import ImagesRequest
from tests.conftest import make_settings

SOURCE = {"sourceUrl": "https://images.example.com/cat.jpg"}


def _errors(body: dict[str, Any], **context: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        ImagesRequest.model_validate(body, context=context or None)
    return [dict(error) for error in caught.value.errors()]


def test_minimal_request_stores_only_what_was_given() -> None:
    request = ImagesRequest.model_validate_json(b'{"imageId": "cat-1", "sourceKey": "tenants/t1/uploads/a/cat.jpg"}')

    assert request.function_args() == {
        "imageId": "cat-1",
        "sourceKey": "tenants/t1/uploads/a/cat.jpg",
        "operations": {},
        "variants": [],
    }
    assert [name for name, _ in request.outputs()] == ["image"]


def test_full_request_round_trips_through_job_args() -> None:
    body = {
        "tenantId": "t1",
        "imageId": "cat.v2_final",
        **SOURCE,
        "operations": {
            "resize": {"width": 800, "height": 600, "fit": "cover"},
            "format": "webp",
            "quality": 70,
            "optimize": True,
            "stripMetadata": False,
            "rotate": 90,
            "grayscale": True,
        },
        "variants": [{"name": "thumb", "resize": {"width": 100}}, {"name": "big", "format": "avif"}],
        "options": {"priority": 3},
    }

    args = ImagesRequest.model_validate(body).function_args()
    again = ImagesRequest.model_validate(args)

    assert "tenantId" not in args and "options" not in args
    assert again.function_args() == args
    assert args["variants"][0] == {"name": "thumb", "resize": {"width": 100, "fit": "inside"}}


def test_variants_take_what_they_do_not_say_from_operations() -> None:
    request = ImagesRequest.model_validate(
        {
            "imageId": "x",
            **SOURCE,
            "operations": {"format": "webp", "quality": 60, "resize": {"width": 1000}},
            "variants": [{"name": "thumb", "resize": {"height": 100}, "quality": 90}, {"name": "same"}],
        }
    )

    (thumb_name, thumb), (same_name, same) = ImagesRequest.model_validate(request.function_args()).outputs()

    assert (thumb_name, same_name) == ("thumb", "same")
    assert (thumb.format, thumb.quality, thumb.resize and thumb.resize.height, thumb.resize and thumb.resize.width) == (
        "webp",
        90,
        100,
        None,
    )
    assert (same.format, same.quality, same.resize and same.resize.width) == ("webp", 60, 1000)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"imageId": "x"}, ()),
        ({"imageId": "x", **SOURCE, "sourceKey": "tenants/t1/uploads/a.jpg"}, ()),
        ({"imageId": "", **SOURCE}, ("imageId",)),
        ({"imageId": "x" * 129, **SOURCE}, ("imageId",)),
        ({"imageId": "a/b", **SOURCE}, ("imageId",)),
        ({"imageId": "x", "sourceUrl": "ftp://example.com/a.jpg"}, ("sourceUrl",)),
        ({"imageId": "x", "sourceUrl": "file:///etc/passwd"}, ("sourceUrl",)),
        ({"imageId": "x", "sourceUrl": "data:image/png;base64,AAAA"}, ("sourceUrl",)),
        ({"imageId": "x", "sourceKey": "uploads/a.jpg"}, ("sourceKey",)),
        ({"imageId": "x", "sourceKey": "tenants/t1/../t2/a.jpg"}, ("sourceKey",)),
        ({"imageId": "x", "sourceKey": "tenants/t1//a.jpg"}, ("sourceKey",)),
        ({"imageId": "x", "sourceKey": "tenants/t1/"}, ("sourceKey",)),
        ({"imageId": "x", **SOURCE, "operations": {"resize": {}}}, ("operations", "resize")),
        ({"imageId": "x", **SOURCE, "operations": {"resize": {"fit": "cover"}}}, ("operations", "resize")),
        ({"imageId": "x", **SOURCE, "operations": {"resize": {"width": 0}}}, ("operations", "resize", "width")),
        ({"imageId": "x", **SOURCE, "operations": {"resize": {"height": 10001}}}, ("operations", "resize", "height")),
        (
            {"imageId": "x", **SOURCE, "operations": {"resize": {"width": 9, "fit": "crop"}}},
            ("operations", "resize", "fit"),
        ),
        ({"imageId": "x", **SOURCE, "operations": {"format": "bmp"}}, ("operations", "format")),
        ({"imageId": "x", **SOURCE, "operations": {"quality": 0}}, ("operations", "quality")),
        ({"imageId": "x", **SOURCE, "operations": {"quality": 101}}, ("operations", "quality")),
        ({"imageId": "x", **SOURCE, "operations": {"rotate": 45}}, ("operations", "rotate")),
        ({"imageId": "x", **SOURCE, "operations": {"sharpen": True}}, ("operations", "sharpen")),
        ({"imageId": "x", **SOURCE, "variants": [{"name": f"v{i}"} for i in range(11)]}, ("variants",)),
        ({"imageId": "x", **SOURCE, "variants": [{"name": "a"}, {"name": "a"}]}, ("variants",)),
        ({"imageId": "x", **SOURCE, "variants": [{"name": "../a"}]}, ("variants", 0, "name")),
        ({"imageId": "x", **SOURCE, "variants": [{"name": ".hidden"}]}, ("variants", 0, "name")),
        ({"imageId": "x", **SOURCE, "variants": [{}]}, ("variants", 0, "name")),
    ],
)
def test_invalid_requests_point_at_the_field(body: dict[str, Any], path: tuple[Any, ...]) -> None:
    errors = _errors(body)

    assert any(tuple(error["loc"])[: len(path)] == path for error in errors), errors


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/cat.jpg",
        "http://2130706433/cat.jpg",
        "http://[::1]/cat.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/",
        "http://localhost/cat.jpg",
        "https://user@images.example.com/cat.jpg",
        "https://images.example.com:8443/cat.jpg",
    ],
)
def test_urls_the_outbound_rules_refuse_are_a_validation_error_when_settings_are_known(url: str) -> None:
    settings = make_settings("postgresql://unused.invalid/none")
    body = {"imageId": "x", "sourceUrl": url}

    errors = _errors(body, settings=settings)

    assert [(error["type"], tuple(error["loc"])) for error in errors] == [("destination_not_allowed", ("sourceUrl",))]
    assert ImagesRequest.model_validate(body).source_url == url, "without settings only the shape is checked"


def test_a_public_url_passes_the_outbound_rules() -> None:
    settings = make_settings("postgresql://unused.invalid/none")

    request = ImagesRequest.model_validate({"imageId": "x", **SOURCE}, context={"settings": settings})

    assert request.source_url == SOURCE["sourceUrl"]


def test_another_tenants_key_is_refused_once_the_tenant_is_known() -> None:
    body = {"imageId": "x", "sourceKey": "tenants/t2/uploads/a/cat.jpg"}

    in_body = _errors({**body, "tenantId": "t1"})
    in_context = _errors(body, tenant_id="t1")

    assert [tuple(e["loc"]) for e in in_body] == [tuple(e["loc"]) for e in in_context] == [("sourceKey",)]
    assert ImagesRequest.model_validate({**body, "tenantId": "t2"}).source_key == body["sourceKey"]
