"""Pillow work for the images function: sniff, open safely, decode once, render every output.

Blocking and CPU-bound; the handler runs `render` in a thread (Pillow releases the GIL while it
decodes, resamples and encodes).

Safety, in order: the format is sniffed from the first bytes and only JPEG, PNG, WebP, GIF and
AVIF go on (EPS, PSD, SVG, TIFF... never reach a Pillow plugin, so Ghostscript is never run);
`Image.open` is limited to the sniffed format; the declared size is checked against
`MAX_PIXELS` before any pixel is decoded; only the first frame is decoded, so frame counts cost
nothing. Outputs are built from pixels only: no EXIF, GPS, XMP, ICC or comments unless asked.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

from PIL import (
    AvifImagePlugin,
    GifImagePlugin,
    Image,
    ImageCms,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from functions.handlers.lib import image_resize
from functions.handlers.lib.image_geometry import Fit, Plan, decode_hint, plan
from shared.errors import PermanentJobError

OutputFormat = Literal["webp", "jpeg", "png", "avif", "gif"]

# Our own limit, below Pillow's (89 MP warning, 179 MP error): about 200 MB decoded as RGBA.
MAX_PIXELS: Final = 50_000_000
# The most bytes of a JPEG handed to libjpeg per decoder call (a phone photo is 2-12 MB).
_JPEG_READ_BLOCK: Final = 16 * 1024 * 1024

# Pillow's format name for each output format, and what the output is called.
_PIL_FORMAT: Final[dict[OutputFormat, str]] = {
    "webp": "WEBP",
    "jpeg": "JPEG",
    "png": "PNG",
    "avif": "AVIF",
    "gif": "GIF",
}
CONTENT_TYPES: Final[dict[OutputFormat, str]] = {
    "webp": "image/webp",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "avif": "image/avif",
    "gif": "image/gif",
}
EXTENSIONS: Final[dict[OutputFormat, str]] = {
    "webp": "webp",
    "jpeg": "jpg",
    "png": "png",
    "avif": "avif",
    "gif": "gif",
}
# Quality when none is asked for (the same defaults as sharp's).
_DEFAULT_QUALITY: Final[dict[OutputFormat, int]] = {"jpeg": 80, "webp": 80, "avif": 50}

# Importing the plugins registers exactly these five decoders; Image.open(formats=[...]) then
# never needs Image.init(), which would import every other plugin.
_PLUGINS: Final = (JpegImagePlugin, PngImagePlugin, GifImagePlugin, WebPImagePlugin, AvifImagePlugin)

_ORIENTATION_TAG: Final = 0x0112
_TRANSPOSE_FOR_ORIENTATION: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# `rotate` is clockwise; Pillow's ROTATE_* constants turn counter-clockwise.
_TRANSPOSE_FOR_ROTATE: Final = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}
_XMP_ORIENTATION: Final = re.compile(rb'tiff:Orientation="[0-9]"|<tiff:Orientation>[0-9]</tiff:Orientation>')
_SRGB: Final = ImageCms.createProfile("sRGB")
# The ICC colour space each pixel mode needs; a profile of another space is never attached.
_COLOUR_SPACE: Final = {
    "RGB": b"RGB ",
    "RGBA": b"RGB ",
    "P": b"RGB ",
    "PA": b"RGB ",
    "L": b"GRAY",
    "LA": b"GRAY",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    """One output: what to make of the source image, every option resolved."""

    name: str
    width: int | None = None
    height: int | None = None
    fit: Fit = "inside"
    format: OutputFormat | None = None  # None keeps the input's format
    quality: int | None = None
    optimize: bool = False
    strip_metadata: bool = True
    rotate: int = 0  # clockwise quarter turns: 0, 90, 180 or 270
    grayscale: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendered:
    """One encoded output."""

    name: str
    data: bytes
    format: OutputFormat
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def filename(self) -> str:
        return f"{self.name}.{EXTENSIONS[self.format]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Source:
    """The decoded first frame with the facts every output needs."""

    image: Image.Image
    format: OutputFormat
    orientation: int
    icc_profile: bytes | None
    exif: Image.Exif
    xmp: bytes | None


def sniff_format(head: bytes) -> OutputFormat | None:
    """The allowed format the first bytes announce, or None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"mif1", b"msf1") and AvifImagePlugin.SUPPORTED:
        return "avif"  # mif1/msf1 may also be HEIF: the AVIF decoder refuses those when opening
    return None


def render(data: bytes, recipes: Sequence[Recipe], *, max_pixels: int = MAX_PIXELS) -> list[Rendered]:
    """Decode `data` once and encode one output per recipe.

    Raises PermanentJobError with kind "unsupported-format" (not one of the five formats),
    "image-too-large" (input or requested output above `max_pixels`, found before decoding) or
    "invalid-image" (the file is damaged or truncated).
    """
    image, input_format = _open(data, max_pixels=max_pixels)
    with image:
        orientation = _orientation(image)
        plans = [_plan_for(image.size, recipe, orientation, max_pixels=max_pixels) for recipe in recipes]
        source, plans = _decode(image, input_format, orientation, plans)
    return [_render_one(source, recipe, p) for recipe, p in zip(recipes, plans, strict=True)]


