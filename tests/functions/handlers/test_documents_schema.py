"""DocumentsRequest validation: what the ingress turns into a 422, with the path of each mistake."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from shared.schemas.documents import MAX_HTML_BYTES, DocumentsRequest, InvoiceData, ReceiptData
from tests.functions.handlers.test_documents import INVOICE, LETTER, RECEIPT, REPORT


def validate(body: dict[str, Any]) -> DocumentsRequest:
    # As the ingress does it: from the JSON text.
    return DocumentsRequest.model_validate_json(json.dumps(body))


def errors(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        validate(body)
    return {".".join(str(part) for part in error["loc"]): error["msg"] for error in caught.value.errors()}


def with_item(**changes: Any) -> dict[str, Any]:
    items = [dict(INVOICE["items"][0]), {**INVOICE["items"][1], **changes}]
    return {"template": "invoice", "data": {**INVOICE, "items": items}}


@pytest.mark.parametrize(
    ("template", "data"), [("invoice", INVOICE), ("receipt", RECEIPT), ("report", REPORT), ("letter", LETTER)]
)
def test_each_template_accepts_its_example(template: str, data: dict[str, Any]) -> None:
    request = validate({"template": template, "data": data})
    assert request.template_data() is not None


def test_stored_args_keep_what_the_client_sent() -> None:
    args = validate({"template": "invoice", "data": INVOICE, "tenantId": "t1"}).function_args()
    assert args == {
        "template": "invoice",
        "data": INVOICE,
        "filename": "document.pdf",
        "pageSize": "A4",
        "landscape": False,
    }
    # ...and validate again in the handler to the same typed data.
    again = DocumentsRequest.model_validate(args).template_data()
    assert isinstance(again, InvoiceData)
    assert again.items[0].unit_price == Decimal("10.5")
    assert again.tax_rate == Decimal(20)


def test_money_must_be_a_number() -> None:
    assert errors(with_item(unitPrice="5.00")) == {"data.items.1.unitPrice": "Value error, must be a number"}


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"unitPrice": 1.23456}, "data.items.1.unitPrice"),
        ({"unitPrice": 1e15}, "data.items.1.unitPrice"),
        ({"quantity": 0}, "data.items.1.quantity"),
        ({"quantity": True}, "data.items.1.quantity"),
        ({"description": ""}, "data.items.1.description"),
        ({"total": 15}, "data.items.1.total"),
    ],
)
def test_bad_line_items_name_their_field(changes: dict[str, Any], path: str) -> None:
    assert set(errors(with_item(**changes))) == {path}


def test_totals_cannot_be_supplied() -> None:
    assert set(errors({"template": "invoice", "data": {**INVOICE, "total": 1}})) == {"data.total"}


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"date": "03/01/2025"}, "data.date"),
        ({"date": 1740787200}, "data.date"),
        ({"date": "2025-02-30"}, "data.date"),
        ({"dueDate": "2025-02-01"}, "data"),  # before the invoice date
        ({"currency": "usd"}, "data.currency"),
        ({"currency": "XYZ"}, "data.currency"),
        ({"taxRate": 120}, "data.taxRate"),
        ({"items": []}, "data.items"),
        ({"seller": {"name": "A", "vatId": "x"}}, "data.seller.vatId"),
        ({"customer": {"name": "B", "email": "not-an-address"}}, "data.customer.email"),
    ],
)
def test_bad_invoice_fields_name_their_path(changes: dict[str, Any], path: str) -> None:
    assert set(errors({"template": "invoice", "data": {**INVOICE, **changes}})) == {path}


def test_currency_defaults_to_usd() -> None:
    data = {key: value for key, value in INVOICE.items() if key != "currency"}
    parsed = validate({"template": "invoice", "data": data}).template_data()
    assert isinstance(parsed, InvoiceData)
    assert parsed.currency == "USD"


@pytest.mark.parametrize(("paid_at", "kind"), [("2025-03-04", "date"), ("2025-03-04T15:20:00Z", "datetime")])
def test_receipt_paid_at_is_a_date_or_a_date_time(paid_at: str, kind: str) -> None:
    parsed = validate({"template": "receipt", "data": {**RECEIPT, "paidAt": paid_at}}).template_data()
    assert isinstance(parsed, ReceiptData)
    assert type(parsed.paid_at).__name__ == kind


def test_receipt_needs_paid_at() -> None:
    data = {key: value for key, value in RECEIPT.items() if key != "paidAt"}
    assert set(errors({"template": "receipt", "data": data})) == {"data.paidAt"}


def test_report_table_rows_must_match_columns() -> None:
    table = {"columns": ["a", "b"], "rows": [["x", 1], ["y"]]}
    data = {**REPORT, "sections": [{"heading": "h", "table": table}]}
    assert set(errors({"template": "report", "data": data})) == {"data.sections.0.table"}


def test_report_cells_are_text_numbers_or_null() -> None:
    table = {"columns": ["a"], "rows": [[True]]}
    data = {**REPORT, "sections": [{"heading": "h", "table": table}]}
    assert set(errors({"template": "report", "data": data})) == {"data.sections.0.table.rows.0.0"}


def test_letter_body_may_be_one_string() -> None:
    request = validate({"template": "letter", "data": {**LETTER, "body": "One paragraph."}})
    assert request.template_data().body == ["One paragraph."]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        {"data": {}},
        {"template": "invoice", "html": "<p>x</p>", "data": INVOICE},
        {"template": "invoice"},
        {"template": "memo", "data": {}},
    ],
)
def test_exactly_one_source(body: dict[str, Any]) -> None:
    assert errors(body)


def test_html_is_limited_to_one_mebibyte_of_utf8() -> None:
    assert validate({"html": "x" * MAX_HTML_BYTES}).html
    # Fewer characters than the limit, more bytes.
    assert set(errors({"html": "é" * (MAX_HTML_BYTES // 2 + 1)})) == {"html"}


def test_html_must_be_valid_unicode() -> None:
    # The JSON parser already refuses a lone surrogate; a Python caller gets the same answer.
    with pytest.raises(ValidationError) as caught:
        DocumentsRequest.model_validate({"html": "<p>\ud800</p>"})
    assert [error["loc"] for error in caught.value.errors()] == [("html",)]


def test_html_must_not_contain_nul() -> None:
    assert set(errors({"html": "<p>a\u0000b</p>"})) == {"html"}


def test_html_data_is_any_object() -> None:
    request = validate({"html": "<p>{{ data.x }}</p>", "data": {"x": [1, {"y": None}]}})
    assert request.data == {"x": [1, {"y": None}]}


@pytest.mark.parametrize(
    ("filename", "stored"),
    [("invoice-42.pdf", "invoice-42.pdf"), ("Report_2025", "Report_2025.pdf"), ("a.PDF", "a.PDF")],
)
def test_filenames(filename: str, stored: str) -> None:
    assert validate({"html": "x", "filename": filename}).filename == stored


@pytest.mark.parametrize("filename", ["../x.pdf", "a/b.pdf", ".hidden.pdf", "a b.pdf", "", "x" * 200, "a..pdf"])
def test_unsafe_filenames_are_refused(filename: str) -> None:
    assert set(errors({"html": "x", "filename": filename})) == {"filename"}


@pytest.mark.parametrize(("field", "value"), [("pageSize", "A3"), ("landscape", "sideways")])
def test_page_options(field: str, value: str) -> None:
    assert set(errors({"html": "x", field: value})) == {field}
