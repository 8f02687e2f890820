"""Size limits for what a tenant's Jinja2 template computes: a step is refused before it allocates.

The sandbox stops unsafe attribute access, not resource use. A template can build a huge value in
one C call ('x' * 10**9, 'x'.center(10**9), ''.join([s] * 100000)) or grow one step by step
(s ~ s in a loop or a recursive macro). Each such step is an operator, a filter or a str method;
here each is checked against an estimate of its result, from its operands, before it runs, and
every filter and method result is checked after. No value built inside a template may exceed
MAX_VALUE_CHARS, so growth stops within a step or two whatever the path.

Pure functions: each returns why a step is refused, or None.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any, Final

MAX_VALUE_CHARS: Final = 256 * 1024
MAX_INT_ARGUMENT: Final = 100_000  # the sandbox's own MAX_RANGE
MAX_EXPONENT: Final = 128

_PERCENT_SPEC: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]?")
_DIGITS: Final = re.compile(r"\d+")
# Filters and str methods whose integer arguments size their result.
_WIDTH_TAKING: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "batch", "slice"})
TOO_LARGE: Final = f"a value in the template would exceed {MAX_VALUE_CHARS} characters"


def binop_problem(operator: str, left: Any, right: Any) -> str | None:
    """Why `left <operator> right` is refused (intercepted: * + % **), or None."""
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_VALUE_CHARS:
                return TOO_LARGE
    elif operator == "+":
        if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            if len(left) + len(right) > MAX_VALUE_CHARS:
                return TOO_LARGE
    elif operator == "**":
        if isinstance(right, int) and abs(right) > MAX_EXPONENT:
            return f"exponents must be at most {MAX_EXPONENT}"
    elif operator == "%" and isinstance(left, str):
        values = (
            right if isinstance(right, tuple) else tuple(right.values()) if isinstance(right, Mapping) else (right,)
        )
        return percent_problem(left, values)
    return None


def concat_problem(parts: Sequence[Any]) -> str | None:
    """Why `a ~ b ~ ...` is refused, or None."""
    if sum(len(part) for part in parts if isinstance(part, str)) > MAX_VALUE_CHARS:
        return TOO_LARGE
    return None


def call_problem(name: str, value: Any, args: Sequence[Any], kwargs: Mapping[str, Any], *, method: bool) -> str | None:
    """Why filter `value|name(*args)` (or str method `value.name(*args)` when `method`) is refused."""
    if name in _WIDTH_TAKING:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and abs(arg) > MAX_INT_ARGUMENT:
                return f"widths and counts must be at most {MAX_INT_ARGUMENT}"
    if name == "join":
        items, separator = (args[0] if args else None, value) if method else (value, args[0] if args else "")
        return _join_problem(items, separator)
    if not isinstance(value, str):
        return None
    if name == "format" and not method:  # the format filter is printf-style
        return percent_problem(value, tuple(args) + tuple(kwargs.values()))
    estimate = _estimate(name, value, args, kwargs)
    if estimate is not None and estimate > MAX_VALUE_CHARS:
        return TOO_LARGE
    return None


def result_problem(result: Any) -> str | None:
    """Why a filter's or method's result is refused (the backstop for steps not estimated above)."""
    if isinstance(result, str) and len(result) > MAX_VALUE_CHARS:
        return TOO_LARGE
    return None


def percent_problem(fmt: str, values: Sequence[Any]) -> str | None:
    """Why `fmt % values` is refused: a width taken from the arguments, or too large a result."""
    specs = _PERCENT_SPEC.findall(fmt)
    for width, precision in specs:
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_INT_ARGUMENT):
                return f"format widths must be literal and at most {MAX_INT_ARGUMENT}"
    longest = max((len(v) for v in values if isinstance(v, str)), default=0)
    if len(fmt) + len(specs) * longest > MAX_VALUE_CHARS:
        return TOO_LARGE
    return None


def brace_format_problem(fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """Why `fmt.format(*args, **kwargs)` is refused: nested or large widths, or too large a result."""
    try:
        fields = [spec for _, field, spec, _ in string.Formatter().parse(fmt) if field is not None]
    except ValueError:
        return None  # str.format refuses it too
    for spec in fields:
        # A nested field ("{:{}}") takes its width from the arguments, so it is refused outright.
        if spec and ("{" in spec or any(int(d) > MAX_INT_ARGUMENT for d in _DIGITS.findall(spec))):
            return f"format widths must be literal and at most {MAX_INT_ARGUMENT}"
    values = (*args, *kwargs.values())
    longest = max((len(v) for v in values if isinstance(v, str)), default=0)
    if len(fmt) + len(fields) * longest > MAX_VALUE_CHARS:
        return TOO_LARGE
    return None


def _join_problem(items: Any, separator: Any) -> str | None:
    if not isinstance(items, list | tuple):
        return None  # a lazy iterable cannot be measured; the result is checked afterwards
    sep = len(separator) if isinstance(separator, str) else 0
    if sum(len(item) for item in items if isinstance(item, str)) + sep * len(items) > MAX_VALUE_CHARS:
        return TOO_LARGE
    return None


def _estimate(name: str, value: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    """The length of `value.name(*args)` for the str operations that multiply their input."""
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        hits = len(value) + 1 if args[0] == "" else value.count(args[0])
        return len(value) + hits * len(args[1])
    if name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        return len(value) + (value.count("\n") + 1) * pad
    if name == "wordwrap":  # (width, break_long_words, wrapstring, ...)
        wrapstring = args[2] if len(args) > 2 else kwargs.get("wrapstring")
        return len(value) * (1 + len(wrapstring)) if isinstance(wrapstring, str) else None
    if name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        return len(value) + value.count("\t") * tabsize if isinstance(tabsize, int) else None
    return None
