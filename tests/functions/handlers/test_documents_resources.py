"""What a document may load: nothing from the filesystem, and the network only through the outbound guard.

Each file-based probe is also rendered with bare WeasyPrint (its default fetcher allows `file:`)
as a control, to show the probe would catch the leak if our fetcher let it through.
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from weasyprint import HTML

from functions.handlers import documents
from functions.handlers.base import HandlerContext
from functions.handlers.lib import document_fetcher
from infra.local.s3 import LocalS3
from tests.functions.handlers.test_documents import context, make_job
from tests.support import pdf
from tests.support.bombs import CODINGS, MiB, bomb, traced_peak
from tests.support.jobs import run_handler, stored_bytes
from tests.support.receivers import Reply, http_receiver

CSS_SECRET = "LEAKEDCSSSECRET"
FILE_SECRET = b"LEAKED-FILE-SECRET root:x:0:0:root:/root:/bin/bash\n"


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files a document must never be able to read."""
    base = tmp_path_factory.mktemp("secrets")
    (base / "secret.css").write_text(f'body::after {{ content: "{CSS_SECRET}"; }}')
    (base / "secret.txt").write_bytes(FILE_SECRET)
    (base / "pixel.png").write_bytes(png_bytes())
    return {path.name: path for path in base.iterdir()}


@pytest.fixture
async def ctx(s3: LocalS3) -> AsyncIterator[HandlerContext]:
    yield context(s3)


@pytest.fixture
async def loopback_ctx(s3: LocalS3) -> AsyncIterator[HandlerContext]:
    """Loopback allowed (tests only), so a local HTTP server can stand in for a public one."""
    yield context(s3, outbound_allowlist=["127.0.0.1"])


async def render_html(ctx: HandlerContext, html: str) -> tuple[dict[str, Any], bytes]:
    result = await run_handler(documents, make_job({"html": html}), ctx)
    return result, stored_bytes(ctx, result["outputs"][0]["key"])


def bare(html: str) -> bytes:
    """The same HTML through WeasyPrint's default fetcher (which reads files): the control."""
    return HTML(string=html).write_pdf()  # type: ignore[no-any-return]


def reasons(result: dict[str, Any]) -> dict[str, str]:
    return {entry["url"]: entry["reason"] for entry in result.get("skippedResources", [])}


# ---- the filesystem ----------------------------------------------------------------------------


async def test_file_image_is_refused(ctx: HandlerContext, secrets: dict[str, Path]) -> None:
    url = secrets["pixel.png"].as_uri()
    html = f'<p>before</p><img src="{url}"><p>after</p>'
    assert pdf.image_count(bare(html)) == 1  # control: bare WeasyPrint embeds the file
    result, data = await render_html(ctx, html)
    assert pdf.image_count(data) == 0
    assert reasons(result) == {url: "scheme 'file' not allowed"}
    assert "before" in pdf.text(data) and "after" in pdf.text(data)


def css_shown(data: bytes) -> bool:
    return CSS_SECRET in pdf.text(data)


def file_attached(data: bytes) -> bool:
    return FILE_SECRET in pdf.embedded_files(data)


@pytest.mark.parametrize(
    ("secret", "template", "leaked"),
    [
        ("secret.css", '<link rel="stylesheet" href="{url}"><p>body</p>', css_shown),
        ("secret.css", '<style>@import url("{url}");</style><p>body</p>', css_shown),
        # GHSA-35jj-wx47-4w8r: attachments embed the fetched body whole.
        ("secret.txt", '<link rel="attachment" href="{url}"><p>body</p>', file_attached),
        ("secret.txt", '<p><a rel="attachment" href="{url}">the file</a></p>', file_attached),
    ],
    ids=["stylesheet-link", "stylesheet-import", "attachment-link", "attachment-anchor"],
)
async def test_file_stylesheets_and_attachments_are_refused(
    ctx: HandlerContext, secrets: dict[str, Path], secret: str, template: str, leaked: Callable[[bytes], bool]
) -> None:
    html = template.format(url=secrets[secret].as_uri())
    assert leaked(bare(html))  # control: bare WeasyPrint reads the file
    result, data = await render_html(ctx, html)
    assert CSS_SECRET not in pdf.text(data)
    assert pdf.embedded_files(data) == []
    assert b"LEAKED-FILE-SECRET" not in data
    assert list(reasons(result).values()) == ["scheme 'file' not allowed"]


async def test_svg_image_from_a_file_is_refused(ctx: HandlerContext, secrets: dict[str, Path]) -> None:
    url = secrets["pixel.png"].as_uri()
    html = f'<svg width="20" height="20"><image href="{url}" width="20" height="20"/></svg>'
    assert pdf.image_count(bare(html)) == 1  # control
    result, data = await render_html(ctx, html)
    assert pdf.image_count(data) == 0
    assert url in reasons(result)


