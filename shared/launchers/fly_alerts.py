"""The token alert: Fly answering 401 or 403 means nothing will launch until a human acts.

401 is "The API key used was missing or invalid" (Fly docs, status table); a 403 that is not a
quota answer means the token may not act on this app (e.g. a deploy token of another app). The
alert starts at the first such answer (logged, and a `plugin:error` telemetry event, which
/metrics counts), shows in /health while it lasts, and ends at the next answer that is not one,
so the rest of the dispatcher keeps working meanwhile and recovers on its own after a rotation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from shared.telemetry import emit
from shared.vocabulary import Event as EventName

logger = logging.getLogger(__name__)

AUTH_STATUSES = frozenset({401, 403})


def is_quota_answer(status: int, text: str) -> bool:
    """Fly's regional memory quota comes back as 403 "… over the allowed quota. please consider
    other regions" (observed in production, Kilo-Org/cloud#516): capacity, not authorisation."""
    return status == 403 and "quota" in text.lower()


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    status: int
    operation: str
    error: str
    since: float  # time.time()

    def view(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": self.status,
            "operation": self.operation,
            "error": self.error,
            "since": self.since,
            "message": "the Machines API rejects FLY_API_TOKEN: nothing can be launched until it is replaced",
        }


class AuthWatch:
    """Raises the token alert on 401/403 (not quota) and clears it on the next other answer."""

    def __init__(self) -> None:
        self.alert: Alert | None = None

    def observe(self, operation: str, status: int, text: str) -> None:
        if status in AUTH_STATUSES and not is_quota_answer(status, text):
            if self.alert is None:
                self.alert = Alert(kind="auth", status=status, operation=operation, error=text, since=time.time())
                emit(EventName.PLUGIN_ERROR, plugin="fly", alert="auth", status=status, operation=operation, error=text)
            return
        if self.alert is not None and status < 500 and status not in (408, 429):
            logger.info("fly api accepts the token again", extra={"status": status, "operation": operation})
            self.alert = None
