"""Turn a documents request into HTML, and HTML into a PDF with WeasyPrint.

Everything that can be done once per machine is done at import: the built-in templates are
compiled, and the page-size stylesheets are parsed on first use and kept. Per document we only
render the template and lay out the PDF, which is the part bare WeasyPrint does too.

Nothing here reads the filesystem on a document's behalf: the HTML has no base URL (relative
URLs resolve to nothing) and every sub-resource goes through GuardedURLFetcher.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import jinja2
from weasyprint import CSS, HTML

from functions.handlers.document_fetcher import GuardedURLFetcher
from functions.handlers.document_money import (
    compute_totals,
    format_date,
    format_datetime,
    format_money,
    format_percent,
    format_quantity,
)
from functions.handlers.document_sandbox import render_tenant_html
from functions.handlers.render_thread import RenderInterrupted
from shared.errors import PermanentJobError
from shared.schemas.documents import TEMPLATE_DATA, DocumentsRequest, InvoiceData, Table
from shared.settings import Settings

TEMPLATES_DIR: Final = Path(__file__).with_name("document_templates")
_EM_DASH: Final = "\u2014"


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedDocument:
    """A finished PDF, its page count, and the sub-resources that were left out (at most 20 listed)."""

    pdf: bytes
    pages: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def _money(amount: Decimal, currency: str) -> str:
    return format_money(amount, currency)


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


def _datetime(value: dt.date) -> str:
    return format_datetime(value)


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
        money=_money,
        qty=format_quantity,
        percent=format_percent,
        date=format_date,
        datetime=_datetime,
        cell=_cell,
    )
    env.globals["numeric_columns"] = _numeric_columns
    return env


_ENV: Final = _make_environment()
_TEMPLATES: Final = {name: _ENV.get_template(f"{name}.html") for name in TEMPLATE_DATA}


def build_html(request: DocumentsRequest) -> str:
    """The complete HTML of the document `request` asks for (styles included).

    Raises PermanentJobError (kind "template-error" or "document-too-large") for tenant HTML
    that cannot render.
    """
    if request.template is None:
        return render_tenant_html(request.html or "", request.data or {})
    doc = request.template_data()
    context: dict[str, Any] = {"doc": doc}
    if isinstance(doc, InvoiceData):  # receipts too
        context["totals"] = compute_totals(doc.items, tax_rate=doc.tax_rate, currency=doc.currency)
    return _TEMPLATES[request.template].render(context)


@lru_cache(maxsize=8)
def page_stylesheet(page_size: str, landscape: bool) -> CSS:
    """The stylesheet that sets the page size; parsed once per size and orientation.

    It is passed as a user stylesheet with `!important`, so it wins over any `@page { size }`
    in tenant HTML: the request's pageSize and landscape decide.
    """
    orientation = "landscape" if landscape else "portrait"
    return CSS(string=f"@page {{ size: {page_size} {orientation} !important; }}")


def render_pdf(html: str, *, page_size: str, landscape: bool, settings: Settings, deadline: float) -> RenderedDocument:
    """Lay out `html` and write it as a PDF.

    Raises PermanentJobError kind "render-error" if WeasyPrint fails on this input.
    RenderInterrupted (the deadline passed) goes through untouched.
    """
    fetcher = GuardedURLFetcher(settings, deadline=deadline)
    try:
        document = HTML(string=html, base_url=None, url_fetcher=fetcher).render(
            stylesheets=[page_stylesheet(page_size, landscape)]
        )
        pdf = document.write_pdf()
    except (RenderInterrupted, PermanentJobError):
        raise
    except Exception as exc:
        raise PermanentJobError(f"could not lay out the document: {type(exc).__name__}", kind="render-error") from exc
    finally:
        fetcher.close()
    return RenderedDocument(pdf=bytes(pdf), pages=len(document.pages), skipped=fetcher.skipped)


def render_document(request: DocumentsRequest, *, settings: Settings, deadline: float) -> RenderedDocument:
    """HTML then PDF for `request`; blocking, so run it in a thread. Raises as build_html and render_pdf do."""
    html = build_html(request)
    return render_pdf(
        html, page_size=request.page_size, landscape=request.landscape, settings=settings, deadline=deadline
    )
