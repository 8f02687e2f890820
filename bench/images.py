"""Metric 6, images: a 12 MP JPEG -> 800x600 WebP.

Ours: the images handler's code path for `{"operations": {"resize": {"width": 800, "height": 600},
"format": "webp"}}`: the request validated as the handler does, its recipes built with
`functions.handlers.images.recipe`, and `image_ops.render` (sniff, guarded open, draft decode,
resize, encode at the default quality 80). Fetching the source and storing the output are left
out on both sides.

Reference: pyvips `Image.thumbnail_buffer(data, 800, height=600)` + `webpsave_buffer(Q=80)`.

Both run in this process on the same bytes, interleaved, after one untimed call each; the source
is a phone-like 4000x3000 JPEG (quality 90, gradients, grain and lines) made here.
"""

from __future__ import annotations

import io
import time
from functools import cache

from .harness import BenchConfig, BenchEnv, Row, Spread, verdict

NAME = "images"
TARGET = 0.8  # raised (performance.md, "Raised targets"); was 1.1
REQUEST = {
    "imageId": "bench-photo",
    "sourceKey": "tenants/bench-tenant/uploads/photo.jpg",
    "operations": {"resize": {"width": 800, "height": 600}, "format": "webp"},
}


@cache
def photo_12mp() -> bytes:
    from PIL import Image, ImageDraw

    size = (4000, 3000)
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = Image.effect_noise(size, 48)
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    for i in range(0, 4000, 50):
        draw.line([(i, 0), (4000 - i, 3000)], fill=(i % 255, 255 - i % 255, 128), width=3)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def ours(data: bytes) -> tuple[float, tuple[int, int]]:
    from functions.handlers import images
    from functions.handlers.lib import image_ops
    from shared.schemas.images import ImagesRequest

    started = time.perf_counter()
    request = ImagesRequest.model_validate(REQUEST)
    recipes = [images.recipe(name, operations) for name, operations in request.outputs()]
    [rendered] = image_ops.render(data, recipes)
    elapsed = time.perf_counter() - started
    if rendered.format != "webp":
        raise RuntimeError(f"rendered {rendered.format}")
    return elapsed, (rendered.width, rendered.height)


def reference(data: bytes) -> tuple[float, tuple[int, int]]:
    import pyvips

    started = time.perf_counter()
    image = pyvips.Image.thumbnail_buffer(data, 800, height=600)
    image.webpsave_buffer(Q=80)
    elapsed = time.perf_counter() - started
    return elapsed, (image.width, image.height)


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    data = photo_12mp()
    repeats = max(cfg.runs, cfg.n(7, 1))
    ours(data)
    reference(data)
    ours_ms: list[float] = []
    ref_ms: list[float] = []
    ratios: list[float] = []
    size = ref_size = (0, 0)
    for _ in range(repeats):
        r, ref_size = reference(data)
        o, size = ours(data)
        ours_ms.append(o * 1000)
        ref_ms.append(r * 1000)
        ratios.append(o / r)
    ratio = Spread.of(ratios)
    return [
        Row(
            "images: 12 MP JPEG -> 800x600 WebP",
            Spread.of(ours_ms).fmt(" ms", 0),
            Spread.of(ref_ms).fmt(" ms", 0) + " (pyvips thumbnail_buffer + webpsave)",
            ratio.fmt("x", 2),
            f"≤ {TARGET}",
            verdict(ratio.median <= TARGET and size == ref_size),
            f"{len(data) / 1e6:.1f} MB source, {repeats} interleaved runs after one untimed each; outputs "
            f"{size[0]}x{size[1]} (ours) and {ref_size[0]}x{ref_size[1]} (pyvips); fetch and upload excluded",
        )
    ]
