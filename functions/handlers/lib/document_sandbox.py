"""Tenant HTML templates: Jinja2's immutable sandbox, autoescaped, strict about undefined names.

The sandbox refuses unsafe attributes (`__class__`, `__globals__`, `mro`...) and calls; any
such attempt, a syntax error or an undefined name becomes a PermanentJobError of kind
"template-error" with Jinja2's own message, never a crash. The sandbox does not bound memory or
time, so we also refuse the cheap ways to build a huge value in one expression (string/list
repetition, big powers, huge padding or format widths), drop `lipsum`, and cap the rendered
output while it streams. Loops that burn time without output are stopped by the render
deadline (see render_thread.py).

Undefined names are errors (StrictUndefined): a typo should not print a blank invoice. Use
`{% if data.notes is defined %}` or `{{ data.notes | default('') }}` for optional fields.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.filters import do_format
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from functions.handlers.lib.document_money import format_date, format_money
from shared.errors import PermanentJobError
from shared.schemas.currencies import is_currency

MAX_OUTPUT_CHARS: Final = 8 * 1024 * 1024
MAX_REPEAT: Final = 1_000_000  # elements or characters one `*` may build
MAX_EXPONENT: Final = 64
MAX_POWER_BITS: Final = 65_536
MAX_WIDTH: Final = 10_000  # padding and format widths
_PADDING_METHODS: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
# A width or precision of six digits or more in a %-format or {}-format specification.
_HUGE_FORMAT_WIDTH: Final = re.compile(r"[%:][^%{}]{0,12}?\d{5,}")


def template_error(message: str) -> PermanentJobError:
    """The error for a tenant template that cannot render."""
    return PermanentJobError(f"template error: {message}", kind="template-error")


def _check_format(fmt: object) -> None:
    if isinstance(fmt, str) and _HUGE_FORMAT_WIDTH.search(fmt):
        raise SecurityError("format width too large")


class TenantSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus size limits on the operators and calls that can blow up memory."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_REPEAT:
                    raise SecurityError("repetition too large")
        elif operator == "**" and isinstance(right, int | float) and isinstance(left, int | float):
            # Chained powers grow fast: (10 ** 64) ** 64 ** ... would take minutes and gigabytes.
            if abs(right) > MAX_EXPONENT or int(abs(left)).bit_length() * abs(right) > MAX_POWER_BITS:
                raise SecurityError("power too large")
        elif operator == "%":
            _check_format(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        method = getattr(__obj, "__wrapped__", __obj)  # str.format arrives wrapped by the sandbox
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            name = getattr(method, "__name__", "")
            if name in ("format", "format_map"):
                _check_format(owner)
            elif name in _PADDING_METHODS and any(isinstance(a, int) and a > MAX_WIDTH for a in args):
                raise SecurityError("width too large")
        return super().call(__context, __obj, *args, **kwargs)


def _checked_width(name: str) -> Any:
    # Wraps a filter whose second argument is a width it pads to (center, indent).
    original = TenantSandbox().filters[name]

    def wrapper(value: Any, *args: Any, **kwargs: Any) -> Any:
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int) and width > MAX_WIDTH:
            raise SecurityError("width too large")
        return original(value, *args, **kwargs)

    return wrapper


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_format(value)
    return do_format(value, *args, **kwargs)


def _money_filter(value: Any, currency: str = "USD") -> str:
    if not is_currency(currency):
        raise ValueError(f"{currency!r} is not an ISO 4217 currency code")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return format_money(amount, currency)


def _date_filter(value: Any) -> str:
    return format_date(value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10]))


def _make_environment() -> TenantSandbox:
    env = TenantSandbox(autoescape=True, undefined=jinja2.StrictUndefined, auto_reload=False)
    env.globals.pop("lipsum", None)
    env.filters["center"] = _checked_width("center")
    env.filters["indent"] = _checked_width("indent")
    env.filters["format"] = _format_filter
    env.filters["money"] = _money_filter
    env.filters["date"] = _date_filter
    return env


_ENV: Final = _make_environment()


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    # A tenant often renders many documents from one template; compile it once per machine.
    return _ENV.from_string(source)


def render_tenant_html(source: str, data: dict[str, Any]) -> str:
    """Render tenant template `source` with `data` into HTML.

    Raises PermanentJobError kind "template-error" for syntax errors, unsafe access, undefined
    names and any error the template raises, and kind "document-too-large" when the output
    passes MAX_OUTPUT_CHARS.
    """
    try:
        template = _compile(source)
        parts: list[str] = []
        size = 0
        for chunk in template.generate(data=data):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise PermanentJobError(
                    f"rendered HTML is larger than {MAX_OUTPUT_CHARS} characters", kind="document-too-large"
                )
            parts.append(chunk)
    except PermanentJobError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise template_error(f"line {exc.lineno}: {exc.message}") from None
    except SecurityError as exc:
        raise template_error(f"not allowed: {exc}") from None
    except jinja2.TemplateError as exc:
        raise template_error(str(exc.message or type(exc).__name__)) from None
    except (RecursionError, MemoryError) as exc:
        raise template_error(f"{type(exc).__name__}: template too deep or too large") from None
    except Exception as exc:  # a template may raise anything its expressions raise (1/0, int('x'))
        raise template_error(f"{type(exc).__name__}: {exc}") from None
    return "".join(parts)
