"""The words the whole service shares: job states, the transitions between them, event names.

The database holds the same states and transitions (CHECK jobs_state_valid and the trigger
jobs_check_transition in migrations/0001); tests/shared/test_vocabulary.py keeps them in step.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class JobState(StrEnum):
    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    EXECUTING = "executing"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"


FINAL_STATES: Final = frozenset({JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED})
# A unique key must cover all of these (River's rule): moves between them never meet another key.
IN_FLIGHT_STATES: Final = (JobState.SCHEDULED, JobState.AVAILABLE, JobState.EXECUTING, JobState.RETRYABLE)

# The arrows of the architecture spec.
ALLOWED: Final[frozenset[tuple[JobState, JobState]]] = frozenset(
    {
        (JobState.SCHEDULED, JobState.AVAILABLE),
        (JobState.RETRYABLE, JobState.AVAILABLE),
        (JobState.AVAILABLE, JobState.EXECUTING),
        (JobState.EXECUTING, JobState.COMPLETED),
        (JobState.EXECUTING, JobState.RETRYABLE),
        (JobState.EXECUTING, JobState.DISCARDED),
        (JobState.EXECUTING, JobState.CANCELLED),
        (JobState.EXECUTING, JobState.SCHEDULED),
        (JobState.EXECUTING, JobState.AVAILABLE),
        (JobState.SCHEDULED, JobState.CANCELLED),
        (JobState.AVAILABLE, JobState.CANCELLED),
        (JobState.RETRYABLE, JobState.CANCELLED),
        (JobState.DISCARDED, JobState.AVAILABLE),
        (JobState.CANCELLED, JobState.AVAILABLE),
        # A retried workflow step waits for its dependencies again (migrations/0008).
        (JobState.DISCARDED, JobState.SCHEDULED),
        (JobState.CANCELLED, JobState.SCHEDULED),
    }
)


class Event(StrEnum):
    """Telemetry event names: the old service's (Oban's), so dashboards and alerts carry over."""

    JOB_START = "job:start"
    JOB_COMPLETE = "job:complete"
    JOB_ERROR = "job:error"
    JOB_CANCEL = "job:cancel"
    JOB_SNOOZE = "job:snooze"
    JOB_RESCUE = "job:rescue"
    JOB_UNIQUE_CONFLICT = "job:unique_conflict"
    JOB_HANDBACK = "job:handback"  # ours: a stopping machine gave an unfinished attempt back
    QUEUE_START = "queue:start"
    QUEUE_STOP = "queue:stop"
    QUEUE_PAUSE = "queue:pause"
    QUEUE_RESUME = "queue:resume"
    PLUGIN_START = "plugin:start"
    PLUGIN_STOP = "plugin:stop"
    PLUGIN_ERROR = "plugin:error"


class JobEvent(StrEnum):
    """What happened to a job, as live event streams name it (GET /events, the dashboard).

    The database names them (the triggers of migrations/0006): a new state alone cannot tell a
    snooze from a schedule, or a rescue by the lifeline from a failed attempt.
    """

    INSERTED = "inserted"
    AVAILABLE = "available"  # a scheduled or retryable job came due
    EXECUTING = "executing"
    COMPLETED = "completed"
    RETRYABLE = "retryable"  # an attempt failed; another follows
    DISCARDED = "discarded"  # an attempt failed and no other follows
    CANCELLED = "cancelled"
    SNOOZED = "snoozed"
    RESCUED = "rescued"  # the lifeline took the job from a machine gone silent (now retryable or discarded)
    HANDED_BACK = "handed_back"  # a stopping machine gave the attempt back
    RETRIED = "retried"  # a discarded or cancelled job made available again by hand
    # A running job's reported progress changed (migrations/0010, at most once per heartbeat);
    # streams add the progress itself, read from the row.
    PROGRESS = "progress"


# Events that carry the error of the attempt that failed.
FAILURE_EVENTS: Final = frozenset({JobEvent.RETRYABLE, JobEvent.DISCARDED, JobEvent.RESCUED})
