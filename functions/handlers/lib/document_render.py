"""Turn a documents request into HTML, and HTML into a PDF with WeasyPrint.

Everything that can be done once per machine is done once: the built-in templates are compiled
at import; their stylesheet and the page-size stylesheets are parsed on first use and kept; font
configurations (with Pango's loaded fonts) are pooled. Per document we only render the template
and lay out the PDF, which is the part bare WeasyPrint does too. `standalone_html` gives the same
document as one self-contained file, for comparing against bare WeasyPrint.

Nothing here reads the filesystem on a document's behalf: the HTML has no base URL (relative
URLs resolve to nothing) and every sub-resource goes through GuardedURLFetcher.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import jinja2
import pydyf  # WeasyPrint's PDF writer: what a write_pdf finisher is handed
from markupsafe import Markup
from weasyprint import CSS, HTML
from weasyprint.text.fonts import FontConfiguration

from functions.handlers.lib.document_fetcher import GuardedURLFetcher
from functions.handlers.lib.document_money import (
    compute_totals,
    format_date,
    format_datetime,
    format_money,
    format_percent,
    format_quantity,
)
from functions.handlers.lib.document_sandbox import render_tenant_html
from functions.handlers.lib.render_thread import RenderInterrupted
from shared.errors import PermanentJobError
from shared.schemas.documents import TEMPLATE_DATA, DocumentsRequest, InvoiceData, Table
from shared.settings import Settings

TEMPLATES_DIR: Final = Path(__file__).with_name("document_templates")
_CSS_TEXT: Final = (TEMPLATES_DIR / "documents.css").read_text(encoding="utf-8")
_EM_DASH: Final = "\u2014"
# pydyf deflates every PDF stream at zlib level 9. Level 6 (zlib's default) inflates back to the
# same bytes; on the one-page invoice the PDF grows by 0.16% (55,094 -> 55,181 bytes) and deflating
# its streams (the subset fonts, ~120 KB) takes 4.5 ms instead of 10.6 (CPU time, measured).
DEFLATE_LEVEL: Final = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedDocument:
    """A finished PDF, its page count, and the sub-resources that were left out (at most 20 listed)."""

    pdf: bytes
    pages: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def _cell(value: Any) -> str:
    # Report table cells: numbers grouped ("1,234.5"), empty cells as a dash.
    if value is None:
        return _EM_DASH
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,}"  # the shortest form that reads back as the same number, as sent
    return str(value)


def _numeric_columns(table: Table) -> list[bool]:
    # A column whose filled cells are all numbers is right-aligned, header and empty cells included.
    return [
        any(row[i] is not None for row in table.rows)
        and all(row[i] is None or not isinstance(row[i], str) for row in table.rows)
        for i in range(len(table.columns))
    ]


def _make_environment() -> jinja2.Environment:
    # Our own templates are trusted, so no sandbox; the data in them is the tenant's, so autoescape.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(
        money=format_money,
        qty=format_quantity,
        percent=format_percent,
        date=format_date,
        datetime=format_datetime,
        cell=_cell,
    )
    env.globals["numeric_columns"] = _numeric_columns
    return env


_ENV: Final = _make_environment()
_TEMPLATES: Final = {name: _ENV.get_template(f"{name}.html") for name in TEMPLATE_DATA}


def build_html(request: DocumentsRequest, *, standalone: bool = False) -> str:
    """The HTML of the document `request` asks for.

    Built-in templates leave their styles out (they are applied as a stylesheet parsed once)
    unless `standalone` is set. Raises PermanentJobError (kind "template-error" or
    "document-too-large") for tenant HTML that cannot render.
    """
    if request.template is None:
        return render_tenant_html(request.html or "", request.data or {})
    doc = request.template_data()
    css = _CSS_TEXT + _page_css(request.page_size, request.landscape) if standalone else None
    # Our own stylesheet text, no tenant input in it: safe to mark as markup.
    context: dict[str, Any] = {"doc": doc, "standalone_css": Markup(css) if css else None}  # noqa: S704
    if isinstance(doc, InvoiceData):  # receipts too
        context["totals"] = compute_totals(doc.items, tax_rate=doc.tax_rate, currency=doc.currency)
    return _TEMPLATES[request.template].render(context)


def standalone_html(request: DocumentsRequest) -> str:
    """One self-contained HTML file (styles inline) that bare WeasyPrint turns into the same PDF.

    The benchmark's reference: `HTML(string=standalone_html(r)).write_pdf()`.
    """
    return build_html(request, standalone=True)


def _page_css(page_size: str, landscape: bool, *, important: bool = False) -> str:
    orientation = "landscape" if landscape else "portrait"
    return f"@page {{ size: {page_size} {orientation}{' !important' if important else ''}; }}"


@lru_cache(maxsize=8)
def page_stylesheet(page_size: str, landscape: bool) -> CSS:
    """The stylesheet that sets the page size; parsed once per size and orientation.

    WeasyPrint applies extra stylesheets as user styles, below the document's own; `!important`
    lifts this one above any `@page { size }` in tenant HTML, so the request's pageSize and
    landscape decide.
    """
    return CSS(string=_page_css(page_size, landscape, important=True))


@lru_cache(maxsize=1)
def builtin_stylesheet() -> CSS:
    """documents.css, parsed once per machine (parsing it is a sizeable share of a one-page render)."""
    return CSS(string=_CSS_TEXT)


class _FontConfigPool:
    """FontConfigurations for the built-in templates, each used by one render at a time.

    Pango keeps loaded fonts per configuration, so reusing one saves about a third of a one-page
    render. Tenant HTML never gets one of these: its @font-face rules would stay registered and
    reach other tenants' documents. A configuration whose render failed or was interrupted is
    dropped rather than reused.
    """

    def __init__(self) -> None:
        self._idle: list[FontConfiguration] = []
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[FontConfiguration]:
        with self._lock:
            font_config = self._idle.pop() if self._idle else None
        if font_config is None:
            font_config = FontConfiguration()
        yield font_config  # an exception here skips the return to the pool
        with self._lock:
            self._idle.append(font_config)


_FONT_CONFIGS: Final = _FontConfigPool()


def render_pdf(
    html: str,
    *,
    stylesheets: list[CSS],
    font_config: FontConfiguration | None,
    settings: Settings,
    deadline: float,
) -> RenderedDocument:
    """Lay out `html` with `stylesheets` and write it as a PDF.

    Raises PermanentJobError kind "render-error" if WeasyPrint fails on this input.
    RenderInterrupted (the deadline passed) goes through untouched.
    """
    fetcher = GuardedURLFetcher(settings, deadline=deadline)
    try:
        document = HTML(string=html, base_url=None, url_fetcher=fetcher).render(
            stylesheets=stylesheets, font_config=font_config
        )
        pdf = document.write_pdf(finisher=deflate_streams)
    except (RenderInterrupted, PermanentJobError):
        raise
    except Exception as exc:
        raise PermanentJobError(f"could not lay out the document: {type(exc).__name__}", kind="render-error") from exc
    finally:
        fetcher.close()
    return RenderedDocument(pdf=bytes(pdf), pages=len(document.pages), skipped=fetcher.skipped)


def deflate_streams(_document: object, pdf: pydyf.PDF) -> None:
    """A `write_pdf` finisher: deflate, at DEFLATE_LEVEL, every stream pydyf was going to deflate.

    Each such stream is handed back to pydyf already deflated and marked `/FlateDecode`, which is
    what pydyf itself writes; the object stream and cross-reference stream pydyf makes while
    writing are small and keep its own level.
    """
    for obj in pdf.objects:
        if isinstance(obj, pydyf.Stream) and obj.compress:
            # The bytes pydyf would deflate: its items joined by newlines (pydyf.Stream.data).
            raw = b"\n".join(pydyf._to_bytes(item) for item in obj.stream)
            obj.stream = [zlib.compress(raw, DEFLATE_LEVEL)]
            obj.compress = False
            obj.extra["Filter"] = "/FlateDecode"


def render_document(request: DocumentsRequest, *, settings: Settings, deadline: float) -> RenderedDocument:
    """HTML then PDF for `request`; blocking, so run it in a thread. Raises as build_html and render_pdf do."""
    html = build_html(request)
    page = page_stylesheet(request.page_size, request.landscape)
    if request.template is None:
        # A fresh font configuration, as bare WeasyPrint would use: see _FontConfigPool.
        return render_pdf(html, stylesheets=[page], font_config=None, settings=settings, deadline=deadline)
    with _FONT_CONFIGS.borrow() as font_config:
        return render_pdf(
            html,
            stylesheets=[builtin_stylesheet(), page],
            font_config=font_config,
            settings=settings,
            deadline=deadline,
        )
