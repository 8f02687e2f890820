"""Money for invoices and receipts: totals computed with Decimal, amounts written the way readers expect.

Each line amount (quantity x unit price) is rounded half-up to the currency's minor unit, the
subtotal is the sum of the rounded lines, tax is the subtotal times the rate rounded the same
way, and the total is subtotal plus tax, so the printed figures always add up.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

from shared.schemas.currencies import minor_units
from shared.schemas.documents import LineItem

# Symbols as English-language readers know them (CLDR "en"); every other code is written as
# "CHF 1,234.50". Dollars other than the US one carry their country so they cannot be confused.
_SYMBOLS: Final = {
    "USD": "$",
    "EUR": "€",
    "GBP": "£",
    "JPY": "¥",
    "CNY": "CN¥",
    "INR": "₹",
    "KRW": "₩",
    "ILS": "₪",
    "VND": "₫",
    "NGN": "₦",
    "PHP": "₱",
    "UAH": "₴",
    "TRY": "₺",
    "CAD": "CA$",
    "AUD": "A$",
    "NZD": "NZ$",
    "HKD": "HK$",
    "MXN": "MX$",
    "BRL": "R$",
    "TWD": "NT$",
}
_MINUS: Final = "\u2212"  # a real minus sign, not a hyphen
_MONTHS: Final = "January February March April May June July August September October November December".split()


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    """The computed amounts of an invoice: one per line, then subtotal, tax and total."""

    lines: tuple[Decimal, ...]
    subtotal: Decimal
    tax: Decimal
    total: Decimal


def round_money(amount: Decimal, currency: str) -> Decimal:
    """`amount` rounded half-up to the minor unit of `currency` (cents for USD, yen for JPY)."""
    return amount.quantize(Decimal(1).scaleb(-minor_units(currency)), rounding=ROUND_HALF_UP)


def compute_totals(items: Sequence[LineItem], *, tax_rate: Decimal, currency: str) -> Totals:
    """Line amounts, subtotal, tax and total of `items` taxed at `tax_rate` percent."""
    lines = tuple(round_money(item.quantity * item.unit_price, currency) for item in items)
    subtotal = sum(lines, Decimal(0))
    tax = round_money(subtotal * tax_rate / 100, currency)
    return Totals(lines=lines, subtotal=subtotal, tax=tax, total=subtotal + tax)


def format_money(amount: Decimal, currency: str) -> str:
    """`amount` as a reader expects it: `$1,234.50`, `¥1,235`, `CHF 1,234.50`, and negatives with a minus sign."""
    rounded = round_money(amount, currency)
    digits = f"{abs(rounded):,.{minor_units(currency)}f}"
    symbol = _SYMBOLS.get(currency)
    text = f"{symbol}{digits}" if symbol else f"{currency}\u00a0{digits}"
    return f"{_MINUS}{text}" if rounded < 0 else text


def format_quantity(quantity: Decimal) -> str:
    """A quantity without trailing zeros: `2`, `1.5`, `1,000`."""
    # normalize() drops trailing zeros but may switch to exponent form (1E+3); ",f" undoes that.
    return f"{quantity.normalize():,f}"


def format_percent(rate: Decimal) -> str:
    """A percentage without trailing zeros: `20%`, `7.5%`."""
    return f"{format_quantity(rate)}%"


def format_date(value: dt.date) -> str:
    """A date spelled out in English whatever the machine's locale: `March 5, 2025`."""
    return f"{_MONTHS[value.month - 1]} {value.day}, {value.year}"


def format_datetime(value: dt.date) -> str:
    """A date, or a date and time with its UTC offset: `March 5, 2025, 14:30 UTC`."""
    if not isinstance(value, dt.datetime):
        return format_date(value)
    text = f"{format_date(value)}, {value:%H:%M}"
    offset = value.utcoffset()
    if offset is None:
        return text
    if not offset:
        return f"{text} UTC"
    sign = "+" if offset > dt.timedelta(0) else _MINUS
    hours, minutes = divmod(abs(offset) // dt.timedelta(minutes=1), 60)
    return f"{text} UTC{sign}{hours:02}:{minutes:02}"
