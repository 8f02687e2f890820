"""functions/handlers/lib/image_resize.py: resizing in bands gives Pillow's single resize.

Band boxes are computed in floating point, so a rare pixel may round the other way: at most one
level on under 0.1% of pixels (two for images with alpha, compared premultiplied as resampling
works, because un- and re-premultiplying rounds once more).
"""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops

from functions.handlers.lib.image_resize import REDUCING_GAP, RESAMPLE, resize


def _detailed(mode: str, size: tuple[int, int] = (1600, 1100)) -> Image.Image:
    noise = Image.effect_noise(size, 70)
    gradient = Image.linear_gradient("L").resize(size)
    mirrored = noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bands = {"L": [noise], "LA": [noise, gradient], "RGB": [noise, gradient, mirrored]}
    bands["RGBA"] = [*bands["RGB"], gradient.transpose(Image.Transpose.ROTATE_180)]
    return Image.merge(mode, bands[mode])


def _same(a: Image.Image, b: Image.Image) -> bool:
    assert (a.mode, a.size) == (b.mode, b.size)
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(a.mode)
    tolerance = 1
    if premultiplied:
        a, b, tolerance = a.convert(premultiplied), b.convert(premultiplied), 2
    for x, y in zip(a.split(), b.split(), strict=True):
        histogram = ImageChops.difference(x, y).histogram()
        if any(histogram[tolerance + 1 :]) or sum(histogram[1:]) > a.width * a.height / 1000:
            return False
    return True


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(800, 550), (333, 211), (1200, 900), (50, 7)])
def test_bands_equal_pillows_own_resize(mode: str, size: tuple[int, int]) -> None:
    image = _detailed(mode)

    banded = resize(image, size, threads=3)

    assert _same(banded, image.resize(size, RESAMPLE, reducing_gap=REDUCING_GAP))


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_bands_of_a_cropped_region_equal_one_resize_of_it(mode: str) -> None:
    image = _detailed(mode)
    box = (137.5, 80.25, 1500.0, 1010.0)

    assert _same(resize(image, (400, 300), box=box, threads=4), resize(image, (400, 300), box=box, threads=1))


def test_small_images_are_resized_in_one_piece_and_still_correct() -> None:
    image = _detailed("RGB", (300, 200))

    assert _same(resize(image, (100, 67), threads=4), image.resize((100, 67), RESAMPLE, reducing_gap=REDUCING_GAP))


@pytest.mark.parametrize("size", [(800, 600), (900, 300), (640, 740)])
@pytest.mark.parametrize("threads", [2, 3, 4])
def test_the_pixels_do_not_depend_on_the_number_of_bands(size: tuple[int, int], threads: int) -> None:
    # A 12 MP photo decoded at 1/4 scale. Asked for both axes in one call, Pillow resizes a half
    # band of 1000x750 -> 800x600 vertically first but the whole image horizontally first, and
    # the two orders differ by several levels (up to 18 on 1.5% of this image's pixels, 5 on 15%
    # of the bench photo's).
    image = _detailed("RGB", (1000, 750))

    assert _same(resize(image, size, threads=threads), resize(image, size, threads=1))


def test_a_photo_decoded_at_a_quarter_scale_is_pillows_own_resize_in_bands() -> None:
    image = _detailed("RGB", (1000, 750))

    assert _same(resize(image, (800, 600), threads=2), image.resize((800, 600), RESAMPLE, reducing_gap=REDUCING_GAP))
