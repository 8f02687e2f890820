"""The images function end to end: `run(job, ctx)` with the moto S3 server and a loopback HTTP
source, outputs re-opened from storage and checked pixel by pixel and byte by byte."""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageChops, ImageOps, ImageStat

from functions.handlers import images
from functions.handlers.base import HandlerContext
from infra.local.s3 import LocalS3
from shared.db.models import Job
from shared.errors import PermanentJobError, RetryableJobError
from shared.schemas.images import ImagesRequest
from tests.conftest import make_settings
from tests.support import images as samples
from tests.support.bombs import CODINGS, MiB, bomb, traced_peak
from tests.support.jobs import held_job, run_handler
from tests.support.receivers import Reply, http_receiver

TENANT = "t1"
_upload_ids = itertools.count(1000)


class _Source(BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (status, headers, body)`."""

    def do_GET(self) -> None:
        status, headers, body = self.server.routes.get(self.path, (404, {}, b"not here"))  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class SourceServer:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Source)
        self.httpd.routes = {}  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, path: str, body: bytes, *, status: int = 200, content_type: str = "image/jpeg") -> str:
        self.httpd.routes[path] = (status, {"Content-Type": content_type}, body)  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture(scope="module")
def source() -> Iterator[SourceServer]:
    server = SourceServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join()


def _context(s3: LocalS3, **overrides: Any) -> HandlerContext:
    settings = make_settings("postgresql://unused.invalid/none", s3, **overrides)
    ctx = HandlerContext(settings=settings, machine_id="test-machine")
    ctx.bucket.ensure_bucket()
    return ctx


async def _closed(ctx: HandlerContext) -> None:
    client = ctx.resources.get("outbound")
    if client is not None:
        await client.aclose()


@pytest.fixture
async def ctx(s3: LocalS3) -> AsyncIterator[HandlerContext]:
    context = _context(s3, outbound_allowlist=["127.0.0.1"])
    yield context
    await _closed(context)


def make_job(body: dict[str, Any], *, tenant: str = TENANT) -> Job:
    """A job as the ingress would store it: args are `function_args()` of the validated body."""
    return held_job(queue="images", tenant_id=tenant, args=ImagesRequest.model_validate(body).function_args())


def upload(ctx: HandlerContext, data: bytes, name: str = "photo.jpg", *, tenant: str = TENANT) -> str:
    key = f"tenants/{tenant}/uploads/test/{next(_upload_ids)}/{name}"
    ctx.bucket.for_tenant(tenant).put_bytes(key, data, "application/octet-stream")
    return key


async def process(ctx: HandlerContext, data: bytes, **body: Any) -> tuple[dict[str, Any], list[bytes]]:
    """Run the function on `data` (uploaded first); the result and each output's stored bytes."""
    job = make_job({"imageId": "img-1", "sourceKey": upload(ctx, data), **body})
    result = await run_handler(images, job, ctx)
    return result, [ctx.bucket.for_tenant(TENANT).get_bytes(output["key"]) for output in result["outputs"]]


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.convert("RGBA").getpixel(xy)
    assert isinstance(value, tuple)
    return value


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False))


def assert_no_metadata(data: bytes) -> None:
    image = opened(data)
    exif = image.getexif()
    assert len(exif) == 0, dict(exif)
    assert not exif.get_ifd(ExifTags.IFD.GPSInfo)
    assert not {"exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment", "Comment"} & set(image.info), image.info
    for secret in (b"secret-xmp", b"secret-comment", b"TestPhone", b"GPS", b"sRGB built-in"):
        assert secret not in data, secret


async def test_12mp_jpeg_from_a_url_becomes_an_800x600_webp(ctx: HandlerContext, source: SourceServer) -> None:
    url = source.serve("/photo.jpg", samples.photo_12mp(orientation=1))
    job = make_job(
        {
            "imageId": "holiday",
            "sourceUrl": url,
            "operations": {"resize": {"width": 800, "height": 600}, "format": "webp"},
        }
    )

    result = await run_handler(images, job, ctx)

    [output] = result["outputs"]
    stored = ctx.bucket.for_tenant(TENANT).get_bytes(output["key"])
    assert result["imageId"] == "holiday"
    assert job.claim_token is not None
    assert output == {
        "name": "image",
        "key": f"tenants/{TENANT}/jobs/{job.id}/{job.claim_token.hex}/image.webp",
        "contentType": "image/webp",
        "size": len(stored),
        "width": 800,
        "height": 600,
        "format": "webp",
    }
    image = opened(stored)
    assert (image.format, image.size) == ("WEBP", (800, 600))
    assert_no_metadata(stored)


async def test_phone_photo_comes_out_upright_without_its_metadata(ctx: HandlerContext) -> None:
    # Orientation 6: stored landscape, shown portrait (turned 90 degrees clockwise).
    result, [stored] = await process(
        ctx, samples.photo_12mp(orientation=6), operations={"resize": {"width": 600}, "format": "jpeg"}
    )

    assert (result["outputs"][0]["width"], result["outputs"][0]["height"]) == (600, 800)
    assert opened(stored).size == (600, 800)
    assert_no_metadata(stored)


@pytest.mark.parametrize("orientation", range(1, 9))
async def test_every_exif_orientation_is_applied(ctx: HandlerContext, orientation: int) -> None:
    data = samples.marked_jpeg(orientation)
    expected = ImageOps.exif_transpose(opened(data))

    _, [no_resize] = await process(ctx, data, operations={"format": "png"})
    _, [resized] = await process(ctx, data, operations={"format": "png", "resize": {"width": expected.width // 2}})

    assert opened(no_resize).size == expected.size
    assert _mean_difference(opened(no_resize), expected) < 3
    half = expected.resize((expected.width // 2, expected.height // 2), Image.Resampling.LANCZOS)
    assert opened(resized).size == half.size
    assert _mean_difference(opened(resized), half) < 3
    assert ExifTags.Base.Orientation not in opened(no_resize).getexif()


async def test_orientation_6_puts_the_top_left_corner_top_right(ctx: HandlerContext) -> None:
    _, [stored] = await process(ctx, samples.marked_jpeg(6), operations={"format": "png"})

    image = opened(stored)
    assert image.size == (200, 300)
    assert close_to(pixel(image, (190, 10)), samples.RED)  # stored top-left
    assert close_to(pixel(image, (190, 290)), samples.GREEN)  # stored top-right
    assert close_to(pixel(image, (10, 10)), samples.BLUE)


# The red block starts top-left: a clockwise quarter turn takes it top-right, a half turn
# bottom-right, three quarters bottom-left.
@pytest.mark.parametrize(("rotate", "red_at"), [(90, (190, 10)), (180, (290, 190)), (270, (10, 290))])
async def test_rotate_turns_clockwise_after_orientation(
    ctx: HandlerContext, rotate: int, red_at: tuple[int, int]
) -> None:
    _, [stored] = await process(ctx, samples.marked_jpeg(1), operations={"format": "png", "rotate": rotate})

    image = opened(stored)
    assert image.size == ((200, 300) if rotate in (90, 270) else (300, 200))
    assert close_to(pixel(image, red_at), samples.RED)


@pytest.mark.parametrize(
    ("fit", "size", "checks"),
    [
        ("inside", (100, 67), [((5, 5), samples.RED), ((95, 5), samples.GREEN), ((50, 60), samples.BLUE)]),
        ("fill", (100, 100), [((5, 5), samples.RED), ((95, 5), samples.GREEN), ((50, 90), samples.BLUE)]),
        # 300x200 scaled to 150x100, the middle 100 columns kept: the red block is 12 columns wide.
        ("cover", (100, 100), [((3, 5), samples.RED), ((20, 5), samples.BLUE), ((97, 5), samples.GREEN)]),
        # Scaled to 100x67 and centred on a transparent 100x100 canvas (rows 16 to 83).
        ("contain", (100, 100), [((50, 3), (0, 0, 0, 0)), ((50, 97), (0, 0, 0, 0)), ((5, 22), samples.RED)]),
    ],
)
async def test_each_fit(
    ctx: HandlerContext, fit: str, size: tuple[int, int], checks: list[tuple[tuple[int, int], tuple[int, ...]]]
) -> None:
    data = samples.encode(samples.marked(), "PNG")

    result, [stored] = await process(ctx, data, operations={"resize": {"width": 100, "height": 100, "fit": fit}})

    image = opened(stored)
    assert (image.format, image.size) == ("PNG", size), "the input's format is kept by default"
    assert (result["outputs"][0]["width"], result["outputs"][0]["height"]) == size
    for xy, colour in checks:
        assert close_to(pixel(image, xy), colour), (xy, pixel(image, xy), colour)


async def test_contain_pads_a_jpeg_with_white(ctx: HandlerContext) -> None:
    _, [stored] = await process(
        ctx, samples.marked_jpeg(1), operations={"resize": {"width": 100, "height": 100, "fit": "contain"}}
    )

    image = opened(stored)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (100, 100))
    assert close_to(pixel(image, (50, 3)), (255, 255, 255, 255), 8)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif", "gif"])
async def test_no_output_format_carries_metadata(ctx: HandlerContext, fmt: str) -> None:
    tagged = samples.encode(
        samples.marked(),
        "JPEG",
        exif=samples.exif_bytes(orientation=1),
        xmp=samples.XMP,
        comment=samples.COMMENT,
        icc_profile=samples.srgb_icc(),
    )

    for data in (tagged, samples.png_with_alpha(), samples.palette_gif()):
        result, [stored] = await process(ctx, data, operations={"format": fmt, "resize": {"width": 64}})

        assert opened(stored).format == fmt.upper()
        assert result["outputs"][0]["contentType"] == f"image/{fmt}"
        assert_no_metadata(stored)


async def test_metadata_is_kept_when_asked_but_orientation_is_applied(ctx: HandlerContext) -> None:
    tagged = samples.encode(
        samples.marked(),
        "JPEG",
        exif=samples.exif_bytes(orientation=6),
        xmp=samples.XMP,
        icc_profile=samples.srgb_icc(),
    )

    _, [stored] = await process(ctx, tagged, operations={"stripMetadata": False})

    image = opened(stored)
    exif = image.getexif()
    assert image.size == (200, 300)
    assert exif[ExifTags.Base.Model] == "TestPhone 12"
    assert exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitude] == samples.GPS_LATITUDE
    assert ExifTags.Base.Orientation not in exif
    assert image.info["icc_profile"] == samples.srgb_icc()
    assert b"secret-xmp" in image.info["xmp"] and b"tiff:Orientation" not in image.info["xmp"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
async def test_colours_are_converted_to_srgb_when_the_profile_is_dropped(ctx: HandlerContext, fmt: str) -> None:
    # Red under the test profile is sRGB green: only a real conversion turns it green.
    red = samples.encode(Image.new("RGB", (32, 32), samples.RED), fmt, icc_profile=samples.swapped_primaries_icc())

    _, [converted, kept] = await process(
        ctx, red, variants=[{"name": "converted"}, {"name": "kept", "stripMetadata": False}]
    )

    assert close_to(pixel(opened(converted), (16, 16)), samples.GREEN, 12)
    assert "icc_profile" not in opened(converted).info
    assert close_to(pixel(opened(kept), (16, 16)), samples.RED, 12)
    assert opened(kept).info["icc_profile"] == samples.swapped_primaries_icc()


async def test_a_profile_is_only_kept_on_pixels_it_can_describe(ctx: HandlerContext) -> None:
    red = samples.encode(Image.new("RGB", (32, 32), samples.RED), "PNG", icc_profile=samples.swapped_primaries_icc())

    _, [grey] = await process(ctx, red, operations={"grayscale": True, "stripMetadata": False})

    assert opened(grey).mode == "L"
    assert "icc_profile" not in opened(grey).info, "an RGB profile does not describe grey pixels"


async def test_cmyk_jpeg_becomes_rgb(ctx: HandlerContext) -> None:
    cyan = samples.encode(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG", quality=95)

    result, [stored] = await process(ctx, cyan, operations={"format": "webp"})

    assert (result["outputs"][0]["format"], opened(stored).mode) == ("webp", "RGB")
    assert close_to(pixel(opened(stored), (16, 16)), (0, 255, 255), 12)


async def test_variants_give_one_output_each(ctx: HandlerContext) -> None:
    result, stored = await process(
        ctx,
        samples.photo_12mp(orientation=1),
        operations={"format": "webp", "quality": 70},
        variants=[
            {"name": "thumb", "resize": {"width": 160, "height": 160, "fit": "cover"}},
            {"name": "medium", "resize": {"width": 1200}, "format": "jpeg"},
            {"name": "grey", "resize": {"height": 300}, "format": "png", "grayscale": True},
            {"name": "turned", "resize": {"width": 400}, "rotate": 90},
        ],
    )

    facts = [(o["name"], o["format"], o["width"], o["height"], o["key"].rsplit("/", 1)[1]) for o in result["outputs"]]
    assert facts == [
        ("thumb", "webp", 160, 160, "thumb.webp"),
        ("medium", "jpeg", 1200, 900, "medium.jpg"),
        ("grey", "png", 400, 300, "grey.png"),
        ("turned", "webp", 400, 533, "turned.webp"),
    ]
    images_ = [opened(data) for data in stored]
    assert [(i.format, i.size) for i in images_] == [(f.upper(), (w, h)) for _, f, w, h, _ in facts]
    assert images_[2].mode == "L"
    assert [o["size"] for o in result["outputs"]] == [len(data) for data in stored]


async def test_transparency_is_flattened_onto_white_for_jpeg_and_kept_for_webp(ctx: HandlerContext) -> None:
    _, [jpeg, webp] = await process(
        ctx,
        samples.png_with_alpha(),
        variants=[{"name": "flat", "format": "jpeg"}, {"name": "clear", "format": "webp"}],
    )

    assert close_to(pixel(opened(jpeg), (600, 200)), (255, 255, 255, 255), 8)
    assert close_to(pixel(opened(jpeg), (40, 200)), (255, 0, 0, 255), 8)
    assert pixel(opened(webp), (600, 200))[3] == 0


async def test_palette_gif_keeps_its_format_and_transparency(ctx: HandlerContext) -> None:
    result, [stored] = await process(ctx, samples.palette_gif(), operations={"resize": {"width": 60}})

    image = opened(stored)
    assert (result["outputs"][0]["format"], image.format, image.size) == ("gif", "GIF", (60, 40))
    assert getattr(image, "n_frames", 1) == 1, "only the first frame is used"


async def test_sixteen_bit_png_is_scaled_not_clipped(ctx: HandlerContext) -> None:
    deep = Image.linear_gradient("L").resize((64, 64)).convert("I").point(lambda v: v * 257).convert("I;16")

    _, [stored] = await process(ctx, samples.encode(deep, "PNG"))

    image = opened(stored)
    assert image.mode == "L"
    assert 100 < ImageStat.Stat(image).mean[0] < 155, "a full-range gradient stays mid-grey on average"


@pytest.mark.parametrize(
    "bomb",
    [
        samples.png_bomb(8000, 8000),  # 64 MP: above our limit, below Pillow's warning
        samples.png_bomb(10000, 10000),  # 100 MP: Pillow warns
        samples.png_bomb(20000, 20000),  # 400 MP: Pillow refuses
        samples.gif_bomb(),  # 4.3 GP logical screen
    ],
)
@pytest.mark.parametrize("operations", [{}, {"resize": {"width": 100}}], ids=["as-is", "thumbnail"])
async def test_decompression_bombs_fail_cleanly(ctx: HandlerContext, bomb: bytes, operations: dict[str, Any]) -> None:
    # With a thumbnail asked for, only the check of the declared input size stands in the way.
    with pytest.raises(PermanentJobError) as caught:
        await process(ctx, bomb, operations=operations)

    assert caught.value.kind == "image-too-large"


async def test_an_output_above_the_pixel_limit_is_refused_before_decoding(ctx: HandlerContext) -> None:
    with pytest.raises(PermanentJobError) as caught:
        await process(
            ctx, samples.marked_jpeg(1), operations={"resize": {"width": 10000, "height": 10000, "fit": "fill"}}
        )

    assert caught.value.kind == "image-too-large"


@pytest.mark.parametrize(
    "data",
    [
        samples.eps_sample(),
        samples.psd_sample(),
        samples.svg_sample(),
        samples.tiff_sample(),
        samples.bmp_sample(),
        samples.heif_like_sample(),
        b"just some text",
        b"",
    ],
    ids=["eps", "psd", "svg", "tiff", "bmp", "heif", "text", "empty"],
)
async def test_other_formats_are_refused(ctx: HandlerContext, data: bytes) -> None:
    with pytest.raises(PermanentJobError) as caught:
        await process(ctx, data)

    assert caught.value.kind == "unsupported-format"


def test_the_refused_samples_are_real_files_pillow_would_otherwise_open() -> None:
    # Without the allowlist Pillow opens these; the refusals above are the allowlist's doing.
    for data, fmt in ((samples.eps_sample(), "EPS"), (samples.psd_sample(), "PSD"), (samples.tiff_sample(), "TIFF")):
        assert Image.open(io.BytesIO(data)).format == fmt


async def test_a_truncated_jpeg_is_invalid(ctx: HandlerContext) -> None:
    with pytest.raises(PermanentJobError) as caught:
        await process(ctx, samples.truncated_jpeg())

    assert caught.value.kind == "invalid-image"


def test_a_jpeg_is_decoded_in_one_call_to_the_pixels_of_chunked_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    from functions.handlers.lib import image_ops

    data = samples.photo_12mp(orientation=1)
    recipe = image_ops.Recipe(name="thumb", width=800, height=600, format="webp")
    decode_calls: list[int] = []
    get_decoder = Image._getdecoder

    class CountingDecoder:
        def __init__(self, decoder: Any) -> None:
            self._decoder = decoder

        def __getattr__(self, name: str) -> Any:
            return getattr(self._decoder, name)

        def decode(self, buffer: bytes) -> tuple[int, int]:
            decode_calls.append(len(buffer))
            return self._decoder.decode(buffer)  # type: ignore[no-any-return]

    monkeypatch.setattr(Image, "_getdecoder", lambda *args: CountingDecoder(get_decoder(*args)))
    [whole] = image_ops.render(data, [recipe])
    assert len(decode_calls) == 1

    # Pillow's own way: MAXBLOCK bytes per decoder call.
    open_whole = image_ops._open

    def open_chunked(data: bytes, *, max_pixels: int) -> Any:
        image, input_format = open_whole(data, max_pixels=max_pixels)
        image.decodermaxblock = ImageFile.MAXBLOCK
        return image, input_format

    monkeypatch.setattr(image_ops, "_open", open_chunked)
    decode_calls.clear()
    [chunked] = image_ops.render(data, [recipe])
    assert len(decode_calls) > 10
    assert (whole.width, whole.height) == (chunked.width, chunked.height) == (800, 600)
    assert whole.data == chunked.data


async def test_another_tenants_upload_is_never_read(ctx: HandlerContext) -> None:
    theirs = upload(ctx, samples.marked_jpeg(1), tenant="t2")

    with pytest.raises(PermanentJobError) as caught:
        await run_handler(images, make_job({"imageId": "x", "sourceKey": theirs}, tenant=TENANT), ctx)

    assert caught.value.kind == "forbidden-key"
    assert (
        ctx.bucket.client.list_objects_v2(Bucket=ctx.bucket.bucket, Prefix=f"tenants/{TENANT}/jobs/")["KeyCount"] == 0
    )


async def test_a_missing_upload_is_a_permanent_error(ctx: HandlerContext) -> None:
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(images, make_job({"imageId": "x", "sourceKey": f"tenants/{TENANT}/uploads/none.jpg"}), ctx)

    assert caught.value.kind == "object-not-found"


async def test_sources_over_the_byte_cap_are_refused(ctx: HandlerContext, source: SourceServer) -> None:
    data = samples.marked_jpeg(1)
    by_url = ImagesRequest.model_validate({"imageId": "x", "sourceUrl": source.serve("/big.jpg", data)})
    by_key = ImagesRequest.model_validate({"imageId": "x", "sourceKey": upload(ctx, data)})

    job_ctx = ctx.for_job(make_job({"imageId": "x", "sourceUrl": "https://example.com/a.jpg"}))
    for request in (by_url, by_key):
        with pytest.raises(PermanentJobError) as caught:
            await images.fetch_source(request, ctx=job_ctx, max_bytes=len(data) - 1)
        assert caught.value.kind == "source-too-large"
        assert await images.fetch_source(request, ctx=job_ctx, max_bytes=len(data)) == data


@pytest.mark.parametrize("coding", CODINGS)
async def test_a_source_url_answering_a_compression_bomb_is_source_too_large(ctx: HandlerContext, coding: str) -> None:
    # A body of a few hundred bytes (or kilobytes) that decodes to 256 MiB: the cap counts decoded
    # bytes, and decoding stops at the cap instead of inflating the whole bomb first.
    answer = Reply(200, {"content-type": "image/jpeg", "content-encoding": coding}, body=bomb(coding))
    with http_receiver([answer]) as receiver, traced_peak() as peak:
        with pytest.raises(PermanentJobError) as caught:
            await run_handler(images, make_job({"imageId": "x", "sourceUrl": f"{receiver.url}/photo.jpg"}), ctx)

    assert caught.value.kind == "source-too-large"
    assert peak.bytes < images.MAX_SOURCE_BYTES + 16 * MiB, f"peak {peak.bytes / MiB:.0f} MiB"
    assert (
        ctx.bucket.client.list_objects_v2(Bucket=ctx.bucket.bucket, Prefix=f"tenants/{TENANT}/jobs/")["KeyCount"] == 0
    )


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, PermanentJobError), (403, PermanentJobError), (503, RetryableJobError), (429, RetryableJobError)],
)
async def test_http_errors_from_the_source(
    ctx: HandlerContext, source: SourceServer, status: int, error: type[Exception]
) -> None:
    url = source.serve(f"/status-{status}", b"nope", status=status, content_type="text/plain")

    with pytest.raises(error) as caught:
        await run_handler(images, make_job({"imageId": "x", "sourceUrl": url}), ctx)

    assert getattr(caught.value, "kind", None) == "source-unavailable"


async def test_a_loopback_url_is_refused_without_the_test_allowlist(s3: LocalS3, source: SourceServer) -> None:
    strict = _context(s3)
    try:
        with pytest.raises(PermanentJobError) as caught:
            await run_handler(images, make_job({"imageId": "x", "sourceUrl": source.serve("/a.jpg", b"x")}), strict)
    finally:
        await _closed(strict)

    assert caught.value.kind == "destination-not-allowed"


async def test_args_that_do_not_validate_are_permanent(ctx: HandlerContext) -> None:
    job = make_job({"imageId": "x", "sourceKey": f"tenants/{TENANT}/uploads/a.jpg"})
    broken = Job(**{**{name: getattr(job, name) for name in job.__dataclass_fields__}, "args": {"imageId": "x"}})

    with pytest.raises(PermanentJobError) as caught:
        await run_handler(images, broken, ctx)

    assert caught.value.kind == "invalid-args"


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    difference = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    return sum(ImageStat.Stat(difference).mean) / 3


async def test_warm_builds_the_storage_client_ahead_of_the_first_job(s3: LocalS3) -> None:
    fresh = HandlerContext(settings=make_settings("postgresql://unused.invalid/none", s3), machine_id="warm")

    await images.warm(fresh)

    assert "storage" in fresh.resources
