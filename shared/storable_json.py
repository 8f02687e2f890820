"""Which JSON values the service can store: the one rule every request body is held to.

A job's args, meta and payloads go to Postgres jsonb through orjson and come back through
psycopg's loader (the standard library's parser); a value that fails any step of that round trip
fails whoever writes or reads it (in the group commit, every request of the batch). So a value is
storable when it is:

* an integer within signed 64 bits. orjson cannot encode integers beyond 64 bits at all
  ("Integer exceeds 64-bit range"); signed, so that every stored integer also fits a bigint.
* a finite float strictly between -2**63 and 2**63. NaN and Infinity are not JSON (Python's and
  pydantic's parsers accept them; orjson silently writes null). A float past 2**63 is stored as a
  jsonb numeric, which Postgres prints without an exponent (1e19 reads back as the integer
  10000000000000000000), so it would come back as an integer outside int64 and break every read.
* text without NUL (jsonb cannot hold U+0000) and without unpaired surrogates (not encodable as
  UTF-8), in keys and in values.

Depth needs no rule here: pydantic's JSON parser refuses bodies nested about 200 levels deep (a
400), and orjson's encoder accepts 254 levels, so anything a model accepted can be encoded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from pydantic_core import from_json

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

MESSAGES: Final = {
    "range": f"must be a number between {INT64_MIN} and {INT64_MAX} (64-bit)",
    "finite": "must be a finite number (NaN and Infinity are not JSON)",
    "text": "must not contain the NUL character or an unpaired surrogate",
}


@dataclass(frozen=True, slots=True)
class Unstorable:
    """One value that cannot be stored: its dotted path (`args.n`, `recipients.0.data.x`) and why."""

    path: str
    message: str


def unstorable_values(value: Any, at: tuple[str, ...] = ()) -> Iterator[Unstorable]:
    """Every value inside the parsed JSON `value` that cannot be stored, `at` prefixed to each path."""
    for path, message in _walk(value, at):
        yield Unstorable(".".join(path), message)


# Text that may hold an unstorable value: NaN, Infinity, escapes that decode to NUL or a surrogate,
# and numbers of 19 or more integer digits (the fewest that reach 2**63) or with an exponent (the
# only other way to write a number that large). Bodies without any are neither parsed twice nor
# walked. Plain substring searches come first: they cost next to nothing. Digit runs and
# exponents are found in the body's shape (every digit a '0', 'E' an 'e'); as UUIDs and hashes
# often hold a digit before an 'e', a candidate is confirmed on the reversed shape, where a
# number's digits run back to the whitespace, ':', '[' or ',' (or the start) before any JSON number.
_ESCAPE: Final = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_SHAPE: Final = bytes.maketrans(b"123456789E", b"000000000e")
_LONG_RUN: Final = b"0" * 19
_NUMBER_START_REVERSED = rb"-?(?:[\s:\[,]|\Z)"
_EXPONENT_REVERSED: Final = re.compile(rb"e0+(?:\.0+)?" + _NUMBER_START_REVERSED)
_LONG_REVERSED: Final = re.compile(_LONG_RUN + _NUMBER_START_REVERSED)  # a literal prefix: a fast search


def _may_hold_unstorable(body: bytes) -> bool:
    if b"NaN" in body or b"Infinity" in body or _ESCAPE.search(body):
        return True
    shape = body.translate(_SHAPE)
    long_run, exponent = _LONG_RUN in shape, b"0e" in shape
    if not (long_run or exponent):
        return False
    reversed_shape = shape[::-1]
    return bool(
        (exponent and _EXPONENT_REVERSED.search(reversed_shape)) or (long_run and _LONG_REVERSED.search(reversed_shape))
    )


def unstorable_in_json(body: bytes) -> list[Unstorable]:
    """Every unstorable value of the JSON text `body`; [] for a body that is not JSON at all."""
    if not _may_hold_unstorable(body):
        return []
    try:
        # The parser the request models use, so the walk sees exactly the values they will.
        data = from_json(body)
    except ValueError:
        data = _lenient_parse(body)
        if data is _UNREADABLE:
            return []  # malformed or too deep: the model parse answers 400
    return list(unstorable_values(data))


class _TooLong(int):
    """An integer literal too long to convert (Python limits int() to 4300 digits)."""


_UNREADABLE: Final = object()


def _lenient_parse(body: bytes) -> Any:
    """What the standard library reads from `body`, or _UNREADABLE.

    pydantic's parser refuses unpaired surrogates and integers of more than 4300 digits as
    malformed; this one keeps both, so they get a 422 naming their path rather than a bare 400.
    """
    try:
        return json.loads(body, parse_int=_parse_int)
    except (ValueError, RecursionError):
        return _UNREADABLE


def _parse_int(literal: str) -> int:
    return _TooLong(0) if len(literal) > 20 else int(literal)


def _walk(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(value, str):
        if not _storable_text(value):
            yield path, MESSAGES["text"]
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if isinstance(value, _TooLong) or not INT64_MIN <= value <= INT64_MAX:
            yield path, MESSAGES["range"]
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield path, MESSAGES["finite"]
        elif not -(2.0**63) < value < 2.0**63:
            yield path, MESSAGES["range"]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*path, str(index)))
    elif isinstance(value, dict):
        for key, item in value.items():
            good_key = _storable_text(key)
            if not good_key:
                yield (*path, "<key>"), MESSAGES["text"]
            yield from _walk(item, (*path, key if good_key else "<key>"))


def _storable_text(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
