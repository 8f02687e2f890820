"""Image resizing spread over the machine's cores.

Pillow resamples on one thread but releases the GIL while it does. Each band of output rows is
resized on the pool from the source rows under its filter: those rows resampled horizontally,
then vertically, each pass a Pillow call along one axis whose `box` maps the band onto its exact
source rows (the filter reads past the band's edges, clamped to the image only at its edges).
One axis per call on purpose: asked for both at once, Pillow 13 chooses the order of the passes
itself and does not choose the same for a band as for the whole image (1000x750 -> 800x600 goes
horizontal first, its half bands vertical first), and the orders round the intermediate rows
differently: up to 5 levels on 15% of a photo's pixels, so the pixels depended on the number of
cores. This way bands give the same image as a single resize, but for the rare pixel where a
band's floating-point box rounds one level the other way (tested). This is how pyvips keeps
every core busy on one image.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from PIL import Image

Box = tuple[float, float, float, float]

# Bicubic, as Pillow's own `thumbnail`, for about 30% less resampling time than Lanczos. PSNR of
# the bench's 12 MP photo to 800x600 against a full-resolution decode and Lanczos: decoded at 1/2
# scale, bicubic 43.9 dB and Lanczos 45.1 dB (what pyvips gives); decoded at 1/4 scale, as
# decode_hint now asks, bicubic 37.0 dB and Lanczos 38.4 dB. The decode scale, not the filter,
# makes most of the gap to pyvips' output (issue 15's note).
RESAMPLE: Final = Image.Resampling.BICUBIC
# How far a filter reaches either side of a sample, in source pixels at scale 1: Lanczos' 3, the
# widest of Pillow's (bicubic reaches 2), so a band reads enough rows whatever RESAMPLE is.
_SUPPORT: Final = 3.0
# Pillow's "reducing_gap" fast path: an integer box reduction down to about twice the target
# size, then the filter for the rest; indistinguishable from filtering all the way (Pillow's docs).
REDUCING_GAP: Final = 2.0
THREADS: Final = max(1, min(4, os.cpu_count() or 1))
# Below this many source pixels, handing bands to threads costs more than it saves. A 12 MP photo
# decoded at 1/4 scale (1000x750, ~10 ms of bicubic to 800x600 on one core) is well above it.
_MIN_PARALLEL_PIXELS: Final = 250_000
# Resampling premultiplies alpha; doing it once here spares every band converting the whole image.
_PREMULTIPLIED: Final = {"RGBA": "RGBa", "LA": "La"}

_pool: ThreadPoolExecutor | None = None


def resize(image: Image.Image, size: tuple[int, int], *, box: Box | None = None, threads: int = THREADS) -> Image.Image:
    """`image.resize(size, RESAMPLE, box=box, reducing_gap=REDUCING_GAP)`, computed in `threads` bands."""
    mode = image.mode
    if mode in _PREMULTIPLIED:
        image = image.convert(_PREMULTIPLIED[mode])
    left, top, right, bottom = box or (0.0, 0.0, float(image.width), float(image.height))
    factor_x = int((right - left) / size[0] / REDUCING_GAP) or 1
    factor_y = int((bottom - top) / size[1] / REDUCING_GAP) or 1
    if factor_x > 1 or factor_y > 1:
        image = image.reduce((factor_x, factor_y))
        left, right = left / factor_x, right / factor_x
        top, bottom = top / factor_y, bottom / factor_y
    bands = threads if (right - left) * (bottom - top) >= _MIN_PARALLEL_PIXELS else 1
    out = _resample(image, size, (left, top, right, bottom), bands)
    return out.convert(mode) if out.mode != mode else out


def _resample(image: Image.Image, size: tuple[int, int], box: Box, bands: int) -> Image.Image:
    left, top, right, bottom = box
    width, height = size
    horizontal = (width, left, right) != (image.width, 0, image.width)
    vertical = (height, top, bottom) != (image.height, 0, image.height)
    scale = (bottom - top) / height
    # Source rows a band of output rows reads: its box and the filter's reach either side.
    reach = math.ceil(_SUPPORT * max(1.0, scale)) + 1

    def band(y0: int, y1: int) -> Image.Image:
        if not vertical:  # rows map one to one
            first, last = y0, y1
        else:
            first = max(0, math.floor(top + y0 * scale) - reach)
            last = min(image.height, math.ceil(top + y1 * scale) + reach)
        rows = image if (first, last) == (0, image.height) else image.crop((0, first, image.width, last))
        if horizontal:
            rows = rows.resize((width, rows.height), RESAMPLE, box=(left, 0, right, rows.height))
        if vertical:
            start = top if y0 == 0 else top + y0 * scale
            end = bottom if y1 == height else top + y1 * scale  # never past the image by rounding
            rows = rows.resize((width, y1 - y0), RESAMPLE, box=(0, start - first, width, end - first))
        return rows if rows is not image else image.copy()

    bands = max(1, min(bands, height))
    edges = [height * i // bands for i in range(bands + 1)]
    parts = _run_bands(lambda i: band(edges[i], edges[i + 1]), bands)
    if bands == 1:
        return parts[0]
    out = Image.new(image.mode, size)
    for y0, part in zip(edges[:-1], parts, strict=True):
        out.paste(part, (0, y0))
    return out


def _run_bands(band: Callable[[int], Image.Image], bands: int) -> list[Image.Image]:
    """`[band(i) for i in range(bands)]`, the calling thread and the pool taking bands in turn.

    The caller works too, so on a machine whose other cores are busy it simply does the bands the
    pool has not started, and the resize costs about what it would on one thread.
    """
    parts: list[Image.Image | None] = [None] * bands
    order = iter(range(bands))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(order, None)
            if i is None:
                return
            parts[i] = band(i)

    helpers = [_executor().submit(work) for _ in range(min(bands, THREADS) - 1)]
    work()
    for helper in helpers:
        if not helper.cancel():  # a helper still queued (the pool busy with other images) never runs
            helper.result()
    return [part for part in parts if part is not None]


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="image-resize")
    return _pool
