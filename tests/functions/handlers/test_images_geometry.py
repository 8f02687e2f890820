"""functions/handlers/lib/image_geometry.py: sizes for each fit, orientation, and the decode hint."""

from __future__ import annotations

import pytest

from functions.handlers.lib.image_geometry import Plan, decode_hint, plan, upright_size


@pytest.mark.parametrize(
    ("fit", "resized", "output", "canvas"),
    [
        ("inside", (100, 67), (100, 67), None),
        ("contain", (100, 67), (100, 100), (100, 100)),
        ("fill", (100, 100), (100, 100), None),
        ("cover", (100, 100), (100, 100), None),
    ],
)
def test_each_fit_of_a_landscape_image_into_a_square(
    fit: str, resized: tuple[int, int], output: tuple[int, int], canvas: tuple[int, int] | None
) -> None:
    p = plan((300, 200), width=100, height=100, fit=fit, orientation=1, rotate=0)  # type: ignore[arg-type]

    assert (p.resized, p.output, p.canvas) == (resized, output, canvas)
    assert p.crop == ((50.0, 0.0, 250.0, 200.0) if fit == "cover" else None)


@pytest.mark.parametrize("fit", ["inside", "cover", "contain", "fill"])
def test_one_side_keeps_the_aspect_ratio_whatever_the_fit(fit: str) -> None:
    by_width = plan((300, 200), width=150, height=None, fit=fit, orientation=1, rotate=0)  # type: ignore[arg-type]
    by_height = plan((300, 200), width=None, height=50, fit=fit, orientation=1, rotate=0)  # type: ignore[arg-type]

    assert by_width == Plan(crop=None, resized=(150, 100), canvas=None, output=(150, 100))
    assert by_height == Plan(crop=None, resized=(75, 50), canvas=None, output=(75, 50))


def test_no_size_keeps_the_image_but_turns_it_upright() -> None:
    p = plan((300, 200), width=None, height=None, fit="inside", orientation=6, rotate=0)

    assert p == Plan(crop=None, resized=(300, 200), canvas=None, output=(200, 300))


@pytest.mark.parametrize(
    ("orientation", "rotate", "turned"), [(1, 0, False), (6, 0, True), (8, 90, False), (3, 270, True), (5, 180, True)]
)
def test_sizes_refer_to_the_upright_image(orientation: int, rotate: int, turned: bool) -> None:
    p = plan((4000, 3000), width=600, height=None, fit="inside", orientation=orientation, rotate=rotate)
    upright = upright_size((4000, 3000), orientation=orientation, rotate=rotate)

    assert upright == ((3000, 4000) if turned else (4000, 3000))
    assert p.output == ((600, 800) if turned else (600, 450))
    assert p.resized == ((800, 600) if turned else (600, 450)), "resizing happens in stored orientation"


def test_cover_crop_of_a_turned_image_is_centred_on_the_stored_pixels() -> None:
    # Stored 300x200, shown 200x300; a 100x100 cover keeps the middle 200x200 of the stored pixels.
    p = plan((300, 200), width=100, height=100, fit="cover", orientation=6, rotate=0)

    assert p.crop == (50.0, 0.0, 250.0, 200.0)
    assert p.output == (100, 100)


def test_cover_into_a_wide_box_crops_top_and_bottom() -> None:
    p = plan((300, 300), width=300, height=100, fit="cover", orientation=1, rotate=0)

    assert p.crop == (0.0, 100.0, 300.0, 200.0)


def test_enlarging_is_allowed() -> None:
    assert plan((10, 10), width=100, height=50, fit="inside", orientation=1, rotate=0).output == (50, 50)


def test_decode_hint_asks_for_the_largest_output() -> None:
    small = plan((4000, 3000), width=800, height=600, fit="inside", orientation=1, rotate=0)
    smaller = plan((4000, 3000), width=200, height=None, fit="inside", orientation=1, rotate=0)

    assert decode_hint((4000, 3000), [small, smaller]) == (800, 600)


def test_decode_hint_accounts_for_the_crop() -> None:
    # Cover keeps a 3000x3000 square: 600x600 out of it needs 600 per 3000 source pixels.
    cover = plan((4000, 3000), width=600, height=600, fit="cover", orientation=1, rotate=0)

    assert decode_hint((4000, 3000), [cover]) == (800, 600)


def test_no_decode_hint_when_any_output_needs_the_full_resolution() -> None:
    small = plan((4000, 3000), width=800, height=None, fit="inside", orientation=1, rotate=0)
    full = plan((4000, 3000), width=None, height=None, fit="inside", orientation=1, rotate=0)
    near_full = plan((4000, 3000), width=2500, height=None, fit="inside", orientation=1, rotate=0)

    assert decode_hint((4000, 3000), [small, full]) is None
    assert decode_hint((4000, 3000), [near_full]) == (2500, 1875)
