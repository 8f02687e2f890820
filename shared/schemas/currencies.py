"""ISO 4217 currency codes and how many decimal places (minor-unit digits) each one uses."""

from __future__ import annotations

from typing import Final

# Active ISO 4217 codes (list one, as published in 2025), including the fund codes that carry
# minor units. Precious metals and testing codes (XAU, XTS, XXX...) are left out: nobody bills
# in them and they have no minor unit.
_CODES: Final = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN
    BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN
    ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD
    JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT
    MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG
    QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS
    TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG
    XOF XPF YER ZAR ZMW ZWG ZWL
    """.split()
)

# Codes whose minor unit is not the usual two digits.
_MINOR_UNITS: Final = {
    **dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}


def is_currency(code: str) -> bool:
    """True for an active ISO 4217 code written in capitals (`USD`, not `usd`)."""
    return code in _CODES


def minor_units(code: str) -> int:
    """Decimal places amounts in `code` are written with (2 for USD, 0 for JPY, 3 for KWD)."""
    return _MINOR_UNITS.get(code, 2)