async def test_etc_passwd_does_not_leak(ctx: HandlerContext) -> None:
    html = (
        '<img src="file:///etc/passwd"><link rel="stylesheet" href="file:///etc/passwd">'
        '<link rel="attachment" href="file:///etc/passwd"><p>visible</p>'
    )
    result, data = await render_html(ctx, html)
    text = pdf.text(data)
    assert "visible" in text
    assert "root:" not in text and b"root:" not in data
    assert pdf.embedded_files(data) == []
    assert set(reasons(result)) == {"file:///etc/passwd"}


async def test_relative_urls_do_not_resolve_to_the_filesystem(ctx: HandlerContext, secrets: dict[str, Path]) -> None:
    relative = secrets["pixel.png"]
    result, data = await render_html(ctx, f'<img src="{relative}"><img src="../../{relative}"><p>x</p>')
    assert pdf.image_count(data) == 0
    assert "skippedResources" not in result  # with no base URL there is nothing to fetch at all


async def test_base_href_cannot_point_at_the_filesystem(ctx: HandlerContext, secrets: dict[str, Path]) -> None:
    folder = secrets["pixel.png"].parent.as_uri()
    result, data = await render_html(ctx, f'<base href="{folder}/"><img src="pixel.png"><p>x</p>')
    assert pdf.image_count(data) == 0
    assert list(reasons(result).values()) == ["scheme 'file' not allowed"]


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "gopher://example.com/a", "jar:file:///x!/y.png"])
async def test_other_schemes_are_refused(ctx: HandlerContext, url: str) -> None:
    result, data = await render_html(ctx, f'<img src="{url}"><p>x</p>')
    assert pdf.image_count(data) == 0
    assert url in reasons(result)


async def test_data_urls_are_allowed(ctx: HandlerContext) -> None:
    encoded = base64.b64encode(png_bytes()).decode()
    result, data = await render_html(ctx, f'<img src="data:image/png;base64,{encoded}">')
    assert pdf.image_count(data) == 1
    assert "skippedResources" not in result


# ---- the network -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://10.0.0.1/x.png",
        "http://metadata.google.internal/",
    ],
)
async def test_internal_destinations_are_refused(ctx: HandlerContext, url: str) -> None:
    html = f'<div style="background: url({url}); height: 10px"></div><img src="{url}"><p>x</p>'
    result, data = await render_html(ctx, html)
    assert pdf.image_count(data) == 0
    assert set(reasons(result).values()) == {"destination-not-allowed"}


async def test_public_style_image_is_fetched_through_the_guard(loopback_ctx: HandlerContext) -> None:
    with http_receiver([Reply(200, {"Content-Type": "image/png"}, body=png_bytes())]) as receiver:
        result, data = await render_html(loopback_ctx, f'<img src="{receiver.url}/logo.png"><p>x</p>')
    assert pdf.image_count(data) == 1
    assert [(r.method, r.path) for r in receiver.requests] == [("GET", "/logo.png")]
    assert "skippedResources" not in result


async def test_redirect_to_an_internal_address_is_refused(loopback_ctx: HandlerContext) -> None:
    # CVE-2025-68616: the redirect target must be checked like the first URL.
    redirect = Reply(302, {"Location": "http://169.254.169.254/latest/meta-data/"})
    with http_receiver([redirect]) as receiver:
        url = f"{receiver.url}/logo.png"
        result, data = await render_html(loopback_ctx, f'<img src="{url}"><p>x</p>')
    assert pdf.image_count(data) == 0
    assert reasons(result) == {url: "destination-not-allowed"}


@pytest.mark.parametrize("coding", CODINGS)
async def test_compression_bombs_are_left_out_without_inflating(loopback_ctx: HandlerContext, coding: str) -> None:
    # WeasyPrint's fetcher is the synchronous path of the outbound client: an image and a
    # stylesheet that each decode to 256 MiB stop at the per-resource cap, in bounded steps.
    replies = [
        Reply(200, {"Content-Type": content_type, "Content-Encoding": coding}, body=bomb(coding))
        for content_type in ("image/png", "text/css")
    ]
    with http_receiver(replies) as receiver, traced_peak() as peak:
        image, sheet = f"{receiver.url}/logo.png", f"{receiver.url}/style.css"
        html = f'<link rel="stylesheet" href="{sheet}"><img src="{image}"><p>still rendered</p>'
        result, data = await render_html(loopback_ctx, html)
    assert "still rendered" in pdf.text(data)
    assert reasons(result) == {image: "response-too-large", sheet: "response-too-large"}
    assert peak.bytes < document_fetcher.MAX_RESOURCE_BYTES + 32 * MiB, f"peak {peak.bytes / MiB:.0f} MiB"


async def test_http_errors_leave_the_resource_out(loopback_ctx: HandlerContext) -> None:
    with http_receiver([(404, {}, 0.0)]) as receiver:
        url = f"{receiver.url}/missing.png"
        result, data = await render_html(loopback_ctx, f'<img src="{url}"><p>still rendered</p>')
    assert "still rendered" in pdf.text(data)
    assert reasons(result) == {url: "HTTP 404"}
