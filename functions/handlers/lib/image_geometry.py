"""Where pixels go: output sizes for the four fits, EXIF orientation and quarter turns.

Pure arithmetic, no Pillow. Sizes a client asks for refer to the upright image (EXIF orientation
and `rotate` applied); the pixels are resized while still in their stored orientation and turned
afterwards, because turning the small output is cheaper than turning the large input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Fit = Literal["inside", "cover", "contain", "fill"]
Box = tuple[float, float, float, float]
Size = tuple[int, int]

# EXIF orientations 5-8 store the picture turned by a quarter: width and height trade places.
_QUARTER_TURN_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How to turn a stored image of `source` size into one output.

    Resize the `crop` box of the stored pixels to `resized` (both in stored orientation), turn the
    result upright, then, for `contain`, centre it on a `canvas` of the requested size.
    """

    crop: Box | None
    resized: Size
    canvas: Size | None
    output: Size  # final width x height, upright


def is_quarter_turned(orientation: int, rotate: int) -> bool:
    """True if the upright output swaps the stored width and height."""
    return (orientation in _QUARTER_TURN_ORIENTATIONS) != (rotate in (90, 270))


def upright_size(stored: Size, *, orientation: int, rotate: int) -> Size:
    """The size of the stored image once EXIF orientation and `rotate` are applied."""
    return (stored[1], stored[0]) if is_quarter_turned(orientation, rotate) else stored


def plan(stored: Size, *, width: int | None, height: int | None, fit: Fit, orientation: int, rotate: int) -> Plan:
    """The crop, resize and canvas that give the requested box under `fit`.

    `inside` keeps the aspect ratio within width x height; `cover` fills width x height and crops
    the overflow evenly; `contain` fits inside and pads to exactly width x height; `fill`
    stretches to width x height. With only one of width or height every fit keeps the aspect
    ratio. With neither the image keeps its size. Images may be enlarged.
    """
    turned = is_quarter_turned(orientation, rotate)
    up_w, up_h = upright_size(stored, orientation=orientation, rotate=rotate)

    def stored_size(size: Size) -> Size:
        return (size[1], size[0]) if turned else size

    if width is None or height is None:
        if width is not None:
            out = (width, _scaled(up_h, width / up_w))
        elif height is not None:
            out = (_scaled(up_w, height / up_h), height)
        else:
            return Plan(crop=None, resized=stored, canvas=None, output=(up_w, up_h))
        return Plan(crop=None, resized=stored_size(out), canvas=None, output=out)
    if fit == "fill":
        return Plan(crop=None, resized=stored_size((width, height)), canvas=None, output=(width, height))
    if fit == "cover":
        scale = max(width / up_w, height / up_h)
        # The visible region, centred. Centring is the same in any orientation, so the box can be
        # computed on the stored pixels directly with the region's sides swapped when turned.
        region_w, region_h = stored_size((width, height))
        crop_w, crop_h = region_w / scale, region_h / scale
        left, top = (stored[0] - crop_w) / 2, (stored[1] - crop_h) / 2
        return Plan(
            crop=(left, top, left + crop_w, top + crop_h),
            resized=stored_size((width, height)),
            canvas=None,
            output=(width, height),
        )
    scale = min(width / up_w, height / up_h)
    inner = (_scaled(up_w, scale), _scaled(up_h, scale))
    if fit == "contain":
        return Plan(crop=None, resized=stored_size(inner), canvas=(width, height), output=(width, height))
    return Plan(crop=None, resized=stored_size(inner), canvas=None, output=inner)


def decode_hint(stored: Size, plans: list[Plan]) -> Size | None:
    """The smallest stored size worth decoding for every plan, or None to decode in full.

    The largest resized size (per side, scaled to the whole image when cropping), as libvips
    asks of its shrink-on-load: libjpeg's DCT scaling (1/2, 1/4, 1/8) is itself a filtered
    reduction and stays at or above that size, and the final resampling filters the rest. Asking
    for twice the size (as Pillow's `thumbnail` does) decodes 4x the pixels: on the bench's noisy
    12 MP photo to 800x600 that is 43.9 instead of 37.0 dB PSNR against a full-resolution resize
    (pyvips 45.1 dB) for about 0.93x instead of 0.82x of pyvips' time: this trades that fidelity
    for speed (measured for issue 15, one run of 12 repetitions).
    """
    need_w = need_h = 0.0
    for p in plans:
        crop = p.crop or (0.0, 0.0, float(stored[0]), float(stored[1]))
        crop_w, crop_h = crop[2] - crop[0], crop[3] - crop[1]
        need_w = max(need_w, p.resized[0] * stored[0] / crop_w)
        need_h = max(need_h, p.resized[1] * stored[1] / crop_h)
    if need_w >= stored[0] or need_h >= stored[1]:
        return None
    return (math.ceil(need_w), math.ceil(need_h))


def _scaled(side: int, scale: float) -> int:
    return max(1, round(side * scale))