def _open(data: bytes, *, max_pixels: int) -> tuple[ImageFile.ImageFile, OutputFormat]:
    input_format = sniff_format(data[:32])
    if input_format is None:
        raise PermanentJobError("only JPEG, PNG, WebP, GIF and AVIF images are accepted", kind="unsupported-format")
    try:
        image = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[input_format]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check fired (when warnings are errors, its warning arrives as an exception).
        raise PermanentJobError(f"image declares too many pixels: {exc}", kind="image-too-large") from exc
    except UnidentifiedImageError as exc:
        raise PermanentJobError(f"not a readable {input_format.upper()} image", kind="unsupported-format") from exc
    except Exception as exc:
        raise PermanentJobError(f"damaged {input_format.upper()} header: {exc}", kind="invalid-image") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PermanentJobError(
            f"image is {width}x{height} ({width * height} pixels); the limit is {max_pixels}",
            kind="image-too-large",
        )
    if input_format == "jpeg":
        # Hand libjpeg a whole photo in one decoder call. Pillow feeds it MAXBLOCK (64 KB) at a
        # time otherwise: ~70 calls for a 12 MP photo, each joining and slicing the leftover bytes
        # in Python, with libjpeg suspending at every chunk's end. The pixels are the same (tested);
        # on the bench photo a render takes 3-5 ms less CPU (of ~105). The block is capped so that
        # the copy Pillow reads it into stays small next to the decoded pixels.
        image.decodermaxblock = max(image.decodermaxblock, min(len(data), _JPEG_READ_BLOCK))
    return image, input_format


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return 1  # unreadable EXIF is ignored, as a browser would
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _plan_for(stored: tuple[int, int], recipe: Recipe, orientation: int, *, max_pixels: int) -> Plan:
    p = plan(
        stored,
        width=recipe.width,
        height=recipe.height,
        fit=recipe.fit,
        orientation=orientation,
        rotate=recipe.rotate,
    )
    for size in (p.resized, p.output):
        if size[0] * size[1] > max_pixels:
            raise PermanentJobError(
                f"output {recipe.name!r} would be {size[0]}x{size[1]}; the limit is {max_pixels} pixels",
                kind="image-too-large",
            )
    return p


_STRICT_LOCK = threading.Lock()


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Decode with Pillow's truncation check on, whatever the process-wide flag says.

    WeasyPrint sets ImageFile.LOAD_TRUNCATED_IMAGES = True when imported; an images machine never
    imports it, but any process holding both (tests, a combined worker) would otherwise turn a
    truncated upload into a half-grey image instead of an `invalid-image` error.
    """
    with _STRICT_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _decode(
    image: ImageFile.ImageFile, input_format: OutputFormat, orientation: int, plans: list[Plan]
) -> tuple[_Source, list[Plan]]:
    """Decode the first frame, at a reduced scale when every plan allows it; plans follow the scale."""
    stored = image.size
    hint = decode_hint(stored, plans)
    if hint is not None and input_format == "jpeg":
        # libjpeg scales by 1/2, 1/4 or 1/8 while decoding: far less work than decoding in full.
        image.draft(None, hint)
    try:
        with _strict_decoding():
            image.load()
    except Exception as exc:
        raise PermanentJobError(f"damaged {input_format.upper()} image: {exc}", kind="invalid-image") from exc
    if image.size != stored:
        # Draft mode changed the size: the crop boxes were computed on the declared one.
        plans = [_rescale(p, stored, image.size) for p in plans]
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    icc_profile = image.info.get("icc_profile") or None
    if icc_profile is not None and _icc_colour_space(icc_profile) != _COLOUR_SPACE.get(image.mode):
        icc_profile = None  # a CMYK (or mismatched) profile cannot describe the RGB pixels we make
    source = _Source(
        image=_normalized(image),
        format=input_format,
        orientation=orientation,
        icc_profile=icc_profile,
        exif=image.getexif(),
        xmp=xmp.encode() if isinstance(xmp, str) else xmp,
    )
    return source, plans


def _rescale(p: Plan, declared: tuple[int, int], decoded: tuple[int, int]) -> Plan:
    if p.crop is None:
        return p
    sx, sy = decoded[0] / declared[0], decoded[1] / declared[1]
    left, top, right, bottom = p.crop
    return Plan(
        crop=(left * sx, top * sy, right * sx, bottom * sy), resized=p.resized, canvas=p.canvas, output=p.output
    )


def _normalized(image: Image.Image) -> Image.Image:
    """The pixels in a mode every step handles: L, LA, RGB or RGBA."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode == "PA":
        return image.convert("RGBA")
    if mode.startswith("I") or mode == "F":
        # 16-bit (or float) grey: keep the high byte rather than clipping everything above 255.
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return image.convert("RGB")  # 1, CMYK, YCbCr, LAB, ...


