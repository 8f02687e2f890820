"""Every exception the service raises on purpose, in one place.

* ContentProcessorError
  x ProblemError  (status, type slug, title -> application/problem+json)
    + BadRequest 400 · Unauthorized 401 · Forbidden 403 · NotFound 404 · Conflict 409
    + PayloadTooLarge 413 · UnsupportedMediaType 415 · ValidationFailed 422 (errors=[{path, message}])
    + RateLimited 429 · ServiceUnavailable 503
  x JobError
    + PermanentJobError (discard now, no retry; carries an error kind)
    + SnoozeJob (give the attempt back and run again later)
    + LostJobError (a fenced write matched no row: the job was cancelled or rescued meanwhile)
    + UniqueKeyHeld (a retry would take a unique key another live job holds)
  x LauncherError: LauncherUnavailable (retry later) · LauncherRejected (do not retry)

Endpoints raise ProblemError subclasses and never build error responses themselves; one
Starlette handler turns them into problem+json.
"""

from __future__ import annotations

from typing import Any


class ContentProcessorError(Exception):
    """Base class of every error raised on purpose by Content Processor."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())


class ProblemError(ContentProcessorError):
    """A request failed; rendered as application/problem+json."""

    status: int = 500
    type_slug: str = "internal-error"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://content-processor.dev/problems/{self.type_slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class BadRequest(ProblemError):
    status, type_slug, title = 400, "bad-request", "Bad request"


class Unauthorized(ProblemError):
    status, type_slug, title = 401, "unauthorized", "Unauthorized"


class Forbidden(ProblemError):
    status, type_slug, title = 403, "forbidden", "Forbidden"


class NotFound(ProblemError):
    status, type_slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ProblemError):
    status, type_slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(ProblemError):
    status, type_slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ProblemError):
    status, type_slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(ProblemError):
    status, type_slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationFailed(ProblemError):
    status, type_slug, title = 422, "validation-failed", "Validation failed"


class RateLimited(ProblemError):
    status, type_slug, title = 429, "rate-limited", "Too many requests"


class ServiceUnavailable(ProblemError):
    status, type_slug, title = 503, "service-unavailable", "Service unavailable"


class JobError(ContentProcessorError):
    """A job could not be run as asked."""


class PermanentJobError(JobError):
    """The job can never succeed; discard it without retrying."""

    def __init__(self, message: str, *, kind: str = "permanent") -> None:
        super().__init__(message)
        self.kind = kind


class RetryableJobError(JobError):
    """The attempt failed for a passing reason; retry, optionally not before `retry_after_seconds`."""

    def __init__(self, message: str, *, kind: str = "error", retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after_seconds = retry_after_seconds


class SnoozeJob(JobError):
    """Run this job again after `seconds`, giving the attempt back."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"snoozed for {seconds}s")
        self.seconds = seconds


class LostJobError(JobError):
    """A fenced write matched no row: this machine no longer holds the job."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} is no longer held by this machine")
        self.job_id = job_id


class UniqueKeyHeld(JobError):
    """A job could not enter a state its unique key covers: another live job holds the key."""

    def __init__(self, job_id: int, holder_id: int | None) -> None:
        super().__init__(f"job {job_id}: its unique key is held by job {holder_id or 'another job'}")
        self.job_id = job_id
        self.holder_id = holder_id


class LauncherError(ContentProcessorError):
    """The launcher could not do what was asked."""


class LauncherUnavailable(LauncherError):
    """The launcher backend failed for a passing reason; try again later."""


class LauncherRejected(LauncherError):
    """The launcher backend refused the request; retrying will not help."""


class LauncherUnauthorized(LauncherRejected):
    """The launcher backend rejects our credentials (401/403): nothing works until they change."""
