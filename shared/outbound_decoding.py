"""Placeholder (tests first)."""

from shared.errors import PermanentJobError


class UnsupportedContentEncoding(PermanentJobError):
    def __init__(self, coding: str) -> None:
        super().__init__(f"content coding {coding!r} is not accepted", kind="unsupported-content-encoding")
