"""The documents function end to end: `run(job, ctx)` with the moto S3 server; each PDF is
downloaded from storage and read back with pypdf (pages, text, page size, images, attachments)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from functions.handlers import documents
from functions.handlers.base import HandlerContext
from infra.local.s3 import LocalS3
from shared.db.models import Job
from shared.errors import PermanentJobError
from shared.schemas.documents import DocumentsRequest
from tests.conftest import make_settings
from tests.support import pdf
from tests.support.jobs import held_job, run_handler, stored_bytes

TENANT = "t-docs"

INVOICE: dict[str, Any] = {
    "number": "INV-2025-0042",
    "date": "2025-03-01",
    "dueDate": "2025-03-31",
    "seller": {"name": "Northwind Studio LLC", "address": ["500 Market Street", "San Francisco, CA 94105"]},
    "customer": {"name": "Contoso Ltd", "address": ["1 Harbor Way", "Boston, MA 02110"], "email": "ap@contoso.example"},
    "items": [
        {"description": "Design workshop", "quantity": 2, "unitPrice": 10.50},
        {"description": "Illustrations", "quantity": 3, "unitPrice": 5},
    ],
    "taxRate": 20,
    "notes": "Thank you for your business.",
}
RECEIPT: dict[str, Any] = {**INVOICE, "number": "RCT-7", "paidAt": "2025-03-04T15:20:00Z", "paymentMethod": "Visa 4242"}
REPORT: dict[str, Any] = {
    "title": "Quarterly Operations Review",
    "subtitle": "Q1 2025",
    "author": "Dana Whitfield",
    "sections": [
        {"heading": "Summary", "body": ["Orders grew 18 percent."]},
        {
            "heading": "By region",
            "body": "Europe is fastest.",
            "table": {"columns": ["Region", "Orders"], "rows": [["Europe", 9311], ["Other", None]]},
        },
    ],
}
LETTER: dict[str, Any] = {
    "sender": {"name": "Northwind Studio LLC", "address": ["500 Market Street"], "email": "hello@northwind.example"},
    "recipient": {"name": "Ms. Priya Raman", "address": ["1 Harbor Way", "Boston, MA 02110"]},
    "date": "2025-03-05",
    "subject": "Proposal for the website refresh",
    "body": ["Dear Ms. Raman,", "Thank you for meeting with us last week."],
    "closing": "Kind regards,",
}


def make_job(body: dict[str, Any], *, tenant: str = TENANT) -> Job:
    """A job as the ingress would store it: args are `function_args()` of the validated body."""
    return held_job(queue="documents", tenant_id=tenant, args=DocumentsRequest.model_validate(body).function_args())


def context(s3: LocalS3, **overrides: Any) -> HandlerContext:
    ctx = HandlerContext(settings=make_settings("postgresql://unused.invalid/none", s3, **overrides), machine_id="m")
    ctx.bucket.ensure_bucket()
    return ctx


@pytest.fixture
async def ctx(s3: LocalS3) -> AsyncIterator[HandlerContext]:
    yield context(s3)


async def render(ctx: HandlerContext, **body: Any) -> tuple[dict[str, Any], bytes]:
    """Run the function; its result and the PDF as stored."""
    job = make_job(body)
    result = await run_handler(documents, job, ctx)
    (output,) = result["outputs"]
    assert job.claim_token is not None
    assert output["key"] == f"tenants/{TENANT}/jobs/{job.id}/{job.claim_token.hex}/{output['name']}"
    data = stored_bytes(ctx, output["key"])
    assert output["size"] == len(data)
    assert output["contentType"] == "application/pdf"
    assert data.startswith(b"%PDF-")
    assert result["pages"] == pdf.page_count(data)
    return result, data


# ---- built-in templates ------------------------------------------------------------------------


async def test_invoice_totals_are_computed(ctx: HandlerContext) -> None:
    result, data = await render(ctx, template="invoice", data=INVOICE, filename="inv-42.pdf")
    assert result["outputs"][0]["name"] == "inv-42.pdf"
    assert result["pages"] == 1
    text = pdf.text(data)
    # 2 x 10.50 + 3 x 5 = 36.00; 20% tax = 7.20; total 43.20
    for expected in ("INV-2025-0042", "$10.50", "$21.00", "$5.00", "$15.00", "$36.00", "Tax (20%)", "$7.20", "$43.20"):
        assert expected in text, expected
    for expected in ("Northwind Studio LLC", "Contoso Ltd", "ap@contoso.example", "March 1, 2025", "March 31, 2025"):
        assert expected in text, expected
    assert "Page 1 of 1" in text
    assert "skippedResources" not in result


async def test_invoice_in_a_zero_decimal_currency_rounds_to_whole_units(ctx: HandlerContext) -> None:
    data_in = {**INVOICE, "currency": "JPY", "items": [{"description": "Tea", "quantity": 3, "unitPrice": 333.5}]}
    _, data = await render(ctx, template="invoice", data=data_in)
    text = pdf.text(data)
    # 3 x 333.5 = 1,000.5 -> ¥1,001 (half up); tax 20% of 1,001 = 200.2 -> ¥200; total ¥1,201
    assert "¥1,001" in text and "¥200" in text and "¥1,201" in text, text


async def test_receipt_shows_payment(ctx: HandlerContext) -> None:
    _, data = await render(ctx, template="receipt", data=RECEIPT)
    text = pdf.text(data)
    for expected in ("Receipt", "RCT-7", "Paid", "March 4, 2025, 15:20 UTC", "Visa 4242", "$43.20"):
        assert expected in text, expected


async def test_report_renders_sections_and_table(ctx: HandlerContext) -> None:
    _, data = await render(ctx, template="report", data=REPORT)
    text = pdf.text(data)
    for expected in ("Quarterly Operations Review", "Q1 2025", "Dana Whitfield", "Summary", "By region", "9,311"):
        assert expected in text, expected


async def test_long_report_breaks_across_numbered_pages(ctx: HandlerContext) -> None:
    rows = [[f"Row {i}", i * 1000] for i in range(120)]
    long = {**REPORT, "sections": [{"heading": "Everything", "table": {"columns": ["Name", "Value"], "rows": rows}}]}
    result, data = await render(ctx, template="report", data=long)
    assert result["pages"] >= 2
    text = pdf.text(data)
    assert f"Page 1 of {result['pages']}" in text and f"Page {result['pages']} of {result['pages']}" in text
    assert "Row 119" in text and "119,000" in text


async def test_letter_renders(ctx: HandlerContext) -> None:
    _, data = await render(ctx, template="letter", data=LETTER)
    text = pdf.text(data)
    for expected in ("Priya Raman", "Proposal for the website refresh", "Kind regards,", "March 5, 2025"):
        assert expected in text, expected
    assert text.count("Northwind Studio LLC") >= 2  # letterhead, and the signature defaults to the sender


async def test_tenant_data_in_built_in_templates_is_escaped(ctx: HandlerContext) -> None:
    evil = copy.deepcopy(INVOICE)
    evil["customer"]["name"] = '<img src="file:///etc/passwd"><b>Bold</b>'
    _, data = await render(ctx, template="invoice", data=evil)
    assert '<imgsrc="file:///etc/passwd"><b>Bold</b>' in pdf.compact_text(data)
    assert pdf.image_count(data) == 0


# ---- page size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page_size", "landscape", "expected"),
    [
        ("A4", False, pdf.A4),
        ("Letter", False, pdf.LETTER),
        ("A4", True, (pdf.A4[1], pdf.A4[0])),
        ("Letter", True, (pdf.LETTER[1], pdf.LETTER[0])),
    ],
)
async def test_page_size_and_orientation(
    ctx: HandlerContext, page_size: str, landscape: bool, expected: tuple[float, float]
) -> None:
    _, data = await render(ctx, template="letter", data=LETTER, pageSize=page_size, landscape=landscape)
    assert pdf.page_size(data) == pytest.approx(expected, abs=0.5)


async def test_request_page_size_wins_over_tenant_css(ctx: HandlerContext) -> None:
    html = "<style>@page { size: A5 portrait }</style><p>Hello</p>"
    _, data = await render(ctx, html=html, pageSize="Letter", landscape=True)
    assert pdf.page_size(data) == pytest.approx((pdf.LETTER[1], pdf.LETTER[0]), abs=0.5)


# ---- tenant HTML -------------------------------------------------------------------------------


async def test_tenant_html_renders_data_and_escapes_it(ctx: HandlerContext) -> None:
    html = """<h1>Hello {{ data.name }}</h1>
    <ul>{% for item in data['items'] %}<li>{{ item.label }}: {{ item.price | money('EUR') }}</li>{% endfor %}</ul>
    <p>{{ data.script }}</p>"""
    body = {
        "name": "Ada",
        "items": [{"label": "Tea", "price": 3.5}, {"label": "Cake", "price": 1234}],
        "script": "<script>alert('x')</script>",
    }
    result, data = await render(ctx, html=html, data=body)
    text = pdf.text(data)
    assert "Hello Ada" in text
    assert "Tea: €3.50" in text and "Cake: €1,234.00" in text
    # Escaped, so the markup is printed as text instead of becoming an element.
    assert "<script>alert('x')</script>" in text
    assert result["pages"] == 1


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''|attr('__class__') }}",
        "{{ data.__class__.__subclasses__() }}",
        "{{ '{0.__class__}'.format(data) }}",
    ],
)
async def test_sandbox_escapes_are_template_errors(ctx: HandlerContext, source: str) -> None:
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(documents, make_job({"html": source, "data": {"a": 1}}), ctx)
    assert caught.value.kind == "template-error"
    assert "unsafe" in str(caught.value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("<p>{{ nothing_here }}</p>", "'nothing_here' is undefined"),
        ("<p>{{ data.missing }}</p>", "has no attribute 'missing'"),
        ("{% for x in %}", "line 1"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% include 'base.html' %}", "no loader"),
    ],
)
async def test_broken_templates_fail_cleanly(ctx: HandlerContext, source: str, message: str) -> None:
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(documents, make_job({"html": source}), ctx)
    assert caught.value.kind == "template-error"
    assert message in str(caught.value)


async def test_optional_fields_work_with_is_defined(ctx: HandlerContext) -> None:
    html = "<p>{% if data.notes is defined %}{{ data.notes }}{% else %}no notes{% endif %}</p>"
    _, data = await render(ctx, html=html, data={})
    assert "no notes" in pdf.text(data)


async def test_output_size_is_capped(ctx: HandlerContext) -> None:
    source = "{% for i in range(100000) %}{% for j in range(100) %}xxxxxxxxxx{% endfor %}{% endfor %}"
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(documents, make_job({"html": source}), ctx)
    assert caught.value.kind == "document-too-large"


async def test_invalid_stored_args_are_discarded(ctx: HandlerContext) -> None:
    job = make_job({"template": "invoice", "data": INVOICE})
    broken = Job(**{**{name: getattr(job, name) for name in job.__dataclass_fields__}, "args": {"template": "memo"}})
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(documents, broken, ctx)
    assert caught.value.kind == "invalid-args"


# ---- render deadline ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        # 100,000 paragraphs take far longer than 1.5 s to lay out.
        pytest.param("{% for i in range(100000) %}<p>paragraph {{ i }}</p>{% endfor %}", id="layout"),
        # 10^10 empty loop turns: the template itself runs past the deadline.
        pytest.param(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done", id="template-loop"
        ),
    ],
)
async def test_a_render_past_its_deadline_is_stopped(s3: LocalS3, source: str) -> None:
    # WORKER_DOCUMENTS_TIMEOUT 2 s gives the render 1.5 s.
    ctx = context(s3, worker_documents_timeout=2000)
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(documents, make_job({"html": source}), ctx)
    assert caught.value.kind == "render-timeout"


# ---- warm-up and appearance -------------------------------------------------------------------


async def test_warm_renders_without_storing_anything(ctx: HandlerContext) -> None:
    await documents.warm(ctx)
    listed = ctx.bucket.client.list_objects_v2(Bucket=ctx.bucket.bucket)
    assert listed.get("KeyCount", 0) == 0


async def test_invoice_preview_png(ctx: HandlerContext, tmp_path: Path) -> None:
    """Renders the invoice's first page to PNG where poppler is installed (look at it when changing the CSS)."""
    _, data = await render(ctx, template="invoice", data=INVOICE)
    png = pdf.to_png(data, tmp_path)
    if png is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    with Image.open(png) as image:
        gray = image.convert("L")
        width, height = gray.size
        assert abs(width / height - pdf.A4[0] / pdf.A4[1]) < 0.01
        # Ink in the header band (seller and title) and in the items band, and a white margin.
        assert darkest(gray.crop((0, 0, width, height // 6))) < 100
        assert darkest(gray.crop((0, height // 3, width, height // 2))) < 100
        assert darkest(gray.crop((0, 0, width // 20, height))) == 255


def darkest(image: Image.Image) -> int:
    low, _ = image.getextrema()
    assert isinstance(low, int)
    return low
