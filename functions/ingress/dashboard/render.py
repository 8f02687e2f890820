"""Templates (Jinja2, autoescaped), the dashboard's Content-Security-Policy, and HTML error pages."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

TEMPLATES: Final = Path(__file__).resolve().parent / "templates"
# A request for just the live part of a page (the refresh script asks with this header).
FRAGMENT_HEADER: Final = "x-dashboard-fragment"
VERSION_HEADER: Final = "X-Dashboard-Version"


def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "—"
    return duration((now or datetime.now(UTC)) - value) + " ago"


def duration(value: Any) -> str:
    """A short human duration ("850 ms", "12 s", "3 min 4 s", "2 h 5 min") of seconds or a timedelta."""
    if value is None:
        return "—"
    seconds = value.total_seconds() if hasattr(value, "total_seconds") else float(value)
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        return _when(parsed)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _size(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


ENV: Final = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,  # a misspelt name is an error in the tests, not an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
)


def live_version(body: str) -> str:
    """What the refresh script compares to tell whether a live part changed (sent with a fragment as
    VERSION_HEADER, and on the page's part as data-version), so an unchanged part is left alone."""
    return hashlib.sha256(body.encode()).hexdigest()[:24]


ENV.filters.update(ago=_ago, duration=duration, when=_when, pretty=_pretty, size=_size, version=live_version)


def content_security_policy(media_origins: Iterable[str] = ()) -> str:
    """Stricter than the API's: no inline style either. Output previews load through the page's
    own links, which redirect to the storage: only pages that show them name its origin, and frame
    their own origin."""
    media = " ".join(sorted(set(media_origins)))
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' data: {media}".rstrip(),
            f"frame-src 'self' {media}" if media else "frame-src 'none'",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def wants_fragment(request: Request) -> bool:
    return request.headers.get(FRAGMENT_HEADER) == "1"


def html(
    request: Request,
    template: str,
    *,
    status: int = 200,
    media_origins: Iterable[str] = (),
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render `template`; pages are never cached (they show one signed-in tenant's data)."""
    body = ENV.get_template(template).render(request=request, path=request.url.path, **context)
    version = {VERSION_HEADER: live_version(body)} if template.endswith("_live.html") else {}
    return HTMLResponse(
        body,
        status_code=status,
        headers={
            "Content-Security-Policy": content_security_policy(media_origins),
            "Cache-Control": "no-store",
            # Our own origin only (the API's default is no-referrer, with which browsers send
            # `Origin: null` on form posts and the Origin check could not tell us from a stranger).
            "Referrer-Policy": "same-origin",
            **version,
            **(headers or {}),
        },
    )
