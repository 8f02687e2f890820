"""The one rule for JSON the service stores: what passes, what is refused and where it is named."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.storable_json import (
    INT64_MAX,
    INT64_MIN,
    MESSAGES,
    Unstorable,
    _may_hold_unstorable,
    unstorable_in_json,
    unstorable_values,
)

RANGE, FINITE, TEXT = MESSAGES["range"], MESSAGES["finite"], MESSAGES["text"]


def test_int64_finite_floats_and_any_text_but_nul_are_storable() -> None:
    value = {
        "max": INT64_MAX,
        "min": INT64_MIN,
        "big": 9.2e18,
        "small": -9.2e18,
        "fraction": 0.1,
        "tiny": 5e-324,
        "neg0": -0.0,
        "text": "😀 ünï \t\n",
        "deep": [[{"a": [True, False, None]}]],
    }
    assert list(unstorable_values(value)) == []
    orjson.dumps(value)  # what the rule lets through, the encoder and jsonb take


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ({"n": INT64_MAX + 1}, "n", RANGE),
        ({"n": INT64_MIN - 1}, "n", RANGE),
        ({"n": 2**64}, "n", RANGE),
        ({"a": [1, {"b": math.nan}]}, "a.1.b", FINITE),
        ({"n": math.inf}, "n", FINITE),
        ({"n": -math.inf}, "n", FINITE),
        # jsonb prints these without an exponent: they would read back as integers beyond 64 bits
        ({"n": 1e19}, "n", RANGE),
        ({"n": 2.0**63}, "n", RANGE),
        ({"n": -(2.0**63)}, "n", RANGE),
        ({"n": 1.7976931348623157e308}, "n", RANGE),
        ({"s": "a\x00b"}, "s", TEXT),
        ({"s": "a\ud800b"}, "s", TEXT),
        ({"a\x00": 1}, "<key>", TEXT),
        ([0, 2**70], "1", RANGE),
    ],
)
def test_each_unstorable_value_is_named_by_its_path(value: Any, path: str, message: str) -> None:
    assert list(unstorable_values(value)) == [Unstorable(path, message)]


def test_paths_start_where_the_caller_says() -> None:
    assert list(unstorable_values({"n": math.nan}, ("options", "meta"))) == [Unstorable("options.meta.n", FINITE)]


def test_every_problem_is_reported() -> None:
    problems = unstorable_values({"a": math.nan, "b": [2**64, "ok", "\x00"]})
    assert [p.path for p in problems] == ["a", "b.0", "b.2"]


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (b'{"args": {"n": 18446744073709551616}}', "args.n", RANGE),
        (b'{"args": {"n": 9223372036854775808}}', "args.n", RANGE),
        (b'{"args": {"n": -9223372036854775809}}', "args.n", RANGE),
        (b'{"args": {"n": NaN}}', "args.n", FINITE),
        (b'{"args": {"n": Infinity}}', "args.n", FINITE),
        (b'{"args": {"n": -Infinity}}', "args.n", FINITE),
        (b'{"args": {"n": 1e400}}', "args.n", FINITE),
        (b'{"args": {"n": 1e19}}', "args.n", RANGE),
        (b'{"args": {"n":[-9.3E18]}}', "args.n.0", RANGE),
        (b'{"args": {"n":99999999999999999.9e2}}', "args.n", RANGE),
        (b'{"args": {"n": 12345678901234567890.5}}', "args.n", RANGE),
        (b'{"args": {"n": -2.5E+309}}', "args.n", FINITE),
        (b'{"args": {"n": 1' + b"0" * 400 + b".5}}", "args.n", FINITE),
        # Too long for pydantic's parser (and for int()): still a 422 naming it, not a 400 or a 500.
        (b'{"args": {"n": ' + b"7" * 5000 + b"}}", "args.n", RANGE),
        (b'{"payload": ["x", "a\\u0000b"]}', "payload.1", TEXT),
        (b'{"payload": {"s": "\\ud800 alone"}}', "payload.s", TEXT),
        (b'{"payload": {"s": "\\uDC00"}}', "payload.s", TEXT),
        (b'{"payload": {"\\u0000": 1}}', "payload.<key>", TEXT),
    ],
)
def test_a_json_body_names_each_unstorable_value(body: bytes, path: str, message: str) -> None:
    assert unstorable_in_json(body) == [Unstorable(path, message)]


@pytest.mark.parametrize(
    "body",
    [
        b'{"args": {"n": 9223372036854775807, "m": -9223372036854775808, "f": 9.2e18}}',
        b'{"args": {"title": "NaN and Infinity are words", "phone": "00441234567890123456789", "id": "550e8400"}}',
        b'{"args": {"n": 9.2e18, "m": -9.2E+18, "x": 1e-300}}',
        b'{"args": {"pair": "\\ud83d\\ude00", "x": 1e-400, "y": 0.12345678901234567890123}}',
        b'{"args": {"n": NaN, "n": 1}}',  # the parser the models use keeps the last duplicate
        b'{"args": ',  # malformed: the model parser answers 400
        b"[" * 5000 + b"NaN" + b"]" * 5000,  # too deep for either parser: the model parser answers 400
    ],
)
def test_storable_or_unreadable_bodies_have_no_problems(body: bytes) -> None:
    assert unstorable_in_json(body) == []


_TEXT = st.text(st.characters(exclude_categories=()), max_size=8)  # NUL and lone surrogates included
_JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([2.0**63, -(2.0**63), 9.2e18, 1e19, 123456789.0e10, 2**63, -(2**63) - 1, 10**19 - 1])
    | _TEXT
)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_the_fast_path_never_skips_a_body_the_walk_would_refuse(value: Any) -> None:
    # The raw-text prefilter only decides whether to parse and walk; it must never change the answer.
    for separators in ((", ", ": "), (",", ":")):
        body = json.dumps(value, allow_nan=True, separators=separators).encode()
        assert unstorable_in_json(body) == list(unstorable_values(json.loads(body)))


@pytest.mark.parametrize(
    ("body", "walked"),
    [
        (b'{"id": "550e8400-e29b-41d4-a716-446655440000", "n": 12, "x": 1.5}', False),  # a digit before an e
        (b'{"snowflake": "1234567890123456789", "phone": "+441234567890"}', False),  # long digit runs in text
        (b'{"title": "Not a NaN"}', True),  # cheap to look for, rare enough to walk
        (b'{"n": 1.5e3}', True),
        (b"[12345678901234567890]", True),
        (b"-1E+2", True),
    ],
)
def test_only_bodies_that_may_hold_such_a_value_are_parsed_twice(body: bytes, walked: bool) -> None:
    assert _may_hold_unstorable(body) is walked
