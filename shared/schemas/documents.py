"""`POST /jobs/documents`: a built-in template with validated `data`, or tenant HTML rendered in a sandbox.

The built-in templates' `data` is checked field by field (unknown fields rejected, money as JSON
numbers, dates as ISO `YYYY-MM-DD` strings), so a mistake comes back as a 422 whose path points
at it, e.g. `data.items.0.unitPrice`. Totals are never accepted: the renderer computes them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    EmailStr,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.schemas.common import CamelModel, JobRequest
from shared.schemas.currencies import is_currency

MAX_HTML_BYTES: Final = 1024 * 1024
MAX_AMOUNT: Final = Decimal(100_000_000_000)  # 1e11 with 4 decimals stays exact through a JSON float

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,123}$")


def _json_number(value: object) -> object:
    # Money travels as a JSON number; a string such as "10.50" is refused rather than guessed at.
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    return value


def _iso_date(value: object) -> object:
    # pydantic would also take a Unix timestamp or a full datetime here; only YYYY-MM-DD is a date.
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be an ISO date (YYYY-MM-DD)")
    return value


def _iso_date_or_datetime(value: object) -> object:
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return dt.date.fromisoformat(value)  # a plain date stays a date (not midnight of it)
    if not isinstance(value, str) or not _ISO_DATETIME.match(value):
        raise ValueError("must be an ISO date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM:SSZ)")
    return value


def _cell(value: object) -> object:
    # One readable error instead of one per member of a str | int | float | None union.
    if value is None or (isinstance(value, str) and len(value) <= 1000):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    raise ValueError("must be a string (at most 1000 characters), a finite number or null")


def _currency(value: str) -> str:
    if not is_currency(value):
        raise ValueError("must be an ISO 4217 currency code such as USD or EUR")
    return value


def _paragraphs(value: object) -> object:
    # One string is accepted as one paragraph; a list gives one paragraph per item.
    return [value] if isinstance(value, str) else value


def _filename(value: str) -> str:
    if not _FILENAME.fullmatch(value) or ".." in value:
        raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value if value.lower().endswith(".pdf") else f"{value}.pdf"


Money = Annotated[Decimal, BeforeValidator(_json_number), Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT, decimal_places=4)]
Quantity = Annotated[Decimal, BeforeValidator(_json_number), Field(gt=0, le=1_000_000_000, decimal_places=4)]
Percent = Annotated[Decimal, BeforeValidator(_json_number), Field(ge=0, le=100, decimal_places=4)]
IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]
IsoDateOrTime = Annotated[dt.datetime | dt.date, BeforeValidator(_iso_date_or_datetime)]
Currency = Annotated[str, AfterValidator(_currency)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
AddressLine = Annotated[str, Field(min_length=1, max_length=200)]
Paragraph = Annotated[str, Field(min_length=1, max_length=20_000)]
Paragraphs = Annotated[list[Paragraph], BeforeValidator(_paragraphs), Field(min_length=1, max_length=500)]
Cell = Annotated[str | int | float | None, BeforeValidator(_cell)]
Filename = Annotated[str, AfterValidator(_filename)]
TemplateName = Literal["invoice", "receipt", "report", "letter"]


class Party(CamelModel):
    """A seller, customer, sender or recipient."""

    name: Name
    address: list[AddressLine] = Field(default_factory=list, max_length=8, description="address lines, in order")
    email: EmailStr | None = None


class LineItem(CamelModel):
    """One billed line: quantity x unit price (a negative price is a discount line)."""

    description: Annotated[str, Field(min_length=1, max_length=1000)]
    quantity: Quantity
    unit_price: Money


class InvoiceData(CamelModel):
    """`data` of the `invoice` template. Subtotal, tax and total are computed from `items` and `taxRate`."""

    number: Annotated[str, Field(min_length=1, max_length=64)]
    date: IsoDate
    due_date: IsoDate | None = None
    currency: Currency = "USD"
    seller: Party
    customer: Party
    items: list[LineItem] = Field(min_length=1, max_length=1000)
    tax_rate: Percent = Field(Decimal(0), description="percent, e.g. 20 for 20%")
    notes: Annotated[str, Field(max_length=5000)] | None = None

    @model_validator(mode="after")
    def _due_after_issue(self) -> InvoiceData:
        if self.due_date is not None and self.due_date < self.date:
            raise ValueError("dueDate must not be before date")
        return self


class ReceiptData(InvoiceData):
    """`data` of the `receipt` template: an invoice that has been paid."""

    paid_at: IsoDateOrTime
    payment_method: ShortText | None = None


class Table(CamelModel):
    """A table in a report section; numeric cells are right-aligned."""

    columns: list[ShortText] = Field(min_length=1, max_length=20)
    rows: list[list[Cell]] = Field(default_factory=list, max_length=5000)

    @model_validator(mode="after")
    def _rows_match_columns(self) -> Table:
        for index, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"rows.{index} has {len(row)} cells; the table has {len(self.columns)} columns")
        return self


class Section(CamelModel):
    """A headed part of a report: paragraphs, an optional table, or both."""

    heading: ShortText
    body: Annotated[list[Paragraph], BeforeValidator(_paragraphs), Field(max_length=500)] = Field(default_factory=list)
    table: Table | None = None


class ReportData(CamelModel):
    """`data` of the `report` template."""

    title: ShortText
    subtitle: ShortText | None = None
    author: ShortText | None = None
    sections: list[Section] = Field(min_length=1, max_length=200)


class LetterData(CamelModel):
    """`data` of the `letter` template."""

    sender: Party
    recipient: Party
    date: IsoDate
    subject: ShortText | None = None
    body: Paragraphs
    closing: ShortText = "Sincerely,"
    signature: ShortText | None = Field(None, description="defaults to the sender's name")


TemplateData = InvoiceData | ReceiptData | ReportData | LetterData

TEMPLATE_DATA: Final[dict[str, type[TemplateData]]] = {
    "invoice": InvoiceData,
    "receipt": ReceiptData,
    "report": ReportData,
    "letter": LetterData,
}


class DocumentsRequest(JobRequest):
    """Render one PDF: a built-in `template` with its `data`, or tenant `html` (Jinja2, sandboxed) with `data`."""

    template: TemplateName | None = None
    html: Annotated[str, Field(min_length=1, max_length=MAX_HTML_BYTES)] | None = Field(
        None, description="a Jinja2 template (at most 1 MiB) rendered in a sandbox with `data`"
    )
    data: dict[str, Any] | None = Field(
        None, description="the template's data; for built-in templates validated against that template's fields"
    )
    filename: Filename = "document.pdf"
    page_size: Literal["A4", "Letter"] = "A4"
    landscape: bool = False

    @field_validator("html")
    @classmethod
    def _html_size(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            size = len(value.encode("utf-8"))  # max_length counts characters; the limit is on bytes
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (no lone surrogates)") from None
        if size > MAX_HTML_BYTES:
            raise ValueError(f"must be at most {MAX_HTML_BYTES} bytes")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")  # Postgres JSONB cannot store them either
        return value

    @field_validator("data")
    @classmethod
    def _template_data(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        # Checked here (not only in the handler) so the 422 carries paths like data.items.0.unitPrice.
        # The stored args keep what the client sent; the handler validates it again into the model.
        template = info.data.get("template")
        if value is not None and template is not None:
            TEMPLATE_DATA[template].model_validate(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DocumentsRequest:
        if (self.template is None) == (self.html is None):
            raise ValueError("give exactly one of template or html")
        if self.template is not None and self.data is None:
            raise ValueError(f"template {self.template!r} needs data")
        return self

    def template_data(self) -> TemplateData:
        """The built-in template's data as its model. Raises ValueError when this request carries html."""
        if self.template is None:
            raise ValueError("this request renders tenant html, not a built-in template")
        return TEMPLATE_DATA[self.template].model_validate(self.data or {})
