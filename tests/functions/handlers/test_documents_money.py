"""Totals and how amounts, quantities and dates are written."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from functions.handlers.lib.document_money import (
    compute_totals,
    format_date,
    format_datetime,
    format_money,
    format_percent,
    format_quantity,
)
from shared.schemas.currencies import is_currency, minor_units
from shared.schemas.documents import LineItem


def items(*pairs: tuple[str, str]) -> list[LineItem]:
    return [LineItem(description="x", quantity=Decimal(q), unit_price=Decimal(p)) for q, p in pairs]


def test_totals_of_the_example_invoice() -> None:
    totals = compute_totals(items(("2", "10.50"), ("3", "5")), tax_rate=Decimal(20), currency="USD")
    assert totals.lines == (Decimal("21.00"), Decimal("15.00"))
    assert (totals.subtotal, totals.tax, totals.total) == (Decimal("36.00"), Decimal("7.20"), Decimal("43.20"))


def test_lines_are_rounded_before_they_are_added() -> None:
    # 3 x 0.335 = 1.005 -> 1.01 each; the printed lines add up to the printed subtotal.
    totals = compute_totals(items(("3", "0.335"), ("3", "0.335")), tax_rate=Decimal("7.5"), currency="USD")
    assert totals.lines == (Decimal("1.01"), Decimal("1.01"))
    assert totals.subtotal == Decimal("2.02")
    assert totals.tax == Decimal("0.15")  # 0.1515 half up
    assert totals.total == Decimal("2.17")


def test_discount_lines_reduce_the_subtotal() -> None:
    totals = compute_totals(items(("1", "100"), ("1", "-15")), tax_rate=Decimal(0), currency="EUR")
    assert totals.subtotal == totals.total == Decimal("85.00")


@pytest.mark.parametrize(
    ("currency", "expected"),
    [("JPY", Decimal("1001")), ("USD", Decimal("1000.50")), ("KWD", Decimal("1000.500"))],
)
def test_rounding_follows_the_currency_minor_unit(currency: str, expected: Decimal) -> None:
    assert compute_totals(items(("3", "333.5")), tax_rate=Decimal(0), currency=currency).total == expected


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        ("1234.5", "USD", "$1,234.50"),
        ("1234.5", "EUR", "€1,234.50"),
        ("1234.5", "GBP", "£1,234.50"),
        ("1234.5", "JPY", "¥1,235"),
        ("1234.5", "CAD", "CA$1,234.50"),
        ("1234.5", "CHF", "CHF\u00a01,234.50"),
        ("0.0005", "KWD", "KWD\u00a00.001"),
        ("-5", "USD", "\u2212$5.00"),
        ("0", "USD", "$0.00"),
        ("1000000", "INR", "₹1,000,000.00"),
    ],
)
def test_money_formatting(amount: str, currency: str, text: str) -> None:
    assert format_money(Decimal(amount), currency) == text


def test_quantities_percentages_and_dates() -> None:
    assert [format_quantity(Decimal(q)) for q in ("2", "2.000", "1.5", "1000", "1234.25")] == [
        "2",
        "2",
        "1.5",
        "1,000",
        "1,234.25",
    ]
    assert format_percent(Decimal("20")) == "20%" and format_percent(Decimal("7.50")) == "7.5%"
    assert format_date(dt.date(2025, 3, 5)) == "March 5, 2025"
    assert format_datetime(dt.date(2025, 3, 5)) == "March 5, 2025"
    assert format_datetime(dt.datetime(2025, 3, 5, 14, 30, tzinfo=dt.UTC)) == "March 5, 2025, 14:30 UTC"
    minus_530 = dt.timezone(-dt.timedelta(hours=5, minutes=30))
    assert format_datetime(dt.datetime(2025, 3, 5, 9, 5, tzinfo=minus_530)) == "March 5, 2025, 09:05 UTC\u221205:30"
    assert format_datetime(dt.datetime(2025, 3, 5, 9, 5)) == "March 5, 2025, 09:05"


def test_currency_table() -> None:
    assert is_currency("USD") and is_currency("JPY") and not is_currency("usd") and not is_currency("XXX")
    assert (minor_units("USD"), minor_units("JPY"), minor_units("BHD"), minor_units("CLF")) == (2, 0, 3, 4)
