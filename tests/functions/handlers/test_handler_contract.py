"""The handler contract: one shape of "invalid arguments" error for every function."""

from __future__ import annotations

import pytest

from functions.handlers.base import parse_args
from functions.registry import load_registry
from shared.errors import PermanentJobError


@pytest.mark.parametrize("queue", sorted(load_registry()))
def test_every_function_reports_invalid_args_the_same_way(queue: str) -> None:
    spec = load_registry()[queue]
    with pytest.raises(PermanentJobError) as caught:
        parse_args(spec.request, {"surely-not-a-field": 1})
    assert caught.value.kind == "invalid-args"
    assert str(caught.value).startswith("invalid arguments: ")
    assert "surely-not-a-field" in str(caught.value)


def test_a_field_can_name_a_more_precise_kind_and_problems_are_capped() -> None:
    email = load_registry()["emails"].request
    with pytest.raises(PermanentJobError) as caught:
        parse_args(email, {"to": "not an address", "subject": "s", "text": "t"}, kinds={"to": "invalid-address"})
    assert caught.value.kind == "invalid-address"
    with pytest.raises(PermanentJobError) as many:
        parse_args(email, {f"x{n}": n for n in range(8)})
    assert "(and " in str(many.value)
