"""GET /dashboard/events: the signed-in user's job events, so open pages refresh when a job changes.

The same stream as GET /events, authenticated by the dashboard's cookie instead of a bearer token
(a browser's EventSource cannot send one): a tenant's own jobs, or, for an admin, every tenant's
or the one chosen with ?tenant=. The page uses an event only as a cue to re-fetch its live part.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

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
    # A bad ?tenant= or too many open streams is a problem+json answer; the page then keeps polling.
    tenant = viewed_tenant(request, session)
    hub = hub_of(request)
    if hub.closing:
        # This instance is stopping. A browser's EventSource gives up for good on any answer but
        # a 200 event stream, so it gets an empty one: it reconnects after `retry`, elsewhere.
        return Response(b"retry: 2000\n\n", media_type="text/event-stream", headers=HEADERS)
    subscription = hub.subscribe(EventFilter(tenant_id=tenant), last_event_id(request, None))
    return event_stream(subscription)
