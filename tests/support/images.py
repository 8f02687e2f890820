"""Test images built on the fly: a phone-like 12 MP JPEG, marked images to check orientation,
a PNG with alpha and metadata, decompression bombs, and formats the images function refuses."""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

from PIL import ExifTags, Image, ImageCms, ImageDraw, PngImagePlugin

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6" '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/">secret-xmp</rdf:Description></rdf:RDF></x:xmpmeta>'
)
COMMENT = b"secret-comment"
GPS_LATITUDE = (52.0, 22.0, 7.5)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def exif_bytes(*, orientation: int | None = None, gps: bool = True) -> bytes:
    """EXIF with a camera model, optionally an orientation, and a GPS position."""
    exif = Image.Exif()
    exif[ExifTags.Base.Model] = "TestPhone 12"
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if gps:
        position = exif.get_ifd(ExifTags.IFD.GPSInfo)
        position[ExifTags.GPS.GPSLatitudeRef] = "N"
        position[ExifTags.GPS.GPSLatitude] = GPS_LATITUDE
        position[ExifTags.GPS.GPSLongitudeRef] = "E"
        position[ExifTags.GPS.GPSLongitude] = (4.0, 53.0, 41.0)
    return exif.tobytes()


@cache
def srgb_icc() -> bytes:
    """An sRGB profile. Cached: littleCMS stamps each serialisation with the current time."""
    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


@cache
def photo_12mp(orientation: int = 6) -> bytes:
    """A 4000x3000 JPEG (quality 90) shaped like a phone photo: detail everywhere, EXIF
    orientation, GPS position, XMP, a comment and an ICC profile. Built once per session."""
    size = (4000, 3000)
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = Image.effect_noise(size, 48)  # grain so the JPEG carries photo-like detail
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    for i in range(0, 4000, 50):
        draw.line([(i, 0), (4000 - i, 3000)], fill=(i % 255, 255 - i % 255, 128), width=3)
    return encode(
        image,
        "JPEG",
        quality=90,
        exif=exif_bytes(orientation=orientation),
        xmp=XMP,
        comment=COMMENT,
        icc_profile=srgb_icc(),
    )


def marked(size: tuple[int, int] = (300, 200)) -> Image.Image:
    """Blue with a red block in the top-left corner and a green one in the top-right."""
    image = Image.new("RGB", size, BLUE)
    w, h = size
    image.paste(RED, (0, 0, w // 4, h // 4))
    image.paste(GREEN, (w - w // 4, 0, w, h // 4))
    return image


def marked_jpeg(orientation: int, size: tuple[int, int] = (300, 200)) -> bytes:
    """`marked()` stored as is, with an EXIF orientation telling viewers how to turn it."""
    return encode(marked(size), "JPEG", quality=95, exif=exif_bytes(orientation=orientation))


def png_with_alpha(size: tuple[int, int] = (640, 480)) -> bytes:
    """An RGBA PNG, left half opaque red, right half fully transparent, with EXIF (GPS), XMP,
    a text chunk and an ICC profile."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, size[0] // 2, size[1]))
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", COMMENT.decode())
    return encode(image, "PNG", pnginfo=text, exif=exif_bytes(), xmp=XMP, icc_profile=srgb_icc())


def palette_gif(size: tuple[int, int] = (120, 80)) -> bytes:
    """A two-frame GIF with a transparent colour (only the first frame is used)."""
    first = marked(size).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    second = Image.new("RGB", size, WHITE).convert("P")
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second], transparency=0, comment=COMMENT)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes declaring a `width` x `height` greyscale PNG: zeros compress ~1000:1,
    so a real file of this size would still be tiny while decoding it would need width x height
    bytes. Only the first rows are present; the size check must refuse it before decoding."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def gif_bomb() -> bytes:
    """A GIF whose logical screen is 65535 x 65535 (4.3 gigapixels)."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0)
    palette = b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + palette + frame + b"\x3b"


def truncated_jpeg() -> bytes:
    """A valid JPEG header followed by only part of the image data."""
    whole = encode(Image.effect_noise((400, 300), 60).convert("RGB"), "JPEG", quality=90)
    return whole[: len(whole) // 2]


def eps_sample() -> bytes:
    """Encapsulated PostScript: Pillow would hand it to Ghostscript."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
        b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    )


def psd_sample(size: tuple[int, int] = (4, 4)) -> bytes:
    """A valid 8-bit RGB Photoshop file (raw data) that Pillow itself can open."""
    w, h = size
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers: empty
    pixels = struct.pack(">H", 0) + bytes([200]) * (w * h * 3)
    return header + sections + pixels


def svg_sample() -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect width="10" height="10" fill="red"/><image href="file:///etc/passwd"/></svg>\n'
    )


def tiff_sample() -> bytes:
    """A format Pillow decodes but the images function does not accept."""
    return encode(marked((20, 10)), "TIFF")


def bmp_sample() -> bytes:
    return encode(marked((20, 10)), "BMP")


def heif_like_sample() -> bytes:
    """An ISO-BMFF file with a HEIF brand: sniffed as a possible AVIF, refused by the AVIF decoder."""
    ftyp = struct.pack(">I", 24) + b"ftypmif1" + struct.pack(">I", 0) + b"mif1heic"
    return ftyp + struct.pack(">I", 8) + b"free"


def _s15f16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15f16(x) + _s15f16(y) + _s15f16(z)


def swapped_primaries_icc() -> bytes:
    """A valid ICC v2 RGB display profile whose red and green primaries are sRGB's green and red,
    with a plain 2.2 gamma: pure red in an image tagged with it is pure green once converted to
    sRGB, which makes a colour conversion easy to see."""
    d50 = (0.9642, 1.0, 0.8249)
    srgb_red, srgb_green, srgb_blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
    description = b"Swapped primaries test\0"
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233) + b"\0\0"  # gamma 2.2 as u8Fixed8, padded
    tags = [
        (
            b"desc",
            b"desc\0\0\0\0"
            + struct.pack(">I", len(description))
            + description
            + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0)
            + b"\0" * 67,
        ),
        (b"wtpt", _xyz_tag(*d50)),
        (b"rXYZ", _xyz_tag(*srgb_green)),
        (b"gXYZ", _xyz_tag(*srgb_red)),
        (b"bXYZ", _xyz_tag(*srgb_blue)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + _s15f16(d50[0])
        + _s15f16(d50[1])
        + _s15f16(d50[2])
        + b"\0" * 4
        + b"\0" * 44
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data
