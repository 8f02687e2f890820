"""`POST /jobs/images`: resize, convert and clean one image into one or more outputs.

Every operation field is optional and "not given" is `None`, so `function_args()` (which drops
`None`) stores only what the client asked for. That keeps the one merge rule true after the
handler re-validates `job.args`: a variant's fields override `operations`, which override the
defaults documented on each field.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from shared.keys import is_safe_key, tenant_prefix
from shared.outbound_policy import OutboundUrl
from shared.schemas.common import CamelModel, JobRequest

MAX_VARIANTS: Final = 10
DEFAULT_OUTPUT_NAME: Final = "image"

ImageFormat = Literal["webp", "jpeg", "png", "avif", "gif"]
Fit = Literal["inside", "cover", "contain", "fill"]
Dimension = Annotated[int, Field(ge=1, le=10_000)]
ImageId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
# Output names become file names in keys: no leading dot, so never `.`, `..` or hidden.
OutputName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")]

_KEY_SHAPE: Final = re.compile(r"^tenants/[A-Za-z0-9._-]+/.+$")


def _key_shape(value: str) -> str:
    # The tenant is not known here (it comes from the token); the handler checks the prefix.
    if not _KEY_SHAPE.fullmatch(value) or not is_safe_key(value):
        raise ValueError("must be a storage key of the form tenants/{tenant}/... without '.', '..' or '//'")
    return value


SourceKey = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_key_shape)]


class Resize(CamelModel):
    """Target box; at least one side."""

    width: Dimension | None = None
    height: Dimension | None = None
    fit: Fit = Field(
        "inside",
        description="inside: within the box, aspect kept; cover: fill the box, overflow cropped evenly; "
        "contain: within the box, padded to it; fill: stretched to it",
    )

    @model_validator(mode="after")
    def _one_side_at_least(self) -> Resize:
        if self.width is None and self.height is None:
            raise ValueError("give width, height or both")
        return self


class ImageOperations(CamelModel):
    """What to do to the image. Sizes refer to the upright image (EXIF orientation and rotate applied)."""

    resize: Resize | None = Field(None, description="default: keep the size")
    format: ImageFormat | None = Field(None, description="default: the input's format")
    quality: int | None = Field(None, ge=1, le=100, description="JPEG, WebP and AVIF; default 80 (AVIF 50)")
    optimize: bool | None = Field(None, description="smaller files for more CPU; default false")
    strip_metadata: bool | None = Field(None, description="drop EXIF, GPS, XMP and ICC; default true")
    rotate: Literal[0, 90, 180, 270] | None = Field(None, description="clockwise degrees; default 0")
    grayscale: bool | None = Field(None, description="default false")

    def over(self, base: ImageOperations) -> ImageOperations:
        """These operations with every field not given here taken from `base`."""
        given = {name: value for name in ImageOperations.model_fields if (value := getattr(self, name)) is not None}
        return ImageOperations.model_validate({**base.model_dump(exclude_none=True), **given})


class ImageVariant(ImageOperations):
    """One named output; fields not given come from the request's `operations`."""

    name: OutputName


class ImagesRequest(JobRequest):
    """Process one image (from a URL or an upload) into one output, or one output per variant."""

    image_id: ImageId
    source_url: OutboundUrl | None = None
    source_key: SourceKey | None = Field(None, description="an upload (or output) key of the tenant")
    operations: ImageOperations = Field(default_factory=lambda: ImageOperations())
    variants: list[ImageVariant] = Field(default_factory=list, max_length=MAX_VARIANTS)

    @field_validator("source_key")
    @classmethod
    def _inside_known_tenant(cls, value: str | None, info: ValidationInfo) -> str | None:
        # When the tenant is already known (in the body, or passed by the ingress as context),
        # another tenant's key is refused at submit time; the handler checks again regardless.
        tenant = info.data.get("tenant_id") or (info.context or {}).get("tenant_id")
        if value is not None and isinstance(tenant, str) and not value.startswith(tenant_prefix(tenant)):
            raise ValueError(f"must be a key of this tenant ({tenant_prefix(tenant)}...)")
        return value

    @field_validator("variants")
    @classmethod
    def _unique_names(cls, variants: list[ImageVariant]) -> list[ImageVariant]:
        names = [variant.name for variant in variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return variants

    @model_validator(mode="after")
    def _one_source(self) -> ImagesRequest:
        if (self.source_url is None) == (self.source_key is None):
            raise ValueError("give exactly one of sourceUrl or sourceKey")
        return self

    def outputs(self) -> list[tuple[str, ImageOperations]]:
        """Each output's name and its operations with `operations` filled in under each variant."""
        if not self.variants:
            return [(DEFAULT_OUTPUT_NAME, self.operations)]
        return [(variant.name, variant.over(self.operations)) for variant in self.variants]
