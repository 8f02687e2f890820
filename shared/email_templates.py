"""Tenant-authored bulk email templates, compiled and rendered in a guarded Jinja2 sandbox.

Three kinds of template: `html` (autoescaped), `text` (also used for the subject) and `url` (the
unsubscribe URL: every `{{ ... }}` is percent-encoded). Variables are the recipient's `data` keys;
a missing one is an error rather than an empty string (StrictUndefined).

The immutable sandbox blocks unsafe attributes, calls and mutation; on top of it:
- constant folding is off (`optimized=False`), so compiling at the API never evaluates tenant
  expressions (folding `{{ 'x' * 10**8 }}` would otherwise build 100 MB while compiling);
- every operator, filter, str method and `~` that can grow a value is checked against
  `template_limits` before it runs, and filter and method results after, so no value built
  inside a template exceeds 256 KiB;
- rendering stops at a deadline (checked on every line of template code) and at an output cap.
Deep macro recursion can still hold a few hundred such values at once (tens of MB); the
machine's memory limit is the backstop, and a failed render only ever fails that one job.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import quote

from shared import template_limits as limits

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.runtime import Context
    from jinja2.sandbox import SandboxedEnvironment

TemplateKind = Literal["html", "text", "url"]

MAX_RENDERED_CHARS: Final = 2 * 1024 * 1024
RENDER_DEADLINE_SECONDS: Final = 5.0

_TEMPLATE_FILENAME: Final = "<template>"  # what Jinja names code compiled from a string


class TemplateFailed(ValueError):
    """A template does not compile or render; the message is safe to show the tenant."""


def check_template(source: str, kind: TemplateKind) -> str:
    """Return `source` if it compiles; raise TemplateFailed with the syntax error otherwise."""
    _compiled(source, kind)
    return source


def render(
    source: str, data: Mapping[str, Any], kind: TemplateKind, *, deadline_seconds: float = RENDER_DEADLINE_SECONDS
) -> str:
    """Render `source` with `data` as its variables. Raises TemplateFailed on any template error."""
    template = _compiled(source, kind)
    from jinja2 import TemplateError

    chunks: list[str] = []
    size = 0

    def produce() -> None:
        nonlocal size
        for chunk in template.generate(dict(data)):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise TemplateFailed(f"rendered output exceeds {MAX_RENDERED_CHARS} characters")
            chunks.append(chunk)

    try:
        _with_deadline(produce, deadline_seconds)
    except TemplateFailed:
        raise
    except TemplateError as exc:
        raise TemplateFailed(f"template error: {exc}") from None
    except Exception as exc:  # templates raise arbitrary runtime errors (1/0, bad types): all are the tenant's
        raise TemplateFailed(f"template error: {type(exc).__name__}: {exc}") from None
    return "".join(chunks)


def has_expressions(source: str) -> bool:
    """Whether `source` contains any Jinja syntax (a URL without any is used as it is)."""
    return "{{" in source or "{%" in source or "{#" in source


@functools.lru_cache(maxsize=64)
def _compiled(source: str, kind: TemplateKind) -> Template:
    from jinja2 import TemplateSyntaxError

    try:
        return _environment(kind).from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateFailed(f"template syntax error on line {exc.lineno}: {exc.message}") from None


@functools.cache
def _environment(kind: TemplateKind) -> SandboxedEnvironment:
    # jinja2 is imported on first use: an emails machine that only sends single emails skips it.
    from jinja2 import StrictUndefined
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GuardedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "+", "%", "**"})

        def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
            _refuse_if(limits.binop_problem(operator, left, right), SecurityError)
            return super().call_binop(context, operator, left, right)

        def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            # String methods reach here as bound builtins, e.g. 'x'.ljust(10**9).
            owner = getattr(obj, "__self__", None)
            if isinstance(owner, str):
                name = getattr(obj, "__name__", "")
                _refuse_if(limits.call_problem(name, owner, args, kwargs, method=True), SecurityError)
            result = super().call(context, obj, *args, **kwargs)
            _refuse_if(limits.result_problem(result), SecurityError)
            return result

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            # str.format / format_map are swapped for a sandboxed formatter when the attribute is
            # read; the format string and its arguments are checked before anything is formatted.
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None
            fmt: str = value.__self__
            is_map = value.__name__ == "format_map"

            def checked(*args: Any, **kwargs: Any) -> str:
                values = args[0] if is_map and args and isinstance(args[0], Mapping) else kwargs
                _refuse_if(limits.brace_format_problem(fmt, () if is_map else args, values), SecurityError)
                return wrapped(*args, **kwargs)

            return checked

    env = GuardedSandbox(
        autoescape=kind == "html",
        undefined=StrictUndefined,
        optimized=False,
        finalize=_quote_url_part if kind == "url" else None,
    )
    env.filters = {name: _guarded_filter(name, f, SecurityError) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)  # lorem ipsum of any length, generated outside template code
    return env


def _quote_url_part(value: Any) -> str:
    return quote(str(value), safe="")


def _refuse_if(problem: str | None, error: type[Exception]) -> None:
    if problem is not None:
        raise error(problem)


def _guarded_filter(name: str, func: Callable[..., Any], error: type[Exception]) -> Callable[..., Any]:
    # Filters are called directly by compiled templates, not through Environment.call.
    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja still passes context/environment
    def guarded(*args: Any, **kwargs: Any) -> Any:
        passed = 1 if hasattr(func, "jinja_pass_arg") else 0
        if len(args) > passed:
            _refuse_if(limits.call_problem(name, args[passed], args[passed + 1 :], kwargs, method=False), error)
        result = func(*args, **kwargs)
        _refuse_if(limits.result_problem(result), error)
        return result

    return guarded


@functools.cache
def _concat_codes() -> frozenset[CodeType]:
    # `a ~ b` compiles to a call of one of these runtime helpers, which the tracer checks.
    from jinja2.runtime import markup_join, str_join

    return frozenset({markup_join.__code__, str_join.__code__})


def _with_deadline(work: Callable[[], None], seconds: float) -> None:
    """Run `work`, raising TemplateFailed in template code once `seconds` have passed.

    A loop with no output never reaches the output cap, and a thread cannot be killed, so the
    template's own frames check the clock on every line; their other lines are not traced. The
    same tracer checks each `~` before it joins (it is a plain function call in compiled code).
    """
    deadline = time.monotonic() + seconds
    concat_codes = _concat_codes()

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise TemplateFailed(f"rendering took longer than {seconds:g} seconds")
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code in concat_codes:
            problem = limits.concat_problem(frame.f_locals.get("seq", ()))
            if problem is not None:
                raise TemplateFailed(f"template error: {problem}")
            return None
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILENAME else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        work()
    finally:
        sys.settrace(previous)