def _render_one(source: _Source, recipe: Recipe, p: Plan) -> Rendered:
    image = source.image
    if p.crop is not None or p.resized != image.size:
        image = image_resize.resize(image, p.resized, box=p.crop)
    for method in (_TRANSPOSE_FOR_ORIENTATION.get(source.orientation), _TRANSPOSE_FOR_ROTATE.get(recipe.rotate)):
        if method is not None:
            image = image.transpose(method)
    output_format: OutputFormat = recipe.format or source.format
    if recipe.strip_metadata and source.icc_profile and image.mode in ("RGB", "RGBA"):
        # The profile is dropped with the rest of the metadata; convert to sRGB first so colours
        # from wide-gamut cameras (Display P3, Adobe RGB) do not come out washed out.
        image = _to_srgb(image, source.icc_profile)
    if recipe.grayscale:
        image = image.convert("LA" if "A" in image.mode else "L")
    if p.canvas is not None:
        image = _centred_on_canvas(image, p.canvas, opaque=output_format == "jpeg")
    image = _encodable(image, output_format)
    data = _encode(image, output_format, recipe, source)
    return Rendered(name=recipe.name, data=data, format=output_format, width=image.width, height=image.height)


def _centred_on_canvas(image: Image.Image, canvas: tuple[int, int], *, opaque: bool) -> Image.Image:
    # Transparent padding where the output can hold it, white where it cannot (JPEG).
    mode = image.mode if "A" in image.mode or opaque else f"{image.mode}A"
    background = Image.new(mode, canvas, "white" if opaque else 0)
    offset = ((canvas[0] - image.width) // 2, (canvas[1] - image.height) // 2)
    background.paste(image.convert(mode), offset)
    return background


def _encodable(image: Image.Image, output_format: OutputFormat) -> Image.Image:
    """The image in a mode `output_format` can store, transparency flattened onto white for JPEG."""
    if output_format == "jpeg" and "A" in image.mode:
        flat = Image.new(image.mode[:-1], image.size, "white")
        flat.paste(image, mask=image.getchannel("A"))
        return flat
    if output_format in ("webp", "avif") and image.mode in ("L", "LA"):
        return image.convert("RGBA" if image.mode == "LA" else "RGB")
    if output_format == "gif" and image.mode == "LA":
        return image.convert("RGBA")
    return image


def _encode(image: Image.Image, output_format: OutputFormat, recipe: Recipe, source: _Source) -> bytes:
    # A fresh `info`: Pillow's encoders read comments, EXIF, XMP and ICC from it as well as from
    # the save arguments, so everything not passed explicitly below is left out.
    image.info = {}
    params: dict[str, Any] = {}
    quality = recipe.quality or _DEFAULT_QUALITY.get(output_format)
    if quality is not None and output_format in _DEFAULT_QUALITY:
        params["quality"] = quality
    if output_format == "jpeg":
        params.update(optimize=recipe.optimize, progressive=recipe.optimize)
    elif output_format == "webp":
        params["method"] = 6 if recipe.optimize else 4
    elif output_format == "avif":
        params["speed"] = 4 if recipe.optimize else 6  # libavif: 6 is Pillow's default, 4 much slower
    elif recipe.optimize:
        params["optimize"] = True
    if not recipe.strip_metadata:
        params.update(_kept_metadata(source, output_format, image.mode))
    buffer = io.BytesIO()
    image.save(buffer, format=_PIL_FORMAT[output_format], **params)
    return buffer.getvalue()


def _kept_metadata(source: _Source, output_format: OutputFormat, mode: str) -> dict[str, Any]:
    if output_format == "gif":
        return {}  # GIF has no place for EXIF or ICC
    kept: dict[str, Any] = {}
    exif = Image.Exif()
    exif.load(source.exif.tobytes())
    exif.pop(_ORIENTATION_TAG, None)  # already applied to the pixels
    if len(exif):
        kept["exif"] = exif.tobytes()
    if source.icc_profile and _icc_colour_space(source.icc_profile) == _COLOUR_SPACE.get(mode):
        kept["icc_profile"] = source.icc_profile
    if source.xmp:
        kept["xmp"] = _XMP_ORIENTATION.sub(b"", source.xmp)
    return kept


def _icc_colour_space(icc_profile: bytes) -> bytes:
    return icc_profile[16:20]  # the header's data colour space signature


def _to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image:
    transform = _srgb_transform(icc_profile, image.mode)
    if transform is None:
        return image
    return ImageCms.applyTransform(image, transform) or image


@lru_cache(maxsize=16)
def _srgb_transform(icc_profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    # Building a transform parses both profiles; the same camera profile recurs across jobs.
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if "srgb" in (ImageCms.getProfileDescription(source) or "").lower():
            return None  # already sRGB: nothing to convert
        return ImageCms.buildTransform(source, _SRGB, mode, mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None  # an unreadable profile is dropped like any other metadata
