"""The PDF's streams are deflated by our write_pdf finisher (document_render.deflate_streams)
at zlib level 6 instead of pydyf's 9: the same PDF objects, every stream inflating to the same
bytes, a size within a fraction of a percent."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pypdf.generic import IndirectObject, StreamObject
from weasyprint import HTML

from functions.handlers.lib import document_render
from functions.handlers.lib.document_render import deflate_streams, standalone_html
from shared.schemas.documents import DocumentsRequest
from tests.conftest import make_settings
from tests.functions.handlers.test_documents import INVOICE, REPORT
from tests.support import pdf


def _objects(data: bytes) -> dict[int, Any]:
    """Every object of the PDF by number (a cross-reference stream's /Size counts them)."""
    reader = pdf.reader(data)
    size = reader.trailer["/Size"]
    assert isinstance(size, int)
    return {number: reader.get_object(IndirectObject(number, 0, reader)) for number in range(1, size)}


@pytest.mark.parametrize(("template", "data"), [("invoice", INVOICE), ("report", REPORT)])
def test_streams_inflate_to_what_pydyf_itself_would_write(template: str, data: dict[str, Any]) -> None:
    html = standalone_html(DocumentsRequest.model_validate({"template": template, "data": data}))
    theirs = HTML(string=html).write_pdf()
    ours = HTML(string=html).write_pdf(finisher=deflate_streams)

    their_objects, our_objects = _objects(theirs), _objects(ours)
    assert our_objects.keys() == their_objects.keys()
    streams = 0
    for number, theirs_obj in their_objects.items():
        ours_obj = our_objects[number]
        assert type(ours_obj) is type(theirs_obj)
        if isinstance(theirs_obj, StreamObject) and theirs_obj.get("/Type") != "/XRef":  # XRef: byte offsets
            streams += 1
            assert ours_obj.get("/Filter") == theirs_obj.get("/Filter")
            assert ours_obj.get_data() == theirs_obj.get_data()
    assert streams >= 3  # the page's content and at least the fonts
    assert pdf.text(ours) == pdf.text(theirs)
    assert len(theirs) <= len(ours) <= len(theirs) * 1.01


def test_the_documents_function_writes_its_pdfs_through_the_finisher(monkeypatch: pytest.MonkeyPatch) -> None:
    request = DocumentsRequest.model_validate({"template": "invoice", "data": INVOICE})
    settings = make_settings("postgresql://unused.invalid/none")

    def rendered() -> bytes:
        return document_render.render_document(request, settings=settings, deadline=time.monotonic() + 60).pdf

    deflated = rendered()
    monkeypatch.setattr(document_render, "DEFLATE_LEVEL", 0)  # zlib's "stored": no compression at all
    stored = rendered()
    assert len(stored) > 2 * len(deflated)
    assert pdf.text(stored) == pdf.text(deflated)
