"""Configuration checked at start, every problem listed in one message.

Settings validate their own fields (types, ranges); this adds what depends on the role of the
process and on the functions it runs: a secret that is missing only shows per request or as
retries otherwise, long after a deploy looked fine.
"""

from __future__ import annotations

from typing import Literal

from shared.errors import ContentProcessorError
from shared.functions import Registry
from shared.settings import Settings

Role = Literal["api", "dispatcher", "machine"]


class ConfigurationError(ContentProcessorError):
    """The configuration cannot work; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("configuration problems:\n" + "\n".join(f"  - {problem}" for problem in problems))


def configuration_problems(
    settings: Settings, registry: Registry, *, role: Role, queue: str | None = None
) -> list[str]:
    """Every problem with `settings` for a process of `role` (a machine: running `queue`)."""
    problems = registry.configuration_problems(settings)
    if role == "api" and settings.jwt_secret is None:
        problems.append("JWT_SECRET is not set: the API could not verify any token")
    if role == "api" and settings.jwt_secret is not None and len(settings.jwt_secret.get_secret_value()) < 32:
        problems.append("JWT_SECRET is shorter than 32 characters (HS256 needs a 256-bit secret)")
    if role in ("api", "machine") and queue in (None, "webhooks") and settings.webhook_signing_secret is None:
        problems.append("WEBHOOK_SIGNING_SECRET is not set: webhooks and callbacks could not be signed")
    if (
        role in ("api", "dispatcher")
        and settings.scheduler_misfire_grace_seconds < settings.dispatcher_maintenance_seconds
    ):
        problems.append(
            "SCHEDULER_MISFIRE_GRACE_SECONDS is shorter than DISPATCHER_MAINTENANCE_SECONDS: schedules with misfire "
            "'skip' could miss occurrences that were on time"
        )
    if role == "machine" and queue is not None and queue not in registry:
        problems.append(f"JOB_QUEUE {queue!r} names no function (known: {', '.join(registry)})")
    return problems


def check_configuration(settings: Settings, registry: Registry, *, role: Role, queue: str | None = None) -> None:
    """Raise ConfigurationError listing every problem, if there is any."""
    problems = configuration_problems(settings, registry, role=role, queue=queue)
    if problems:
        raise ConfigurationError(problems)
