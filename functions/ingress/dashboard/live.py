"""GET /dashboard/events: the signed-in user's job events, so open pages refresh when a job changes.

The same stream as GET /events, authenticated by the dashboard's cookie instead of a bearer token
(a browser's EventSource cannot send one): a tenant's own jobs, or, for an admin, every tenant's
or the one chosen with ?tenant=. The page uses an event only as a cue to re-fetch its live part.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shared.errors import RateLimited, ServiceUnavailable

from ..event_hub import EventFilter
from ..events import HEADERS, event_stream, hub_of, last_event_id
from . import session as sessions
from .session import SignInRequired
from .views import viewed_tenant


async def events(request: Request) -> Response:
    try:
        session = sessions.current(request)
    except SignInRequired:
        return Response(status_code=401)
    # A bad ?tenant= is a problem+json answer; the page then keeps polling.
    tenant = viewed_tenant(request, session)
    hub = hub_of(request)
    # A browser's EventSource gives up for good on any answer but a 200 event stream, which would
    # leave the page without live updates until reloaded. Where the API answers 503 or 429, the
    # page gets an empty stream instead and reconnects after `retry` (and polls meanwhile): soon,
    # elsewhere, when this instance is stopping; later when the streams are all taken.
    if hub.closing:
        return _reconnect_after(2000)
    try:
        subscription = hub.subscribe(EventFilter(tenant_id=tenant), last_event_id(request, None))
    except (ServiceUnavailable, RateLimited):
        return _reconnect_after(15000)
    return event_stream(subscription)


def _reconnect_after(milliseconds: int) -> Response:
    return Response(f"retry: {milliseconds}\n\n".encode(), media_type="text/event-stream", headers=HEADERS)
