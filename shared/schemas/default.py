"""`POST /jobs/default`: a named function registered on the default queue and its args."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .common import JobRequest


class DefaultRequest(JobRequest):
    """Run `function` (e.g. `echo`, `sleep`) with `args` on the default queue."""

    function: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    args: dict[str, Any] = Field(default_factory=dict)
