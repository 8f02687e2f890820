"""Tenant-authored bulk email templates, compiled and rendered in a guarded Jinja2 sandbox.

Three kinds of template: `html` (autoescaped), `text` (also used for the subject) and `url` (the
unsubscribe URL: every `{{ ... }}` is percent-encoded). Variables are the recipient's `data` keys;
a missing one is an error rather than an empty string (StrictUndefined).

The sandbox blocks unsafe attributes and calls; on top of it:
- constant folding is off (`optimized=False`), so compiling at the API never evaluates tenant
  expressions (folding `{{ 'x' * 10**8 }}` would otherwise build 100 MB while compiling);
- `*`, `**` and `%` are checked before they run, and so are integer arguments of calls and
  filters (`center(10**9)`), which would otherwise allocate in one C call;
- rendering stops at a deadline (a line tracer on template frames only) and at an output cap.
Memory is not bounded in every case (string doubling in a loop); the machine's memory limit is the
backstop, and a failed render only ever fails that one job.
"""

from __future__ import annotations

import functools
import re
import string
import sys
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import quote

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.runtime import Context
    from jinja2.sandbox import SandboxedEnvironment

TemplateKind = Literal["html", "text", "url"]

MAX_RENDERED_CHARS: Final = 2 * 1024 * 1024
MAX_INT_ARGUMENT: Final = 100_000  # the sandbox's own MAX_RANGE
MAX_EXPONENT: Final = 128
RENDER_DEADLINE_SECONDS: Final = 5.0

_PERCENT_SPEC: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS: Final = re.compile(r"\d+")
# Filters and str methods whose integer arguments size the result; others may take any number.
_WIDTH_TAKING: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "batch", "slice"})
_SIZING_FILTERS: Final = frozenset({"center", "indent", "batch", "slice", "format", "replace"})
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
        intercepted_binops = frozenset({"*", "**", "%"})

        def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
            problem = _binop_problem(operator, left, right)
            if problem:
                raise SecurityError(problem)
            return super().call_binop(context, operator, left, right)

        def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            # String methods reach here as bound builtins, e.g. 'x'.ljust(10**9).
            owner = getattr(obj, "__self__", None)
            if isinstance(owner, str):
                problem = _sizing_problem(getattr(obj, "__name__", ""), owner, args, kwargs, method=True)
                if problem:
                    raise SecurityError(problem)
            return super().call(context, obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            # str.format / format_map are swapped for a sandboxed formatter when the attribute is
            # read; the format string's widths are checked here, before anything is formatted.
            wrapped = super().wrap_str_format(value)
            problem = _brace_problem(value.__self__) if wrapped is not None else None
            if problem is None:
                return wrapped

            def refuse(*args: Any, **kwargs: Any) -> str:
                raise SecurityError(problem)

            return refuse

    env = GuardedSandbox(
        autoescape=kind == "html",
        undefined=StrictUndefined,
        optimized=False,
        finalize=_quote_url_part if kind == "url" else None,
    )
    env.filters = {name: _guarded_filter(name, f, SecurityError) for name, f in env.filters.items()}
    return env


def _quote_url_part(value: Any) -> str:
    return quote(str(value), safe="")


def _guarded_filter(name: str, func: Callable[..., Any], error: type[Exception]) -> Callable[..., Any]:
    # Filters are called directly by compiled templates, not through Environment.call.
    if name not in _SIZING_FILTERS:
        return func

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja still passes context/environment
    def guarded(*args: Any, **kwargs: Any) -> Any:
        passed = 1 if hasattr(func, "jinja_pass_arg") else 0
        if len(args) > passed:
            problem = _sizing_problem(name, args[passed], args[passed + 1 :], kwargs, method=False)
            if problem:
                raise error(problem)
        return func(*args, **kwargs)

    return guarded


def _sizing_problem(
    name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, method: bool
) -> str | None:
    """Why `value.name(*args)` (a str method, or a filter when not `method`) could allocate without bound."""
    if name in _WIDTH_TAKING:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and abs(arg) > MAX_INT_ARGUMENT:
                return f"widths and counts must be at most {MAX_INT_ARGUMENT}"
    if not isinstance(value, str):
        return None
    if name == "format" and not method:  # the format filter is printf-style
        return _percent_problem(value)
    if name == "replace" and len(args) >= 2:
        return _replace_problem(value, args[0], args[1])
    return None


def _binop_problem(operator: str, left: Any, right: Any) -> str | None:
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_RENDERED_CHARS:
                return "repetition result is too large"
    if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
        return f"exponents must be at most {MAX_EXPONENT}"
    if operator == "%" and isinstance(left, str):
        return _percent_problem(left)
    return None


def _percent_problem(fmt: str) -> str | None:
    for match in _PERCENT_SPEC.finditer(fmt):
        for width in match.groups():
            if width == "*" or (width is not None and int(width) > MAX_INT_ARGUMENT):
                return f"format widths must be literal and at most {MAX_INT_ARGUMENT}"
    return None


def _brace_problem(fmt: str) -> str | None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return None  # str.format refuses it too
    for _, _, spec, _ in fields:
        # A nested field ("{:{}}") takes its width from the arguments, so it is refused outright.
        if spec and ("{" in spec or any(int(d) > MAX_INT_ARGUMENT for d in _DIGITS.findall(spec))):
            return f"format widths must be literal and at most {MAX_INT_ARGUMENT}"
    return None


def _replace_problem(value: str, old: Any, new: Any) -> str | None:
    if not isinstance(old, str) or not isinstance(new, str):
        return None
    hits = len(value) + 1 if old == "" else value.count(old)
    if len(value) + hits * len(new) > MAX_RENDERED_CHARS:
        return "replace result is too large"
    return None


def _with_deadline(work: Callable[[], None], seconds: float) -> None:
    """Run `work`, raising TemplateFailed in template code once `seconds` have passed.

    A loop with no output never reaches the output cap, and a thread cannot be killed, so the
    template's own frames check the clock on every line. Other frames are not traced.
    """
    deadline = time.monotonic() + seconds

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise TemplateFailed(f"rendering took longer than {seconds:g} seconds")
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILENAME else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        work()
    finally:
        sys.settrace(previous)
